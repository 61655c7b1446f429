//! Retention rules per workload: `[[retention.rules]]`.
//!
//! A rule matches df instances by `label` (a glob where `*` is the only wildcard) and/or
//! `submitted_by` (a role name) and overrides any of the retention keys for them. The first
//! matching rule in file order wins; instances matching none, and every orphan (no df row,
//! hence no label), fall under the top-level keys, reported as the rule [`DEFAULT_RULE`].
//!
//! Every statement finds an instance's rule with the same SQL expression ([`rule_of_d`]),
//! an index into per-rule parameter arrays bound once per pass: rules 1..=N in file order,
//! the top-level keys at N + 1. The label patterns and role OIDs are bound too, never
//! spliced into the statement text.

use std::fmt::{self, Write as _};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{ConfigError, RetentionConfig, SHORT_RETENTION_FLOOR};
use crate::policy::TerminalStatus;

/// The rule name of instances no rule matches (and of orphans): the top-level keys. It
/// cannot name a rule, so the metrics' `rule` label takes at most one value per rule in
/// the file plus this one.
pub const DEFAULT_RULE: &str = "default";

/// How long a rule keeps terminal instances of a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// This long after they became terminal.
    For(Duration),
    /// Never removed for their age (a cap may still remove them).
    Forever,
}

impl Keep {
    /// The window, None for forever.
    pub fn window(self) -> Option<Duration> {
        match self {
            Keep::For(d) => Some(d),
            Keep::Forever => None,
        }
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keep::For(d) => write!(f, "{}", humantime::format_duration(*d)),
            Keep::Forever => f.write_str("forever"),
        }
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "forever" {
            return Ok(Keep::Forever);
        }
        humantime::parse_duration(text.trim())
            .map(Keep::For)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is neither a duration nor \"forever\": {e}"
                ))
            })
    }
}

impl Serialize for Keep {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// One `[[retention.rules]]` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Unique; names the rule in reports, metrics (`rule` label) and audit rows.
    pub name: String,
    /// Glob over `df.instances.label`: `*` matches any run of characters, everything else
    /// itself (case-sensitive). An instance without a label never matches.
    #[serde(default)]
    pub label: Option<String>,
    /// Role name that started the instance (`df.instances.submitted_by`).
    #[serde(default)]
    pub submitted_by: Option<String>,
    /// Window for every terminal status of this rule's instances.
    #[serde(default)]
    pub window: Option<Keep>,
    /// Window for `completed`; None: the rule's `window`, else the top-level keys.
    #[serde(default)]
    pub completed: Option<Keep>,
    /// Window for `failed`; None: the rule's `window`, else the top-level keys.
    #[serde(default)]
    pub failed: Option<Keep>,
    /// Window for `cancelled`; None: the rule's `window`, else the top-level keys.
    #[serde(default)]
    pub cancelled: Option<Keep>,
    /// This rule's own cap: at most this many of its terminal instances are kept, newest
    /// first. Its instances then do not count toward `retention.hard_cap`. None: they share
    /// the global cap.
    #[serde(default, deserialize_with = "optional_integer")]
    pub hard_cap: Option<u64>,
    /// Generations of a looping instance kept (read by the generation pruning); None: the
    /// top-level value.
    #[serde(default, deserialize_with = "optional_integer")]
    pub keep_executions: Option<u32>,
    /// Age a generation must reach before it is pruned; None: the top-level value.
    #[serde(default, with = "humantime_serde")]
    pub execution_min_age: Option<Duration>,
}

impl RetentionRule {
    /// The window of `status` under this rule: its own key, else its `window`, else the
    /// top-level keys. None: forever.
    pub fn window_for(&self, status: TerminalStatus, top: &RetentionConfig) -> Option<Duration> {
        let specific = match status {
            TerminalStatus::Completed => self.completed,
            TerminalStatus::Failed => self.failed,
            TerminalStatus::Cancelled => self.cancelled,
        };
        match specific.or(self.window) {
            Some(keep) => keep.window(),
            None => Some(top.window_for(status)),
        }
    }

    /// What the rule matches, as the policy table shows it.
    pub fn describe_match(&self) -> String {
        match (&self.label, &self.submitted_by) {
            (Some(l), Some(r)) => format!("label {l:?} and submitted_by {r:?}"),
            (Some(l), None) => format!("label {l:?}"),
            (None, Some(r)) => format!("submitted_by {r:?}"),
            (None, None) => "nothing".to_owned(),
        }
    }
}

/// An integer or nothing, with [`crate::config`]'s strictness (no float, no negative).
fn optional_integer<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    crate::config::strict_integer(d).map(Some)
}

/// Characters a rule name may use: it becomes a metric label value and a column value.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks every rule (by position and name): the guards of [`crate::config::Config`]'s
/// validation, applied to each rule's keys.
pub(crate) fn validate(r: &RetentionConfig) -> Result<(), ConfigError> {
    let millennium = Duration::from_secs(1000 * 365 * 86_400);
    for (index, rule) in r.rules.iter().enumerate() {
        let invalid = |key: &'static str, value: String, reason: &str| ConfigError::InvalidRule {
            index,
            name: rule.name.clone(),
            key,
            value,
            reason: reason.into(),
        };
        if !valid_name(&rule.name) {
            return Err(invalid(
                "name",
                format!("{:?}", rule.name),
                "must be 1 to 63 characters of A-Z, a-z, 0-9, '_', '-', '.'",
            ));
        }
        if rule.name == DEFAULT_RULE {
            return Err(invalid(
                "name",
                format!("{:?}", rule.name),
                "is reserved for instances no rule matches",
            ));
        }
        if r.rules[..index].iter().any(|o| o.name == rule.name) {
            return Err(invalid(
                "name",
                format!("{:?}", rule.name),
                "is used by an earlier rule; names must be unique",
            ));
        }
        if rule.label.is_none() && rule.submitted_by.is_none() {
            return Err(invalid(
                "label",
                "<unset>".into(),
                "a rule must match on label and/or submitted_by",
            ));
        }
        if let Some(glob) = &rule.label {
            if let Some(reason) = bad_glob(glob) {
                return Err(invalid("label", format!("{glob:?}"), &reason));
            }
        }
        if let Some(role) = &rule.submitted_by {
            if role.is_empty() || role.len() > 63 {
                return Err(invalid(
                    "submitted_by",
                    format!("{role:?}"),
                    "must be a role name of 1 to 63 bytes",
                ));
            }
        }
        let windows = [
            ("window", rule.window.and_then(Keep::window)),
            ("completed", rule.completed.and_then(Keep::window)),
            ("failed", rule.failed.and_then(Keep::window)),
            ("cancelled", rule.cancelled.and_then(Keep::window)),
            ("execution_min_age", rule.execution_min_age),
        ];
        for (key, value) in windows {
            let Some(d) = value else { continue };
            if d < SHORT_RETENTION_FLOOR && !r.allow_short_retention {
                return Err(invalid(
                    key,
                    humantime::format_duration(d).to_string(),
                    "shorter than 1h; set retention.allow_short_retention = true if you mean it",
                ));
            }
            if d > millennium {
                return Err(invalid(
                    key,
                    humantime::format_duration(d).to_string(),
                    "is too long (write \"forever\" to keep them forever)",
                ));
            }
        }
        if rule.keep_executions == Some(0) {
            return Err(invalid("keep_executions", "0".into(), "must be at least 1"));
        }
    }
    Ok(())
}

/// Why `glob` is refused, if it is: empty, or using wildcards other than `*` (which
/// would silently match themselves).
fn bad_glob(glob: &str) -> Option<String> {
    if glob.is_empty() {
        return Some("is empty; write \"*\" to match every labelled instance".into());
    }
    if let Some(c) = glob.chars().find(|c| matches!(c, '?' | '[' | ']' | '\\')) {
        return Some(format!(
            "contains {c:?}: only '*' is a wildcard, and '?', '[', ']', '\\' are refused rather than matched literally"
        ));
    }
    if glob.chars().any(char::is_control) {
        return Some("contains a control character".into());
    }
    None
}

/// The `LIKE` pattern of a label glob: `*` becomes `%`, LIKE's own wildcards and escape
/// character match themselves.
pub fn like_pattern(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The SQL expression of the rule index of df row `d`: 1..=N for the first matching rule
/// in file order, N + 1 for none. `labels` and `roles` are the placeholders (e.g. `$8`) of
/// the statement's bound arrays ([`RuleSet::label_patterns`], and the role OIDs resolved
/// from [`RuleSet::role_names`]). Only positions are spliced into the text; a rule's
/// values are always bound. Without rules the expression is the constant `1`.
pub fn rule_of_d(rules: &[RetentionRule], labels: &str, roles: &str) -> String {
    if rules.is_empty() {
        return "1".to_owned();
    }
    let mut sql = String::from("(CASE");
    for (i, rule) in rules.iter().enumerate() {
        let n = i + 1;
        let mut conditions = Vec::new();
        if rule.label.is_some() {
            conditions.push(format!("d.label LIKE ({labels}::text[])[{n}]"));
        }
        if rule.submitted_by.is_some() {
            conditions.push(format!("d.submitted_by::oid = ({roles}::oid[])[{n}]"));
        }
        let _ = write!(sql, " WHEN {} THEN {n}", conditions.join(" AND "));
    }
    let _ = write!(sql, " ELSE {} END)", rules.len() + 1);
    sql
}

/// The rules of a configuration, in the order of the rule index: rules 1..=N, then the
/// top-level keys at N + 1. Every `Vec` it returns has N + 1 elements, for binding as an
/// array indexed by [`rule_of_d`].
#[derive(Debug, Clone, Copy)]
pub struct RuleSet<'a> {
    retention: &'a RetentionConfig,
}

impl<'a> RuleSet<'a> {
    /// The rules of `retention`.
    pub fn new(retention: &'a RetentionConfig) -> Self {
        Self { retention }
    }

    /// The configured rules, without the default.
    pub fn rules(&self) -> &'a [RetentionRule] {
        &self.retention.rules
    }

    /// N + 1: the rules and the default.
    pub fn len(&self) -> usize {
        self.retention.rules.len() + 1
    }

    /// Never empty: the default is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The name of the rule at 1-based `index` ([`DEFAULT_RULE`] for N + 1 and anything
    /// out of range).
    pub fn name(&self, index: i32) -> &'a str {
        usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.retention.rules.get(i))
            .map_or(DEFAULT_RULE, |r| r.name.as_str())
    }

    /// Every name, by index (the default last).
    pub fn names(&self) -> Vec<&'a str> {
        (1..=self.len() as i32).map(|i| self.name(i)).collect()
    }

    /// The SQL expression of the rule index of `d` (see [`rule_of_d`]).
    pub fn rule_of_d(&self, labels: &str, roles: &str) -> String {
        rule_of_d(&self.retention.rules, labels, roles)
    }

    /// LIKE patterns by index; None where a rule has no label (and for the default).
    pub fn label_patterns(&self) -> Vec<Option<String>> {
        let mut v: Vec<Option<String>> = self
            .rules()
            .iter()
            .map(|r| r.label.as_deref().map(like_pattern))
            .collect();
        v.push(None);
        v
    }

    /// Role names by index; None where a rule has no role (and for the default).
    pub fn role_names(&self) -> Vec<Option<String>> {
        let mut v: Vec<Option<String>> = self
            .rules()
            .iter()
            .map(|r| r.submitted_by.clone())
            .collect();
        v.push(None);
        v
    }

    /// The window of `status` by index; None: forever.
    pub fn windows(&self, status: TerminalStatus) -> Vec<Option<Duration>> {
        let mut v: Vec<Option<Duration>> = self
            .rules()
            .iter()
            .map(|r| r.window_for(status, self.retention))
            .collect();
        v.push(Some(self.retention.window_for(status)));
        v
    }

    /// The cap groups: each rule with its own `hard_cap` alone, then the global cap over
    /// the default and every rule without one. (cap, indexes).
    pub fn cap_groups(&self) -> Vec<(u64, Vec<i32>)> {
        let mut global = Vec::new();
        let mut groups = Vec::new();
        for (i, rule) in self.rules().iter().enumerate() {
            let index = i as i32 + 1;
            match rule.hard_cap {
                Some(cap) => groups.push((cap, vec![index])),
                None => global.push(index),
            }
        }
        global.push(self.len() as i32);
        groups.push((self.retention.hard_cap, global));
        groups
    }

    /// `keep_executions` by index, each rule's override else `top_level` (the top-level
    /// key, owned by the generation pruning), for binding as `integer[]`.
    pub fn keep_executions(&self, top_level: u32) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .rules()
            .iter()
            .map(|r| r.keep_executions.unwrap_or(top_level))
            .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
            .collect();
        v.push(i32::try_from(top_level).unwrap_or(i32::MAX));
        v
    }

    /// `execution_min_age` by index, each rule's override else `top_level`.
    pub fn execution_min_ages(&self, top_level: Duration) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .rules()
            .iter()
            .map(|r| r.execution_min_age.unwrap_or(top_level))
            .collect();
        v.push(top_level);
        v
    }

    /// What `check` warns about: a rule keeping a status forever without its own cap.
    pub fn warnings(&self) -> Vec<String> {
        self.rules()
            .iter()
            .filter(|r| r.hard_cap.is_none())
            .filter_map(|r| {
                let forever: Vec<&str> = TerminalStatus::ALL
                    .into_iter()
                    .filter(|s| r.window_for(*s, self.retention).is_none())
                    .map(TerminalStatus::as_str)
                    .collect();
                (!forever.is_empty()).then(|| {
                    format!(
                        "retention.rules {:?} keeps {} instances forever and has no hard_cap of its own: they are unbounded by age, only the shared retention.hard_cap ({}) limits them",
                        r.name,
                        forever.join("/"),
                        self.retention.hard_cap
                    )
                })
            })
            .collect()
    }

    /// The effective policy as a table, one line per rule then the default: what
    /// `check --offline` prints.
    pub fn table(&self) -> String {
        let show = |d: Option<Duration>| d.map_or("forever".to_owned(), short_duration);
        let mut rows: Vec<[String; 8]> = vec![[
            "rule".into(),
            "match".into(),
            "completed".into(),
            "failed".into(),
            "cancelled".into(),
            "hard_cap".into(),
            "keep_executions".into(),
            "execution_min_age".into(),
        ]];
        let windows: Vec<Vec<Option<Duration>>> =
            TerminalStatus::ALL.map(|s| self.windows(s)).to_vec();
        for (i, rule) in self.rules().iter().enumerate() {
            rows.push([
                rule.name.clone(),
                rule.describe_match(),
                show(windows[0][i]),
                show(windows[1][i]),
                show(windows[2][i]),
                rule.hard_cap
                    .map_or("global".to_owned(), |c| format!("{c} (own)")),
                rule.keep_executions
                    .map_or("top-level".to_owned(), |n| n.to_string()),
                rule.execution_min_age
                    .map_or("top-level".to_owned(), short_duration),
            ]);
        }
        let n = self.rules().len();
        rows.push([
            DEFAULT_RULE.into(),
            "no rule matched; orphans".into(),
            show(windows[0][n]),
            show(windows[1][n]),
            show(windows[2][n]),
            format!("{} (global)", self.retention.hard_cap),
            "top-level".into(),
            "top-level".into(),
        ]);
        let widths: Vec<usize> = (0..8)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
        out
    }
}

/// `d` in the largest whole unit that divides it (`365d`, `36h`), as an operator writes it.
pub(crate) fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return humantime::format_duration(d).to_string();
    }
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m")] {
        if secs.is_multiple_of(unit) {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, label: Option<&str>, role: Option<&str>) -> RetentionRule {
        RetentionRule {
            name: name.into(),
            label: label.map(Into::into),
            submitted_by: role.map(Into::into),
            ..RetentionRule::default()
        }
    }

    #[test]
    fn globs_become_like_patterns_matching_like_wildcards_literally() {
        assert_eq!(like_pattern("billing-*"), "billing-%");
        assert_eq!(like_pattern("*_50%*"), "%\\_50\\%%");
        assert_eq!(like_pattern("plain"), "plain");
    }

    #[test]
    fn the_rule_expression_carries_positions_only() {
        let rules = [
            rule("a", Some("x'; DROP TABLE df.instances; --"), None),
            rule("b", None, Some("robert")),
            rule("c", Some("*"), Some("alice")),
        ];
        let sql = rule_of_d(&rules, "$8", "$9");
        assert_eq!(
            sql,
            "(CASE WHEN d.label LIKE ($8::text[])[1] THEN 1 \
             WHEN d.submitted_by::oid = ($9::oid[])[2] THEN 2 \
             WHEN d.label LIKE ($8::text[])[3] AND d.submitted_by::oid = ($9::oid[])[3] THEN 3 \
             ELSE 4 END)"
        );
        assert_eq!(rule_of_d(&[], "$8", "$9"), "1");
    }

    #[test]
    fn windows_fall_back_from_status_to_rule_window_to_top_level() {
        let top = RetentionConfig {
            failed: Some(Duration::from_secs(90 * 86_400)),
            rules: vec![RetentionRule {
                window: Some(Keep::For(Duration::from_secs(86_400))),
                cancelled: Some(Keep::Forever),
                ..rule("hc", Some("health-*"), None)
            }],
            ..RetentionConfig::default()
        };
        let set = RuleSet::new(&top);
        let day = Some(Duration::from_secs(86_400));
        assert_eq!(set.windows(TerminalStatus::Failed), [day, top.failed]);
        assert_eq!(
            set.windows(TerminalStatus::Cancelled),
            [None, Some(top.window)]
        );
        let bare = RetentionConfig {
            rules: vec![rule("b", Some("b"), None)],
            ..top.clone()
        };
        assert_eq!(
            RuleSet::new(&bare).windows(TerminalStatus::Failed),
            [top.failed, top.failed],
            "a rule without windows keeps the top-level ones"
        );
    }

    #[test]
    fn capped_rules_leave_the_global_cap() {
        let top = RetentionConfig {
            hard_cap: 100,
            rules: vec![
                RetentionRule {
                    hard_cap: Some(5),
                    ..rule("own", Some("a"), None)
                },
                rule("shared", Some("b"), None),
            ],
            ..RetentionConfig::default()
        };
        assert_eq!(
            RuleSet::new(&top).cap_groups(),
            [(5, vec![1]), (100, vec![2, 3])]
        );
        assert_eq!(RuleSet::new(&top).names(), ["own", "shared", "default"]);
        assert_eq!(RuleSet::new(&top).name(0), DEFAULT_RULE);
    }

    #[test]
    fn forever_without_a_cap_warns() {
        let top = RetentionConfig {
            rules: vec![
                RetentionRule {
                    failed: Some(Keep::Forever),
                    ..rule("keep", Some("billing-*"), None)
                },
                RetentionRule {
                    window: Some(Keep::Forever),
                    hard_cap: Some(10),
                    ..rule("capped", Some("audit-*"), None)
                },
            ],
            ..RetentionConfig::default()
        };
        let warnings = RuleSet::new(&top).warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("\"keep\" keeps failed instances forever"));
    }

    #[test]
    fn per_rule_parameters_end_with_the_top_level() {
        let top = RetentionConfig {
            rules: vec![
                RetentionRule {
                    keep_executions: Some(3),
                    execution_min_age: Some(Duration::from_secs(7200)),
                    ..rule("a", Some("a*"), None)
                },
                rule("b", None, Some("r")),
            ],
            ..RetentionConfig::default()
        };
        let set = RuleSet::new(&top);
        assert_eq!(set.keep_executions(10), [3, 10, 10]);
        let hour = Duration::from_secs(3600);
        assert_eq!(set.execution_min_ages(hour), [hour * 2, hour, hour]);
        assert_eq!(set.label_patterns(), [Some("a%".to_owned()), None, None]);
        assert_eq!(set.role_names(), [None, Some("r".to_owned()), None]);
    }
}
