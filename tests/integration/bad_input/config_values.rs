//! Every configuration key with a wrong type or value, in the file and in the environment
//! (a key without cases fails the test), scalar types that must not be coerced into each
//! other, and durations that pass the type check but that the daemon cannot use.

use std::collections::BTreeSet;

use df_reconciler_core::error::exit_code::{OK, USAGE};

use super::{all_keys, env_name, reconciler, run, run_all, secret_dsn, snapshot, SECRET};
use crate::support::db::count;
use crate::support::harness::TestDb;
use crate::support::process::toml_file;
use crate::support::seed::{seed_deletable, workflow, DAY};

/// Per key: wrong values as (TOML literal, the same through the environment when a string
/// can express it), and one good TOML value.
type KeyCases = (
    &'static str,
    &'static [(&'static str, Option<&'static str>)],
    &'static str,
);

const LONG_NAME: &str = "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"";

const KEYS: &[KeyCases] = &[
    // A malformed DSN or an unreadable url_file / ca_file is only found when the
    // connection is set up: see the tests below, which run `once` and `check`.
    (
        "database.url",
        &[("[1]", None), ("{ host = \"h\" }", None)],
        "\"postgres://u@h/db\"",
    ),
    (
        "database.url_file",
        &[("[1]", None), ("{ a = 1 }", None)],
        "\"/run/secrets/dsn\"",
    ),
    (
        "database.pool_size",
        &[
            ("\"many\"", Some("many")),
            ("0", Some("0")),
            ("-1", Some("-1")),
            ("-1.0", None),
        ],
        "3",
    ),
    (
        "database.connect_timeout",
        &[
            ("30", Some("30")),
            ("\"soon\"", Some("soon")),
            ("\"\"", Some("")),
            ("true", Some("true")),
        ],
        "\"5s\"",
    ),
    (
        "database.application_name",
        &[("[1]", None), ("{ a = 1 }", None)],
        "\"reconciler-a\"",
    ),
    (
        "database.pooler",
        &[("\"session\"", Some("session")), ("true", Some("true"))],
        "\"transaction\"",
    ),
    (
        "tls.ca_file",
        &[("[1]", None), ("{ a = 1 }", None)],
        "\"/etc/ssl/ca.pem\"",
    ),
    (
        "schemas.control",
        &[("\"\"", Some("")), (LONG_NAME, None), ("[1]", None)],
        "\"ctl\"",
    ),
    (
        "schemas.engine",
        &[("\"\"", Some("")), (LONG_NAME, None), ("{ a = 1 }", None)],
        "\"eng\"",
    ),
    (
        "retention.window",
        &[
            ("\"30m\"", Some("30m")),
            ("\"30 parsecs\"", Some("30 parsecs")),
            ("30", Some("30")),
            ("\"\"", Some("")),
        ],
        "\"7d\"",
    ),
    (
        "retention.completed",
        &[
            ("\"10s\"", Some("10s")),
            ("\"never\"", Some("never")),
            ("[1]", None),
        ],
        "\"7d\"",
    ),
    (
        "retention.failed",
        &[
            ("\"59m\"", Some("59m")),
            ("\"-1d\"", Some("-1d")),
            ("1", Some("1")),
        ],
        "\"90d\"",
    ),
    (
        "retention.cancelled",
        &[
            ("\"0s\"", Some("0s")),
            ("\"1 fortnight\"", Some("1 fortnight")),
        ],
        "\"1d\"",
    ),
    (
        "retention.hard_cap",
        &[
            ("\"many\"", Some("many")),
            ("-1", Some("-1")),
            ("[1]", None),
        ],
        "0",
    ),
    (
        "retention.orphan_min_age",
        &[("\"5m\"", Some("5m")), ("\"x\"", Some("x"))],
        "\"2h\"",
    ),
    (
        "retention.prune_executions",
        &[("\"maybe\"", Some("maybe")), ("[true]", None)],
        "false",
    ),
    (
        "retention.keep_executions",
        &[
            ("0", Some("0")),
            ("-1", Some("-1")),
            ("4294967296", Some("4294967296")),
            ("\"x\"", Some("x")),
        ],
        "5",
    ),
    (
        "retention.execution_min_age",
        &[("\"5m\"", Some("5m")), ("\"x\"", Some("x"))],
        "\"2h\"",
    ),
    (
        "retention.allow_short_retention",
        &[
            ("\"maybe\"", Some("maybe")),
            ("[true]", None),
            ("\"\"", None),
        ],
        "true",
    ),
    (
        "pass.interval",
        &[("\"often\"", Some("often")), ("10", Some("10"))],
        "\"10m\"",
    ),
    (
        "pass.batch_size",
        &[
            ("0", Some("0")),
            ("-3", Some("-3")),
            ("4294967296", Some("4294967296")),
            ("\"x\"", Some("x")),
        ],
        "10",
    ),
    (
        "pass.statement_timeout",
        &[("\"0s\"", Some("0s")), ("\"x\"", Some("x"))],
        "\"5s\"",
    ),
    (
        "pass.lock_timeout",
        &[("\"0s\"", Some("0s")), ("\"x\"", Some("x"))],
        "\"1s\"",
    ),
    (
        "pass.max_duration",
        &[("\"x\"", Some("x")), ("\"\"", Some(""))],
        "\"10m\"",
    ),
    (
        "pass.jitter",
        &[("\"-1s\"", Some("-1s")), ("\"x\"", Some("x"))],
        "\"0s\"",
    ),
    (
        "pass.busy_duty_percent",
        &[("0", Some("0")), ("101", Some("101")), ("0.5", Some("0.5"))],
        "100",
    ),
    (
        "pass.drift_interval",
        &[("\"-1s\"", Some("-1s")), ("\"soon\"", Some("soon"))],
        "\"0s\"",
    ),
    (
        "pass.retry_backoff_max",
        &[("\"x\"", Some("x")), ("5", Some("5"))],
        "\"1m\"",
    ),
    (
        "pass.leader_election",
        &[("\"maybe\"", Some("maybe")), ("[1]", None)],
        "false",
    ),
    (
        "http.listen",
        &[
            ("\"nowhere\"", Some("nowhere")),
            ("\"127.0.0.1:99999\"", Some("127.0.0.1:99999")),
            ("[1]", None),
        ],
        "\"127.0.0.1:0\"",
    ),
    (
        "http.ready_max_failing",
        &[("true", Some("true")), ("\"x\"", Some("x"))],
        "\"1m\"",
    ),
    (
        "log.format",
        &[("\"xml\"", Some("xml")), ("5", Some("5"))],
        "\"json\"",
    ),
    (
        "audit.schema",
        &[("\"\"", Some("")), (LONG_NAME, None)],
        "\"audit_a\"",
    ),
    (
        "audit.auto_migrate",
        &[("\"maybe\"", Some("maybe")), ("{ a = 1 }", None)],
        "true",
    ),
    (
        "retention.rules",
        &[
            ("\"billing\"", None),
            ("[1]", None),
            ("[{ name = \"a\" }]", None),
            ("[{ name = \"a\", label = \"\" }]", None),
        ],
        "[{ name = \"billing\", label = \"billing-*\", failed = \"forever\" }]",
    ),
    (
        "audit.record_deletions",
        &[("\"maybe\"", Some("maybe"))],
        "true",
    ),
    (
        "audit.retention",
        &[("\"1 fortnight\"", Some("1 fortnight")), ("[1]", None)],
        "\"7d\"",
    ),
];

/// A TOML file setting `key` (`section.key`) to `literal`, next to a DSN with a password.
fn toml_setting(key: &str, literal: &str) -> String {
    let (section, name) = key.split_once('.').unwrap();
    let dsn = format!("url = \"postgres://u:{SECRET}@h/db\"\n");
    match (section, name) {
        ("database", "url") => format!("[database]\nurl = {literal}\n"),
        ("database", _) => format!("[database]\n{dsn}{name} = {literal}\n"),
        _ => format!("[database]\n{dsn}[{section}]\n{name} = {literal}\n"),
    }
}

#[tokio::test]
async fn every_key_with_a_wrong_type_or_value_is_named_in_file_and_environment() {
    let covered: BTreeSet<String> = KEYS.iter().map(|(k, _, _)| k.to_string()).collect();
    assert_eq!(
        covered,
        all_keys(),
        "every configuration key has bad-input cases"
    );

    let mut files = Vec::new();
    let mut cases = Vec::new();
    let mut named = Vec::new();
    for (key, bad, _) in KEYS {
        for (literal, env) in *bad {
            let file = toml_file(&toml_setting(key, literal));
            let mut cmd = reconciler(&["check", "--offline", "--config"]);
            cmd.arg(file.path());
            if *key == "http.listen" {
                cmd.env_remove("DF_RECONCILER__HTTP__LISTEN"); // it would win over the file
            }
            cases.push((format!("file: {key} = {literal}"), cmd));
            named.push(*key);
            files.push(file);
            if let Some(value) = env {
                let mut cmd = reconciler(&["check", "--offline"]);
                cmd.env(env_name(key), value).env(
                    "DF_RECONCILER__DATABASE__URL",
                    format!("postgres://u:{SECRET}@h/db"),
                );
                cases.push((format!("env: {}={value:?}", env_name(key)), cmd));
                named.push(*key);
            }
        }
    }
    let n = cases.len();
    let runs = run_all(cases).await;
    let problems: Vec<String> = runs
        .iter()
        .zip(&named)
        .filter_map(|(r, key)| r.usage_problem(key).map(|p| format!("{}: {p}", r.what)))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(n > 100, "{n} cases");

    // The good values, all in one file, pass: the key names above are real.
    let mut sections: std::collections::BTreeMap<&str, String> = Default::default();
    for (key, _, good) in KEYS {
        let (section, name) = key.split_once('.').unwrap();
        if *key == "database.url_file" {
            continue; // url and url_file are exclusive; checked online
        }
        sections
            .entry(section)
            .or_default()
            .push_str(&format!("{name} = {good}\n"));
    }
    let text: String = sections
        .iter()
        .map(|(section, body)| format!("[{section}]\n{body}"))
        .collect();
    let file = toml_file(&text);
    let mut cmd = reconciler(&["check", "--offline", "--config"]);
    cmd.arg(file.path())
        .env_remove("DF_RECONCILER__HTTP__LISTEN");
    run("every good value", cmd)
        .await
        .expect(OK)
        .mentions("configuration OK");
}

/// config-rs converts between scalar types on its own: a float is rounded into an
/// integer key (a negative one saturates to 0) and any non-zero number is `true` for a
/// boolean key. `retention.hard_cap = -1.0` ("no cap"?) becomes 0, "keep no terminal
/// instance": the next pass deletes every settled terminal instance, young ones too.
#[tokio::test]
async fn numbers_and_booleans_are_not_coerced_across_types() {
    let mut cases = Vec::new();
    let mut files = Vec::new();
    for (key, literal) in [
        ("retention.hard_cap", "-1.0"),
        ("retention.hard_cap", "0.4"),
        ("pass.batch_size", "2.5"),
        ("database.pool_size", "1.5"),
        ("retention.allow_short_retention", "2"),
        ("pass.leader_election", "0"),
        ("audit.record_deletions", "1.0"),
    ] {
        let file = toml_file(&toml_setting(key, literal));
        let mut cmd = reconciler(&["check", "--offline", "--config"]);
        cmd.arg(file.path());
        files.push(file);
        cases.push((format!("{key} = {literal}"), cmd));
    }
    let runs = run_all(cases).await;
    let problems: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let key = r.what.split(' ').next().unwrap();
            r.usage_problem(key).map(|p| format!("{}: {p}", r.what))
        })
        .collect();

    // What it costs: young terminal instances deleted by a "negative" cap.
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "71000001",
        "completed",
        Some("Completed"),
        DAY,
        Some(DAY),
        0,
    )
    .await;
    let mut once = reconciler(&["once", "--json"]);
    once.env("DF_RECONCILER__DATABASE__URL", &db.dsn)
        .env("DF_RECONCILER__RETENTION__HARD_CAP", "-1.0");
    let r = run("once with hard_cap -1.0", once).await;
    let survived = count(&c, "SELECT count(*) FROM df.instances").await;
    assert!(
        problems.is_empty() && r.code == Some(USAGE) && survived == 1,
        "{}\nonce with HARD_CAP=-1.0: exit {:?}, young instances left: {survived}",
        problems.join("\n"),
        r.code
    );
}

/// Durations the daemon cannot use pass `check --offline` today and fail later, on every
/// pass: a timeout PostgreSQL or the kernel rejects (> 2^31-1 ms), a window reaching
/// before 4713 BC, an interval that overflows `Instant`. Each should be a configuration
/// error naming its key.
#[tokio::test]
async fn durations_the_daemon_cannot_use_are_configuration_errors() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&db).await;
    let before = snapshot(&c).await;
    let mut cases = Vec::new();
    let mut keys = Vec::new();
    for (key, value, command) in [
        ("pass.statement_timeout", "25d", "once"), // tcp_user_timeout: EINVAL at connect
        ("pass.lock_timeout", "25d", "once"),      // SET LOCAL lock_timeout rejected
        ("retention.window", "10000y", "once"),    // cutoff before 4713 BC
        ("retention.orphan_min_age", "10000y", "once"),
        ("retention.execution_min_age", "10000y", "once"),
        ("pass.max_duration", "500000000000y", "once"), // Instant overflow: panic
        ("pass.interval", "500000000000y", "run"),      // Instant overflow: panic
    ] {
        let mut cmd = reconciler(&[command]);
        cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db))
            .env("DF_RECONCILER__PASS__JITTER", "0s")
            .env(env_name(key), value);
        cases.push((format!("{command} with {key} = {value}"), cmd));
        keys.push(key);
        let mut cmd = reconciler(&["check", "--offline"]);
        cmd.env(env_name(key), value);
        cases.push((format!("check --offline with {key} = {value}"), cmd));
        keys.push(key);
    }
    let problems: Vec<String> = run_all(cases)
        .await
        .iter()
        .zip(keys)
        .filter_map(|(r, key)| r.usage_problem(key).map(|p| format!("{}: {p}", r.what)))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(snapshot(&c).await, before, "nothing deleted");
}

/// Every key of a `[[retention.rules]]` entry, refused by name with the rule's position
/// and name: nothing is attempted (exit 2).
#[tokio::test]
async fn every_rule_key_with_a_wrong_value_is_named() {
    let rule = |body: &str| format!("[[retention.rules]]\nname = \"billing\"\n{body}\n");
    let cases: Vec<(String, &str)> = vec![
        ("[[retention.rules]]\nlabel = \"a\"\n".into(), "name"),
        (
            rule("label = \"a\"\n[[retention.rules]]\nname = \"billing\"\nlabel = \"b\""),
            "names must be unique",
        ),
        (rule(""), "label and/or submitted_by"),
        (rule("label = \"billing-?\""), "label = \"billing-?\""),
        (rule("label = \"\""), "label = \"\""),
        (rule("submitted_by = \"\""), "submitted_by"),
        (rule("label = \"a\"\nlabl = \"b\""), "labl"),
        (rule("label = \"a\"\nfailed = \"10m\""), "failed = 10m"),
        (rule("label = \"a\"\nwindow = \"never\""), "window"),
        (rule("label = \"a\"\nhard_cap = -1"), "hard_cap"),
        (rule("label = \"a\"\nhard_cap = 1.5"), "hard_cap"),
        (
            rule("label = \"a\"\nkeep_executions = 0"),
            "keep_executions",
        ),
        (
            rule("label = \"a\"\nexecution_min_age = \"5m\""),
            "execution_min_age",
        ),
        (
            "[[retention.rules]]\nname = \"default\"\nlabel = \"a\"\n".into(),
            "reserved",
        ),
        (
            "[[retention.rules]]\nname = \"a b\"\nlabel = \"a\"\n".into(),
            "name = \"a b\"",
        ),
    ];
    let mut files = Vec::new();
    for (toml, expected) in cases {
        let file = toml_file(&toml);
        let mut cmd = reconciler(&["check", "--offline", "--config"]);
        cmd.arg(file.path());
        files.push(file);
        run(&toml, cmd)
            .await
            .expect(USAGE)
            .mentions("retention.rules")
            .mentions(expected);
    }
}

/// `check --offline` prints the effective policy, a line per rule then the default, and
/// warns of a rule keeping a status forever without a cap of its own.
#[tokio::test]
async fn check_offline_prints_the_effective_policy_and_warns_of_unbounded_rules() {
    let file = toml_file(
        "[retention]\nfailed = \"90d\"\nhard_cap = 5000\n\
         [[retention.rules]]\nname = \"billing\"\nlabel = \"billing-*\"\nfailed = \"forever\"\n\
         [[retention.rules]]\nname = \"health\"\nlabel = \"health-*\"\nwindow = \"1d\"\nhard_cap = 500\nkeep_executions = 2\n",
    );
    let mut cmd = reconciler(&["check", "--offline", "--config"]);
    cmd.arg(file.path());
    let out = run("policy table", cmd).await;
    out.expect(OK);
    let line = |start: &str| {
        out.stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line for {start:?} in\n{}", out.stdout))
    };
    assert_eq!(
        line("billing"),
        "billing label \"billing-*\" 30d forever 30d global top-level top-level"
    );
    assert_eq!(
        line("health"),
        "health label \"health-*\" 1d 1d 1d 500 (own) 2 top-level"
    );
    assert_eq!(
        line("default"),
        "default no rule matched; orphans 30d 90d 30d 5000 (global) top-level top-level"
    );
    out.mentions("warning: retention.rules \"billing\" keeps failed instances forever");
    assert!(!out.stdout.contains("\"health\" keeps"), "{}", out.stdout);
}
