//! `df-reconciler explain <instance-id>`: why one df instance or engine root is still
//! here, and whether the next pass removes it. Read-only.
//!
//! It cannot disagree with a pass: it reads the pass's clock ([`PassClock::read`]: the
//! same cutoffs and cap edges per rule), selects the one row with the pass's own
//! predicates ([`reconcile::EXPLAIN_EXPIRED`] and [`reconcile::EXPLAIN_ORPHAN`] are built
//! from the same SQL fragments as the candidate walks), classifies it with the same
//! function, and reads its engine tree with the dry run's tree statement through the same
//! code ([`lock_trees`]). What it cannot see read-only: a row lock another session holds
//! right now (a pass skips such a row, `skipped_locked`, and retries it next pass).

use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use serde::Serialize;
use tokio_postgres::types::Timestamp;
use tokio_postgres::Row;

use super::batch::set_local_limits;
use super::clock::PassClock;
use super::expired::{classify, Verdict as Selection};
use super::statements::{render, Statements};
use super::tally::BatchTally;
use super::trees::{lock_trees, RootRule};
use crate::config::Config;
use crate::db::{self, Exec};
use crate::error::{DbContext, Error};
use crate::policy::{is_engine_root, EngineStatus, TerminalStatus};
use crate::preflight::{self, Intent};
use crate::report::OrphanHold;
use crate::rules::{RuleSet, DEFAULT_RULE};
use crate::sql::{engine, reconcile};

/// Everything `explain` says of one instance; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Explanation {
    /// The id asked about.
    pub instance_id: String,
    /// The database clock when it looked (the pass's `now()`), RFC 3339.
    pub checked_at: String,
    /// The df row, if any.
    pub df_row: Option<DfRow>,
    /// Every member of the engine tree rooted at this id (itself first), if any.
    pub engine_tree: Vec<Member>,
    /// The retention rule that applies (`default`: the top-level keys; always for an
    /// orphan or engine child, which have no df row).
    pub rule: String,
    /// The window of the instance's status under that rule (`forever`), for df rows.
    pub window: Option<String>,
    /// When it became terminal, RFC 3339, if known.
    pub terminal_at: Option<String>,
    /// Where terminal_at came from: `df.completed_at`, `engine completed_at`,
    /// `df.created_at` (df rows), or `engine completed_at or updated_at` (orphans).
    pub terminal_at_source: Option<&'static str>,
    /// When its window ends (terminal_at + window; for an orphan, + the orphan age), RFC
    /// 3339; None: never, or unknown.
    pub expires_at: Option<String>,
    /// Its place under its hard cap, for a terminal df row.
    pub cap: Option<CapRank>,
    /// Live leases on members of its tree (or on its queue items).
    pub leases: Vec<Lease>,
    /// What the open-transaction guard can see, for an engine root without a df row: why
    /// no orphan is reclaimed this pass, if that is the case.
    pub orphans_held: Vec<OrphanHold>,
    /// Removed by the next pass, or kept and why.
    pub verdict: Verdict,
}

/// The df row as `explain` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DfRow {
    /// `pending`, `running`, `completed`, `failed`, `cancelled`.
    pub status: String,
    /// The label rules match on.
    pub label: Option<String>,
    /// The role that started it.
    pub submitted_by: String,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// RFC 3339; user-writable, never used for the age.
    pub updated_at: Option<String>,
}

/// One engine instance of the tree.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Member {
    /// Its engine instance id.
    pub instance_id: String,
    /// Its parent's id; None for the root.
    pub parent_instance_id: Option<String>,
    /// RFC 3339.
    pub created_at: Option<String>,
    /// Its current execution (generation).
    pub current_execution_id: Option<i64>,
    /// Its current execution's status (`Running`, `ContinuedAsNew`, `Completed`, `Failed`).
    pub status: Option<String>,
    /// Its current execution's completed_at, RFC 3339.
    pub completed_at: Option<String>,
    /// Executions (generations) it has.
    pub executions: i64,
    /// Earlier generations that ended (neither current nor Running).
    pub ended_generations: i64,
    /// How many of those the next pass's generation pruning removes (the phase's own
    /// predicate, with this instance's rule); None when `retention.prune_executions` is
    /// off. A lease on the instance when the pass comes puts them off to a later pass.
    pub prunable_generations: Option<i64>,
}

/// A row's rank among the terminal rows of its cap group, newest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CapRank {
    /// The cap: the rule's own, else `retention.hard_cap`.
    pub hard_cap: u64,
    /// Whether it is the rule's own cap.
    pub own: bool,
    /// 1 = the newest terminal row of the group.
    pub rank: i64,
    /// Over the cap (rank > hard_cap): removed however young, once settled.
    pub over: bool,
}

/// A live lease on a member.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Lease {
    /// `instance_locks`, `orchestrator_queue` or `worker_queue`.
    pub table: String,
    /// The leased instance.
    pub instance_id: String,
    /// Milliseconds the lease has left.
    pub ms_left: i64,
}

/// The verdict: what the next pass does with the instance.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// True: the next pass removes it (a dry run counts it).
    pub removed: bool,
    /// Removed: `expired`, `capped`, `orphan`, `child` (with its root's tree). Kept: `live`, `live_engine_ended`, `young`,
    /// `unknown_age`, `unsettled`, `descendant_running`, `inconsistent`, `leased`,
    /// `locked`, `child`, `orphan_live`, `orphan_young`, `orphan_open_transaction`,
    /// `orphans_held`.
    pub reason: &'static str,
    /// One sentence for a person.
    pub detail: String,
}

impl Verdict {
    fn removed(reason: &'static str, detail: String) -> Self {
        Self {
            removed: true,
            reason,
            detail,
        }
    }
    fn kept(reason: &'static str, detail: String) -> Self {
        Self {
            removed: false,
            reason,
            detail,
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn timestamp(t: Option<Timestamp<SystemTime>>) -> Option<String> {
    match t? {
        Timestamp::Value(t) => Some(rfc3339(t)),
        Timestamp::NegInfinity => Some("-infinity".into()),
        Timestamp::PosInfinity => Some("infinity".into()),
    }
}

fn plus(t: Option<Timestamp<SystemTime>>, d: Option<Duration>) -> Option<String> {
    match (t?, d?) {
        (Timestamp::Value(t), d) => t.checked_add(d).map(rfc3339),
        _ => None,
    }
}

/// Explains `instance_id`; None when it exists in neither store.
pub async fn explain(
    pool: &Pool,
    cfg: &Config,
    instance_id: &str,
) -> Result<Option<Explanation>, Error> {
    let target = db::describe_target(&db::pg_config(&cfg.database)?);
    let mut client = db::connect(pool, &target).await?;
    let verified = preflight::verify(&**client, cfg, Intent::DryRun).await?;
    let rules = RuleSet::new(&cfg.retention);
    let st = Statements::prepare(
        &client,
        &verified.schemas,
        &rules,
        true,
        cfg.database.pooler.statement_mode(),
    )
    .await?;
    let clock = PassClock::read(&mut client, cfg, &st).await?;
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .context("starting explain")?;
    set_local_limits(&tx, cfg).await?;
    let rule_of_d = rules.rule_of_d("$1", "$2");
    let sql = |template: &str| render(&verified.schemas, &rule_of_d, template);
    let ctx = Context {
        tx: &tx,
        st: &st,
        clock: &clock,
        rules,
        sql: &sql,
        prune_executions: cfg.retention.prune_executions,
    };
    let explanation = ctx.explain(instance_id.to_owned()).await?;
    tx.rollback().await.context("ending explain")?;
    Ok(explanation)
}

fn member(r: &Row) -> Member {
    Member {
        instance_id: r.get(0),
        parent_instance_id: r.get(1),
        created_at: timestamp(r.get(2)),
        current_execution_id: r.get(3),
        status: r.get(4),
        completed_at: timestamp(r.get(5)),
        executions: r.get(6),
        ended_generations: r.get(7),
        prunable_generations: None,
    }
}

fn df_row(r: &Row) -> DfRow {
    DfRow {
        status: r.get::<_, Option<String>>(0).unwrap_or_default(),
        label: r.get(1),
        submitted_by: r.get(2),
        created_at: timestamp(r.get(3)),
        completed_at: timestamp(r.get(4)),
        updated_at: timestamp(r.get(5)),
    }
}

/// What the explaining steps share.
struct Context<'a, F: Fn(&str) -> String> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    st: &'a Statements,
    clock: &'a PassClock,
    rules: RuleSet<'a>,
    sql: &'a F,
    /// `retention.prune_executions`: whether generations are pruned at all.
    prune_executions: bool,
}

impl<F: Fn(&str) -> String> Context<'_, F> {
    /// Reads the instance, its tree and leases, and judges it; None: in neither store.
    async fn explain(&self, id: String) -> Result<Option<Explanation>, Error> {
        let df = self
            .tx
            .fetch_opt(&(self.sql)(reconcile::EXPLAIN_DF_ROW), &[&id])
            .await
            .context("reading the df row")?;
        let mut tree: Vec<Member> = self
            .tx
            .fetch_all(&(self.sql)(reconcile::EXPLAIN_TREE), &[&id])
            .await
            .context("reading the engine tree")?
            .iter()
            .map(member)
            .collect();
        if self.prune_executions && !tree.is_empty() {
            self.count_prunable_generations(&mut tree).await?;
        }
        if df.is_none() && tree.is_empty() {
            return Ok(None);
        }
        let mut ids: Vec<String> = tree.iter().map(|m| m.instance_id.clone()).collect();
        if ids.is_empty() {
            ids.push(id.clone());
        }
        let leases: Vec<Lease> = self
            .tx
            .fetch_all(&(self.sql)(reconcile::EXPLAIN_LEASES), &[&ids])
            .await
            .context("reading leases")?
            .iter()
            .map(|r| Lease {
                table: r.get(0),
                instance_id: r.get(1),
                ms_left: r.get(2),
            })
            .collect();
        let mut e = Explanation {
            instance_id: id,
            checked_at: rfc3339(self.clock.db_now),
            df_row: df.as_ref().map(df_row),
            engine_tree: tree,
            rule: DEFAULT_RULE.to_owned(),
            window: None,
            terminal_at: None,
            terminal_at_source: None,
            expires_at: None,
            cap: None,
            leases,
            orphans_held: Vec::new(),
            verdict: Verdict::kept("live", String::new()),
        };
        e.verdict = if df.is_some() {
            self.df_instance(&mut e).await?
        } else {
            self.engine_only(&mut e).await?
        };
        Ok(Some(e))
    }

    /// Fills each member's `prunable_generations` with the pruning phase's predicate.
    async fn count_prunable_generations(&self, tree: &mut [Member]) -> Result<(), Error> {
        let p = &self.clock.rules;
        let ids: Vec<String> = tree.iter().map(|m| m.instance_id.clone()).collect();
        let rows = self
            .tx
            .fetch_all(
                &(self.sql)(engine::PRUNABLE_GENERATIONS_OF),
                &[
                    &p.labels,
                    &p.roles,
                    &p.keep_executions,
                    &p.generation_cutoffs,
                    &ids,
                ],
            )
            .await
            .context("counting prunable generations")?;
        for row in &rows {
            let id: String = row.get(0);
            if let Some(member) = tree.iter_mut().find(|m| m.instance_id == id) {
                member.prunable_generations = Some(row.get(1));
            }
        }
        Ok(())
    }

    /// A df row: live, or terminal and selected by the expired walk or not, then its tree.
    async fn df_instance(&self, e: &mut Explanation) -> Result<Verdict, Error> {
        let p = &self.clock.rules;
        let [c0, c1, c2] = &p.cutoffs;
        let row = self
            .tx
            .fetch_one(
                &(self.sql)(reconcile::EXPLAIN_EXPIRED),
                &[
                    &p.labels,
                    &p.roles,
                    &e.instance_id,
                    &1i64,
                    c0,
                    c1,
                    c2,
                    &p.edge_at,
                    &p.edge_id,
                ],
            )
            .await
            .context("selecting the df row as the pass would")?;
        let window_expired: bool = row.get(2);
        let has_engine_record: bool = row.get(3);
        let engine_is_root: bool = row.get(4);
        let engine_status: Option<String> = row.get(5);
        let terminal_at: Option<Timestamp<SystemTime>> = row.get(6);
        let rule: i32 = row.get(7);
        let selected: bool = row.get(8);
        e.rule = self.rules.name(rule).to_owned();
        let df = e.df_row.as_ref().expect("a df row");
        let Some(status) = TerminalStatus::parse(&df.status) else {
            let ended = engine_status
                .as_deref()
                .is_some_and(EngineStatus::is_terminal);
            return Ok(if ended {
                Verdict::kept(
                    "live_engine_ended",
                    format!(
                        "the df row is {} but its engine root ended {}: drift (df_live_engine_ended), never deleted",
                        df.status,
                        engine_status.unwrap_or_default()
                    ),
                )
            } else {
                Verdict::kept("live", format!("the df row is {}", df.status))
            });
        };
        let window = self.rules.windows(status)[rule as usize - 1];
        e.window = Some(window.map_or("forever".to_owned(), crate::rules::short_duration));
        e.terminal_at = timestamp(terminal_at);
        e.terminal_at_source = terminal_at.map(|_| {
            let member_completed = e.engine_tree.first().and_then(|m| m.completed_at.as_ref());
            if df.completed_at.is_some() {
                "df.completed_at"
            } else if member_completed.is_some() {
                "engine completed_at"
            } else {
                "df.created_at"
            }
        });
        e.expires_at = plus(terminal_at, window);
        e.cap = Some(self.cap_rank(&e.instance_id, rule, terminal_at).await?);
        if !selected {
            return Ok(match terminal_at {
                None => Verdict::kept(
                    "unknown_age",
                    "no completion time and no creation time: its age is unknown, never expired"
                        .into(),
                ),
                Some(_) => Verdict::kept(
                    "young",
                    format!(
                        "{} under rule {}: within its {} window (expires {}) and within its cap",
                        status,
                        e.rule,
                        e.window.as_deref().unwrap_or("?"),
                        e.expires_at.as_deref().unwrap_or("never")
                    ),
                ),
            });
        }
        let reason = if window_expired { "expired" } else { "capped" };
        match classify(has_engine_record, engine_is_root, engine_status.as_deref()) {
            Selection::Inconsistent => return Ok(Verdict::kept(
                "inconsistent",
                "its engine record is not a root (a parent or a child-shaped id): never deleted"
                    .into(),
            )),
            Selection::Unsettled => {
                return Ok(Verdict::kept(
                    "unsettled",
                    format!(
                        "{reason}, but its engine root is {} (not ended): kept until it ends",
                        engine_status.as_deref().unwrap_or("of unknown status")
                    ),
                ))
            }
            Selection::Lock => {}
        }
        let mut tally = BatchTally::default();
        let ids = vec![e.instance_id.clone()];
        let cleared = lock_trees(self.tx, self.st, &ids, RootRule::Settled, &mut tally).await?;
        Ok(if cleared.is_deletable(&e.instance_id) {
            Verdict::removed(
                reason,
                if window_expired {
                    format!(
                        "{status} under rule {}: its {} window ended {}",
                        e.rule,
                        e.window.as_deref().unwrap_or("?"),
                        e.expires_at.as_deref().unwrap_or("?")
                    )
                } else {
                    let cap = e.cap.as_ref().expect("a cap rank");
                    format!(
                        "{status} under rule {}: rank {} over its cap of {}",
                        e.rule, cap.rank, cap.hard_cap
                    )
                },
            )
        } else {
            self.tree_kept(e, reason, tally)
        })
    }

    /// An engine instance without a df row: a child, or a root the orphan walk takes or
    /// not.
    async fn engine_only(&self, e: &mut Explanation) -> Result<Verdict, Error> {
        let root = &e.engine_tree[0];
        if !is_engine_root(&root.instance_id, root.parent_instance_id.as_deref()) {
            // Never removed alone: it goes when, and only when, its root's tree goes.
            let top: Option<String> = self
                .tx
                .fetch_opt(&(self.sql)(reconcile::EXPLAIN_ROOT_OF), &[&e.instance_id])
                .await
                .context("finding the root of an engine child")?
                .map(|r| r.get(0));
            let root_of = match top {
                Some(top) if top != e.instance_id => {
                    Box::pin(self.explain(top.clone())).await?.map(|r| (top, r))
                }
                _ => None,
            };
            return Ok(match root_of {
                Some((top, r)) if r.verdict.removed => Verdict::removed(
                    "child",
                    format!(
                        "a sub-orchestration of {top}, whose tree the next pass removes: {}",
                        r.verdict.detail
                    ),
                ),
                Some((top, r)) => Verdict::kept(
                    "child",
                    format!(
                        "a sub-orchestration of {top}, whose tree is kept ({}): {}",
                        r.verdict.reason, r.verdict.detail
                    ),
                ),
                None => Verdict::kept(
                    "child",
                    "a sub-orchestration with no reachable root: never removed on its own".into(),
                ),
            });
        }
        let c = self.clock;
        let row = self
            .tx
            .fetch_one(
                &(self.sql)(reconcile::EXPLAIN_ORPHAN),
                &[
                    &e.instance_id,
                    &1i64,
                    &c.orphan_cutoff,
                    &c.orphan_created_before,
                ],
            )
            .await
            .context("selecting the engine root as the orphan walk would")?;
        let status: Option<String> = row.get(1);
        let aged_from: Option<Timestamp<SystemTime>> = row.get(2);
        let aged: bool = row.get(6);
        let predates: bool = row.get(7);
        let selected: bool = row.get(8);
        e.terminal_at = timestamp(aged_from);
        e.terminal_at_source = aged_from.map(|_| "engine completed_at or updated_at");
        e.expires_at = plus(aged_from, Some(self.cfg_orphan_age()));
        e.orphans_held = c.guard.holds();
        let status_text = status.clone().unwrap_or_else(|| "unknown".into());
        if !status.as_deref().is_some_and(EngineStatus::is_terminal) {
            return Ok(Verdict::kept(
                "orphan_live",
                format!("an engine root with no df row, {status_text}: live (drift running_without_df_row), never deleted"),
            ));
        }
        if !aged {
            return Ok(Verdict::kept(
                "orphan_young",
                format!(
                    "an orphan engine root ({status_text}), not old enough yet: reclaimed after {}",
                    e.expires_at.as_deref().unwrap_or("?")
                ),
            ));
        }
        if !predates {
            return Ok(Verdict::kept(
                "orphan_open_transaction",
                "an orphan engine root created after the oldest open transaction began: that transaction may still commit its df row".into(),
            ));
        }
        if !selected {
            return Ok(Verdict::kept(
                "orphan_young",
                "an engine root the orphan walk does not select".into(),
            ));
        }
        if !e.orphans_held.is_empty() {
            let reasons: Vec<&str> = e.orphans_held.iter().map(|h| h.as_str()).collect();
            return Ok(Verdict::kept(
                "orphans_held",
                format!(
                    "an orphan, but no orphan is reclaimed while the open-transaction guard is blind ({})",
                    reasons.join(", ")
                ),
            ));
        }
        let mut tally = BatchTally::default();
        let roots = vec![e.instance_id.clone()];
        let cleared = lock_trees(self.tx, self.st, &roots, RootRule::Orphan, &mut tally).await?;
        Ok(if cleared.is_deletable(&e.instance_id) {
            Verdict::removed(
                "orphan",
                format!("an engine root ({status_text}) with no df row, old enough: reclaimed with its tree"),
            )
        } else {
            self.tree_kept(e, "an orphan", tally)
        })
    }

    fn cfg_orphan_age(&self) -> Duration {
        // The pass's orphan cutoff is db_now - max(window, orphan_min_age).
        self.clock
            .orphan_cutoff
            .and_then(|c| self.clock.db_now.duration_since(c).ok())
            .unwrap_or(Duration::MAX)
    }

    /// Why a selected tree was not cleared: a member still live, or a lease.
    fn tree_kept(&self, e: &Explanation, what: &str, tally: BatchTally) -> Verdict {
        let live: Vec<String> = e
            .engine_tree
            .iter()
            .filter(|m| !m.status.as_deref().is_some_and(EngineStatus::is_terminal))
            .map(|m| {
                format!(
                    "{} {}",
                    m.instance_id,
                    m.status.as_deref().unwrap_or("(unknown)")
                )
            })
            .collect();
        if tally.skipped_unsettled > 0 || (!live.is_empty() && e.leases.is_empty()) {
            Verdict::kept(
                "descendant_running",
                format!(
                    "{what}, but its tree has not ended ({}): kept until every member ends",
                    live.join(", ")
                ),
            )
        } else if !e.leases.is_empty() {
            Verdict::kept(
                "leased",
                format!(
                    "{what}, but {} is leased by the engine: retried next pass",
                    e.leases[0].instance_id
                ),
            )
        } else {
            Verdict::kept(
                "locked",
                format!("{what}, but its tree could not be taken whole: retried next pass"),
            )
        }
    }

    /// Its rank in its cap group.
    async fn cap_rank(
        &self,
        id: &str,
        rule: i32,
        terminal_at: Option<Timestamp<SystemTime>>,
    ) -> Result<CapRank, Error> {
        let (hard_cap, group) = self
            .rules
            .cap_groups()
            .into_iter()
            .find(|(_, g)| g.contains(&rule))
            .expect("every rule is in a cap group");
        let own = group.len() == 1
            && (rule as usize) <= self.rules.rules().len()
            && self.rules.rules()[rule as usize - 1].hard_cap.is_some();
        let p = &self.clock.rules;
        let id = id.to_owned();
        let rank: i64 = self
            .tx
            .fetch_one(
                &(self.sql)(reconcile::EXPLAIN_CAP_RANK),
                &[&p.labels, &p.roles, &id, &group, &terminal_at],
            )
            .await
            .context("ranking the row under its cap")?
            .get(0);
        Ok(CapRank {
            hard_cap,
            own,
            rank,
            over: u64::try_from(rank).unwrap_or(0) > hard_cap,
        })
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = &self.verdict;
        writeln!(
            f,
            "{}: {} ({})",
            self.instance_id,
            if v.removed {
                "REMOVED by the next pass"
            } else {
                "KEPT"
            },
            v.reason
        )?;
        writeln!(f, "  why: {}", v.detail)?;
        writeln!(f, "  checked at: {}", self.checked_at)?;
        match &self.df_row {
            Some(d) => writeln!(
                f,
                "  df row: {}, label {}, submitted_by {}, created {}, completed {}",
                d.status,
                d.label.as_deref().map_or("-".into(), |l| format!("{l:?}")),
                d.submitted_by,
                d.created_at.as_deref().unwrap_or("-"),
                d.completed_at.as_deref().unwrap_or("-")
            )?,
            None => writeln!(f, "  df row: none")?,
        }
        if self.engine_tree.is_empty() {
            writeln!(f, "  engine tree: none")?;
        } else {
            writeln!(f, "  engine tree ({} members):", self.engine_tree.len())?;
            for m in &self.engine_tree {
                writeln!(
                    f,
                    "    {:<40} {:<15} completed {}, {} executions ({} earlier ended, {} prunable){}",
                    m.instance_id,
                    m.status.as_deref().unwrap_or("(no execution)"),
                    m.completed_at.as_deref().unwrap_or("-"),
                    m.executions,
                    m.ended_generations,
                    m.prunable_generations
                        .map_or("pruning off".to_owned(), |n| n.to_string()),
                    m.parent_instance_id
                        .as_deref()
                        .map_or(String::new(), |p| format!(", child of {p}"))
                )?;
            }
        }
        writeln!(f, "  rule: {}", self.rule)?;
        if let Some(w) = &self.window {
            writeln!(f, "  window: {w}")?;
        }
        writeln!(
            f,
            "  terminal_at: {}{}",
            self.terminal_at.as_deref().unwrap_or("-"),
            self.terminal_at_source
                .map_or(String::new(), |s| format!(" (from {s})"))
        )?;
        writeln!(
            f,
            "  expires: {}",
            self.expires_at.as_deref().unwrap_or("never / unknown")
        )?;
        if let Some(c) = &self.cap {
            writeln!(
                f,
                "  hard cap: rank {} of at most {} ({}){}",
                c.rank,
                c.hard_cap,
                if c.own { "the rule's own" } else { "global" },
                if c.over { ", over the cap" } else { "" }
            )?;
        }
        if self.leases.is_empty() {
            writeln!(f, "  leases: none")?;
        } else {
            for l in &self.leases {
                writeln!(
                    f,
                    "  lease: {} on {} for {} ms more",
                    l.table, l.instance_id, l.ms_left
                )?;
            }
        }
        if !self.orphans_held.is_empty() {
            let reasons: Vec<&str> = self.orphans_held.iter().map(|h| h.as_str()).collect();
            writeln!(f, "  orphans held: {}", reasons.join(", "))?;
        }
        Ok(())
    }
}
