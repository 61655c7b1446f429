//! The real pg_durable extension as a test tier: real workflows (`df.start`, joins, races,
//! loops, signals, `df.cancel`, rolled-back transactions) run by pg_durable's own engine,
//! passes of the daemon beside them, and assertions on what both stores hold afterwards.
//!
//! The tier runs when the server binaries the throwaway cluster uses have pg_durable
//! installed (`df_reconciler_testkit::real_extension_available`). Otherwise each test
//! returns at once after printing one line, e.g. `real_engine: skipped: pg_durable is not
//! installed for this PostgreSQL (no /usr/share/postgresql/15/extension/pg_durable.control)`.
//!
//! The engine's worker serves ONE database, so every test starts a cluster of its own
//! ([`Engine::start`], ~2-3 s) and tests run concurrently. Rows are never made by hand:
//! the only writes besides real `df.*` calls are UPDATEs that age timestamps
//! ([`age`]) so that retention applies.
//!
//! Every engine database carries guard triggers ([`GUARDS`]) that record, in the deleting
//! transaction, any deletion of a live df row or of an engine instance whose current
//! execution is Running or ContinuedAsNew: a committed batch that deleted live work leaves
//! a row in `test_guard.live_deletions`, which every test asserts to be empty.
//!
//! - `lifecycle`: simple, JOIN and RACE workflows expiring from both stores; waiters on a
//!   signal and a sleep kept while live;
//! - `loops`: a running root LOOP never touched; a cancelled loop kept while it is between
//!   generations or a child still runs, removed once ended and aged;
//! - `generations`: ticking root and child loops under `run` with a small
//!   `retention.keep_executions`: their generations stay bounded, they keep iterating;
//! - `rollbacks`: a rolled-back `df.cancel()` (live df row, ended engine: drift) and a
//!   rolled-back `df.start()` (an orphan, reclaimed once old enough);
//! - `churn`: a minute of mixed workflows under the daemon's `run`, with its invariants;
//! - `rules`: `[[retention.rules]]` keeping one label's failure while the default removes
//!   another's;
//! - `shipped_role`: the documented setup as the role of `deploy/sql/reconciler-role.sql`
//!   (`check`, `migrate`, `run` with `audit.record_deletions`, `history`);
//! - `fidelity`: the fixture's imitation of both stores against the real catalog;
//! - `pacing`: a pass beside the idle engine never pauses; beside a running activity it
//!   pauses between batches;
//! - `fresh_install`: `run` started at once after `CREATE EXTENSION`, before the worker
//!   has migrated the engine's store: it waits, unready, and reconciles once it is there.

mod churn;
mod fidelity;
mod fresh_install;
mod generations;
mod lifecycle;
mod loops;
mod pacing;
mod rollbacks;
mod rules;
mod shipped_role;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use df_reconciler_core::config::{Config, SecretString};
use df_reconciler_core::report::PassReport;
use df_reconciler_testkit::real_engine::FrozenWorker;
use df_reconciler_testkit::{RealEngine, RealEngineError};
use tokio_postgres::Client;

use crate::support::db::{count, exec, ids};
use crate::support::harness::{connect, wait_until};
use crate::support::passes::try_pass;

/// Starts a [`Engine`] or, when the extension is not installed, prints the one skip line
/// and returns from the calling test.
macro_rules! engine_or_skip {
    () => {
        match crate::real_engine::Engine::start().await {
            Some(engine) => engine,
            None => return,
        }
    };
}
pub(crate) use engine_or_skip;

/// Recorded in the deleting transaction, so only committed deletions leave rows:
/// - `live_deletions`: a df row deleted while pending or running (or with an unknown
///   status), or an engine execution deleted while it is its instance's current one and
///   Running or ContinuedAsNew (the instance is live: never to be deleted);
/// - `deleted_engine`: every engine instance deleted, with the time (UTC text, comparable
///   with the server log's times).
const GUARDS: &str = r#"
CREATE SCHEMA test_guard;
CREATE TABLE test_guard.live_deletions (what text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE test_guard.deleted_engine (
    instance_id text NOT NULL,
    at_utc      text NOT NULL DEFAULT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'));
CREATE FUNCTION test_guard.df_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status IS NULL OR OLD.status NOT IN ('completed', 'failed', 'cancelled') THEN
    INSERT INTO test_guard.live_deletions (what)
    VALUES (format('df row %s deleted while %s', OLD.id, coalesce(OLD.status, 'NULL')));
  END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER guard BEFORE DELETE ON df.instances
    FOR EACH ROW EXECUTE FUNCTION test_guard.df_delete();
CREATE FUNCTION test_guard.execution_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.status IN ('Running', 'ContinuedAsNew') AND EXISTS (
       SELECT 1 FROM _duroxide.instances i
        WHERE i.instance_id = OLD.instance_id AND i.current_execution_id = OLD.execution_id) THEN
    INSERT INTO test_guard.live_deletions (what)
    VALUES (format('engine instance %s deleted while its current execution %s was %s',
                   OLD.instance_id, OLD.execution_id, OLD.status));
  END IF;
  RETURN OLD;
END $$;
CREATE TRIGGER guard BEFORE DELETE ON _duroxide.executions
    FOR EACH ROW EXECUTE FUNCTION test_guard.execution_delete();
CREATE FUNCTION test_guard.instance_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO test_guard.deleted_engine (instance_id) VALUES (OLD.instance_id);
  RETURN OLD;
END $$;
CREATE TRIGGER guard BEFORE DELETE ON _duroxide.instances
    FOR EACH ROW EXECUTE FUNCTION test_guard.instance_delete();
"#;

/// A throwaway cluster with pg_durable's engine running (see the module docs). Dropping
/// it stops the server with an immediate shutdown, also when the test panics.
pub(crate) struct Engine {
    pub(crate) real: RealEngine,
    pub(crate) dsn: String,
}

impl Engine {
    /// The engine with the guard triggers installed, or `None` (after printing the skip
    /// line) when the extension is not installed. Panics on any other start-up failure.
    pub(crate) async fn start() -> Option<Engine> {
        if let Err(why) = df_reconciler_testkit::real_extension_available() {
            eprintln!("real_engine: skipped: {why}");
            return None;
        }
        let started = Instant::now();
        let real = match tokio::task::spawn_blocking(RealEngine::start).await {
            Ok(Ok(real)) => real,
            Ok(Err(RealEngineError::Unavailable(why))) => {
                eprintln!("real_engine: skipped: {why}");
                return None;
            }
            Ok(Err(e)) => panic!("cannot start PostgreSQL with pg_durable's engine: {e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let engine = Engine {
            dsn: real.dsn(),
            real,
        };
        exec(&engine.client().await, GUARDS).await;
        eprintln!(
            "real_engine: engine ready on port {} in {:?}",
            engine.real.cluster().port(),
            started.elapsed()
        );
        Some(engine)
    }

    /// A cluster with pg_durable preloaded and its worker running, before `CREATE
    /// EXTENSION` (no engine store yet, no guards: [`Engine::install_guards`] once the
    /// store is there), or `None` after printing the skip line.
    pub(crate) async fn start_before_extension() -> Option<Engine> {
        if let Err(why) = df_reconciler_testkit::real_extension_available() {
            eprintln!("real_engine: skipped: {why}");
            return None;
        }
        let real = match tokio::task::spawn_blocking(RealEngine::start_before_extension).await {
            Ok(Ok(real)) => real,
            Ok(Err(RealEngineError::Unavailable(why))) => {
                eprintln!("real_engine: skipped: {why}");
                return None;
            }
            Ok(Err(e)) => panic!("cannot start PostgreSQL with pg_durable preloaded: {e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        Some(Engine {
            dsn: real.dsn(),
            real,
        })
    }

    /// Installs the guard triggers ([`GUARDS`]); needs the engine's store.
    pub(crate) async fn install_guards(&self) {
        exec(&self.client().await, GUARDS).await;
    }

    /// A new superuser session on the engine's database, named [`TEST_SESSIONS`].
    pub(crate) async fn client(&self) -> Client {
        connect(&format!("{}?application_name={TEST_SESSIONS}", self.dsn)).await
    }

    /// The daemon's default configuration pointed at the engine's database.
    pub(crate) fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.database.url = Some(SecretString::new(self.dsn.clone()));
        cfg
    }

    /// [`Engine::config`] with every retention window (and the orphan floor) set to
    /// `window`, allowed to be that short.
    pub(crate) fn short_config(&self, window: Duration) -> Config {
        let mut cfg = self.config();
        cfg.retention.allow_short_retention = true;
        cfg.retention.window = window;
        cfg.retention.orphan_min_age = window;
        cfg
    }

    /// Freezes the engine's worker (SIGSTOP) until the guard drops.
    pub(crate) fn freeze(&self) -> FrozenWorker {
        self.real
            .freeze_worker()
            .expect("pg_durable's worker can be frozen")
    }

    /// Engine errors and warnings in the server log that mention a missing row ("not
    /// found", "does not exist", "no longer exists", "missing") about an engine instance
    /// deleted by a pass, logged after it was deleted: the engine still working on
    /// something the daemon removed. Each entry is the log line.
    pub(crate) async fn errors_about_deleted(&self, c: &Client) -> Vec<String> {
        let deleted: Vec<(String, String)> = c
            .query(
                "SELECT instance_id, min(at_utc) FROM test_guard.deleted_engine GROUP BY 1",
                &[],
            )
            .await
            .expect("deleted engine instances")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let log = self.real.log_since_ready().expect("the server log");
        let mut found = Vec::new();
        for line in log.lines().filter(|l| mentions_missing_row(l)) {
            // The engine's own cancellation of a running activity: cancelling an instance
            // (or a RACE's loser) deletes the activity's worker item, and its worker's ack
            // then fails with "Worker queue item not found". Measured on pg_durable 0.2.6
            // with no daemon running at all (`df.cancel()` of a `pg_sleep(4)` activity, and
            // a RACE of `SELECT 1` against `pg_sleep(4)`): both logged this line. Not
            // caused by a deletion of ours, so not counted; printed for the record.
            if line.contains("atomic ack failed, abandoning work item") {
                eprintln!("real_engine: activity result dropped after removal: {line}");
                continue;
            }
            let Some(at) = log_time(line) else { continue };
            let about_deleted = deleted
                .iter()
                .any(|(id, deleted_at)| at.as_str() > deleted_at.as_str() && mentions(line, id));
            if about_deleted {
                found.push(line.to_owned());
            }
        }
        found
    }

    /// Every line of the server log since the worker was ready that is an engine or server
    /// error or warning mentioning a missing row, for the record.
    pub(crate) fn missing_row_lines(&self) -> Vec<String> {
        let log = self.real.log_since_ready().expect("the server log");
        log.lines()
            .filter(|l| mentions_missing_row(l))
            .map(str::to_owned)
            .collect()
    }
}

/// An error or warning (the worker's tracing levels, or the server's) about a row that is
/// not there.
fn mentions_missing_row(line: &str) -> bool {
    let leveled = [" ERROR ", " WARN ", "ERROR:", "WARNING:", "FATAL:"]
        .iter()
        .any(|level| line.contains(level));
    let lower = line.to_lowercase();
    leveled
        && ["not found", "does not exist", "no longer exists", "missing"]
            .iter()
            .any(|what| lower.contains(what))
}

/// Whether `line` names engine instance `id` exactly (not as a prefix of a longer id:
/// `abc` must not match `abc::1::def`), as `instance=ID`, `instance_id=ID` or a quoted
/// or bare word.
fn mentions(line: &str, id: &str) -> bool {
    line.match_indices(id).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = &line[at + id.len()..];
        let boundary_before = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == ':'));
        let boundary_after = !after.starts_with("::")
            && after
                .chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == ':'));
        boundary_before && boundary_after
    })
}

/// The UTC time a log line was written, as `YYYY-MM-DD HH:MM:SS.ffffff`: the worker's
/// tracing lines start `2026-11-30T12:34:10.130308Z`, the server's `2026-11-30
/// 12:34:10.131 UTC` (log_timezone is UTC on these clusters).
fn log_time(line: &str) -> Option<String> {
    let stamp: String = line.chars().take(26).collect();
    let (date, rest) = stamp.split_at_checked(10)?;
    let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' '))?;
    let (time, fraction) = rest.split_once('.')?;
    if date.len() != 10 || time.len() != 8 {
        return None;
    }
    let digits: String = fraction.chars().take_while(char::is_ascii_digit).collect();
    Some(format!("{date} {time}.{digits:0<6}"))
}

/// `df.start(graph, label)`, committed (autocommit), returning the instance id.
pub(crate) async fn start(c: &Client, graph: &str, label: &str) -> String {
    let sql = format!("SELECT df.start({graph}, $1)");
    c.query_one(&sql, &[&label])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// `df.status(id)`: pending, running, completed, failed, cancelled; None once gone.
pub(crate) async fn status(c: &Client, id: &str) -> Option<String> {
    c.query_one("SELECT df.status($1)", &[&id])
        .await
        .expect("df.status")
        .get(0)
}

/// `df.result(id)` as JSON; None unless completed.
pub(crate) async fn result(c: &Client, id: &str) -> Option<serde_json::Value> {
    let text: Option<String> = c
        .query_one("SELECT df.result($1)", &[&id])
        .await
        .expect("df.result")
        .get(0);
    text.map(|t| serde_json::from_str(&t).expect("df.result is JSON"))
}

/// The first row's `column` of a completed SQL result (`{"rows": [{...}], ...}`).
pub(crate) fn first_row(result: &serde_json::Value, column: &str) -> serde_json::Value {
    result["rows"][0][column].clone()
}

/// A workflow that is live while passes run (it sleeps `secs` first) and must then
/// complete normally ([`completes_normally`]).
pub(crate) async fn bystander(c: &Client, secs: u32) -> String {
    let graph = format!("df.seq(df.sleep({secs}), 'SELECT 42 AS bystander')");
    start(c, &graph, "bystander").await
}

/// Waits until the [`bystander`] `id` has completed, with its result.
pub(crate) async fn completes_normally(c: &Client, id: &str) {
    wait_status(c, id, "completed", Duration::from_secs(60)).await;
    assert_eq!(
        result(c, id).await.map(|r| first_row(&r, "bystander")),
        Some(serde_json::json!(42)),
        "the bystander {id} completed normally"
    );
}

/// Waits until `df.status(id)` is `wanted`.
pub(crate) async fn wait_status(c: &Client, id: &str, wanted: &str, deadline: Duration) {
    let what = format!("{id} is {wanted}");
    wait_until(&what, deadline, || async {
        status(c, id).await.as_deref() == Some(wanted)
    })
    .await;
}

/// The current status of every engine instance of `id`'s tree (root first, then by id).
pub(crate) async fn tree(c: &Client, id: &str) -> Vec<(String, String)> {
    c.query(
        "WITH RECURSIVE t(id) AS (
             SELECT instance_id FROM _duroxide.instances WHERE instance_id = $1
           UNION
             SELECT i.instance_id FROM _duroxide.instances i JOIN t ON i.parent_instance_id = t.id)
         SELECT t.id, coalesce(e.status, '(no execution)')
           FROM t JOIN _duroxide.instances i ON i.instance_id = t.id
           LEFT JOIN _duroxide.executions e
                  ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
          ORDER BY t.id <> $1, t.id",
        &[&id],
    )
    .await
    .expect("engine tree")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Whether every member of `id`'s engine tree exists and has ended (Completed or Failed).
pub(crate) async fn tree_ended(c: &Client, id: &str) -> bool {
    let members = tree(c, id).await;
    !members.is_empty()
        && members
            .iter()
            .all(|(_, s)| s == "Completed" || s == "Failed")
}

/// Waits until `id`'s df row is `df_status`, its whole engine tree has ended, and the
/// engine holds no lease or row lock on it.
pub(crate) async fn wait_ended(c: &Client, id: &str, df_status: &str, deadline: Duration) {
    // The engine writes the end before it lets go: its lease on the instance and its row
    // locks can outlast the status for a moment, and a pass skips a tree held either way.
    let what = format!("{id} is {df_status}, its engine tree has ended and is let go");
    wait_until(&what, deadline, || async {
        status(c, id).await.as_deref() == Some(df_status)
            && tree_ended(c, id).await
            && leases_on(c, id).await.is_empty()
            && locked_rows_of(c, id).await.is_empty()
    })
    .await;
}

/// Moves `id`'s server-written timestamps `secs` into the past, in both stores: df
/// created_at and completed_at; the engine instances' created_at and updated_at and their
/// executions' started_at and completed_at, for the root and every descendant.
pub(crate) async fn age(c: &Client, id: &str, secs: f64) {
    let children = format!("{id}::%");
    c.execute(
        "UPDATE df.instances
            SET created_at = created_at - make_interval(secs => $2),
                completed_at = completed_at - make_interval(secs => $2)
          WHERE id = $1",
        &[&id, &secs],
    )
    .await
    .expect("ageing the df row");
    c.execute(
        "UPDATE _duroxide.instances
            SET created_at = created_at - make_interval(secs => $3),
                updated_at = updated_at - make_interval(secs => $3)
          WHERE instance_id = $1 OR instance_id LIKE $2",
        &[&id, &children, &secs],
    )
    .await
    .expect("ageing the engine instances");
    c.execute(
        "UPDATE _duroxide.executions
            SET started_at = started_at - make_interval(secs => $3),
                completed_at = completed_at - make_interval(secs => $3)
          WHERE instance_id = $1 OR instance_id LIKE $2",
        &[&id, &children, &secs],
    )
    .await
    .expect("ageing the engine executions");
}

/// Runs one pass of the daemon's library that must succeed.
pub(crate) async fn pass(cfg: &Config) -> PassReport {
    match try_pass(cfg, false).await {
        Ok(report) => report,
        Err(failed) => panic!("pass failed: {}\n{}", failed.error, failed.report),
    }
}

/// What the guard triggers recorded: deletions of live work (must stay empty).
pub(crate) async fn live_deletions(c: &Client) -> Vec<String> {
    ids(c, "SELECT what FROM test_guard.live_deletions ORDER BY at").await
}

/// Rows of every engine table whose instance's root (the id up to the first `::`) has no
/// df row: what a deletion left behind, or orphans.
pub(crate) async fn engine_rows_without_df_root(c: &Client) -> i64 {
    count(
        c,
        "WITH engine(instance_id) AS (
             SELECT instance_id FROM _duroxide.instances
             UNION ALL SELECT instance_id FROM _duroxide.executions
             UNION ALL SELECT instance_id FROM _duroxide.history
             UNION ALL SELECT instance_id FROM _duroxide.orchestrator_queue
             UNION ALL SELECT instance_id FROM _duroxide.worker_queue WHERE instance_id IS NOT NULL
             UNION ALL SELECT instance_id FROM _duroxide.instance_locks
             UNION ALL SELECT instance_id FROM _duroxide.kv_store
             UNION ALL SELECT instance_id FROM _duroxide.kv_delta)
         SELECT count(*) FROM engine e
          WHERE NOT EXISTS (SELECT 1 FROM df.instances d
                             WHERE d.id = split_part(e.instance_id, '::', 1))",
    )
    .await
}

/// Leases the engine holds on `id`'s tree (instance_locks or a queue item whose
/// locked_until is still ahead): a pass skips a leased tree. Each entry names the
/// instance and what it holds.
pub(crate) async fn leases_on(c: &Client, id: &str) -> Vec<String> {
    let children = format!("{id}::%");
    let ahead = "locked_until > (extract(epoch FROM clock_timestamp()) * 1000)::bigint";
    let mut leases = Vec::new();
    for (table, what) in [
        ("instance_locks", "instance lock"),
        ("orchestrator_queue", "orchestrator item"),
        ("worker_queue", "worker item"),
    ] {
        let rows = c
            .query(
                &format!(
                    "SELECT instance_id FROM _duroxide.{table}
                      WHERE (instance_id = $1 OR instance_id LIKE $2) AND {ahead}"
                ),
                &[&id, &children],
            )
            .await
            .expect("leases");
        leases.extend(
            rows.iter()
                .map(|r| format!("{}: {what}", r.get::<_, String>(0))),
        );
    }
    leases
}

/// Rows of `id` (its df rows, its engine instances) that another session holds locked:
/// what the daemon's FOR UPDATE SKIP LOCKED would skip.
pub(crate) async fn locked_rows_of(c: &Client, id: &str) -> Vec<String> {
    let children = format!("{id}::%");
    c.batch_execute("BEGIN").await.expect("BEGIN");
    let mut all = 0;
    let mut free = 0;
    for (table, column) in [
        ("df.instances", "id"),
        ("df.nodes", "instance_id"),
        ("_duroxide.instances", "instance_id"),
    ] {
        let filter = format!("{column}::text = $1 OR {column}::text LIKE $2");
        all += c
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE {filter}"),
                &[&id, &children],
            )
            .await
            .expect("rows")
            .get::<_, i64>(0);
        free += c
            .query(
                &format!("SELECT 1 FROM {table} WHERE {filter} FOR UPDATE SKIP LOCKED"),
                &[&id, &children],
            )
            .await
            .expect("unlocked rows")
            .len() as i64;
    }
    c.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    if free < all {
        vec![format!("{} of {all} rows of {id} locked", all - free)]
    } else {
        Vec::new()
    }
}

/// The application_name of the tests' own sessions, told apart from the engine's.
const TEST_SESSIONS: &str = "real-engine-test";

/// How many of the engine's sessions (anything but the tests' and the daemon's) are
/// running a statement right now.
async fn engine_sessions_active(c: &Client) -> i64 {
    count(
        c,
        &format!(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND backend_type = 'client backend' AND state = 'active'
                AND application_name <> '{TEST_SESSIONS}'
                AND application_name NOT LIKE 'df-reconciler%'"
        ),
    )
    .await
}

/// Polls `condition` (one boolean SQL query, `$1` = `id`) every millisecond or so and
/// freezes the engine the moment it holds. A frozen worker sends nothing more, but what
/// it already sent still runs in its sessions: the freeze is kept only once those are
/// done (within 3 s), the condition still holds and no row of `id` is locked. Leases the
/// engine took on the tree (5 s) are then waited out, still frozen, so that a pass sees
/// the state itself rather than a lease. Otherwise the engine is thawed and the poll goes
/// on. Gives up (None) after `deadline`.
pub(crate) async fn freeze_when(
    engine: &Engine,
    c: &Client,
    id: &str,
    condition: &str,
    deadline: Duration,
) -> Option<FrozenWorker> {
    let statement = c.prepare(condition).await.expect("condition prepares");
    let holds = || async {
        c.query_one(&statement, &[&id])
            .await
            .expect("condition")
            .get::<_, bool>(0)
    };
    let began = Instant::now();
    while began.elapsed() < deadline {
        if !holds().await {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let frozen = engine.freeze();
        let settled = Instant::now();
        while engine_sessions_active(c).await > 0 && settled.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if engine_sessions_active(c).await == 0
            && holds().await
            && locked_rows_of(c, id).await.is_empty()
        {
            let leased = Instant::now();
            while !leases_on(c, id).await.is_empty() && leased.elapsed() < Duration::from_secs(15) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if leases_on(c, id).await.is_empty() && holds().await {
                return Some(frozen);
            }
        }
        frozen.thaw();
        // Let the engine move on before looking again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The ids of `what` that still have rows anywhere (df or engine, any descendant).
pub(crate) async fn with_rows_left(c: &Client, what: &BTreeSet<String>) -> Vec<String> {
    let mut left = Vec::new();
    for id in what {
        if crate::support::db::rows_of(c, id).await > 0 {
            left.push(id.clone());
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_carry_comparable_utc_times() {
        assert_eq!(
            log_time("2026-11-30T12:34:10.130308Z  WARN duroxide::runtime: x").as_deref(),
            Some("2026-11-30 12:34:10.130308")
        );
        assert_eq!(
            log_time("2026-11-30 12:34:10.131 UTC [13980] ERROR:  x").as_deref(),
            Some("2026-11-30 12:34:10.131000")
        );
        assert_eq!(log_time("\tat something"), None);
    }

    #[test]
    fn instance_ids_are_matched_whole() {
        let line = "WARN x: instance=21ddd981::1::89204b26 execution_id=1";
        assert!(mentions(line, "21ddd981::1::89204b26"));
        assert!(!mentions(line, "21ddd981"), "a prefix of a child id");
        assert!(mentions("ERROR y: Instance 5bbda51c not found", "5bbda51c"));
        assert!(!mentions(
            "ERROR y: Instance 5bbda51cd not found",
            "5bbda51c"
        ));
    }

    #[test]
    fn missing_row_lines_are_errors_or_warnings_about_absence() {
        assert!(mentions_missing_row(
            "2026-11-30 12:34:10.130 UTC [13982] ERROR:  Worker queue item not found or already processed"
        ));
        assert!(!mentions_missing_row(
            "2026-11-30T12:32:12.744546Z  WARN duroxide::runtime: Orchestration failed (application error)"
        ));
        assert!(!mentions_missing_row(
            "2026-11-30T12:32:12.744546Z  INFO duroxide::activity: instance not found in cache, loading"
        ));
    }
}
