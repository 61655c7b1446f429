//! Hostile and odd data: what users may legally write through their column grants
//! (`status`, `updated_at`, inserted `completed_at`), what a damaged or unusual store may
//! hold (NULLs where a value is expected, ids of every shape, broken and cyclic parent
//! links, a df row without its root node, huge trees, timestamps in the future), and what
//! the pass makes of it. Every test asserts on the database state AND on the report: the
//! pass terminates, deletes only what the rules allow (whole trees, both stores), and
//! counts what it skipped.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use df_reconciler_core::config::Config;
use df_reconciler_core::report::PassReport;
use tokio_postgres::{Client, NoTls};

use crate::classification::{orphan, workflow};
use crate::harness::TestDb;
use crate::support::{config_for, count, df_ids, engine_ids, ids, pass, violations};

const HOUR: f64 = 3_600.0;
const DAY: f64 = 86_400.0;
const YEAR: f64 = 365.0 * DAY;

/// Generous bound on one pass over a small population: a pass that loops on hostile data
/// fails the test instead of hanging the suite.
const PASS_BOUND: Duration = Duration::from_secs(60);

/// One pass that must succeed and must terminate within [`PASS_BOUND`].
async fn bounded_pass(cfg: &Config) -> PassReport {
    tokio::time::timeout(PASS_BOUND, pass(cfg, false))
        .await
        .unwrap_or_else(|_| panic!("the pass did not finish within {PASS_BOUND:?}"))
}

/// A whole workflow like [`workflow`], with the fixture's other knobs: `depth` levels of
/// children and the role that submitted it.
#[allow(clippy::too_many_arguments)]
async fn workflow_of(
    c: &Client,
    id: &str,
    df_status: &str,
    engine_status: Option<&str>,
    created_ago: f64,
    finished_ago: Option<f64>,
    children: i32,
    depth: i32,
    owner: &str,
) {
    c.execute(
        "SELECT df_fixture.workflow($1, $2, $3, now() - make_interval(secs => $4),
                now() - make_interval(secs => $5), $6, $7, $8::text::regrole)",
        &[
            &id,
            &df_status,
            &engine_status,
            &created_ago,
            &finished_ago,
            &children,
            &depth,
            &owner,
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("seeding workflow {id:?}: {e:?}"));
}

async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Rows of every per-instance table whose id is exactly `id` (no pattern matching: ids
/// here contain `%` and `_`).
async fn rows_exactly(c: &Client, id: &str) -> i64 {
    let sql = "SELECT
        (SELECT count(*) FROM df.instances WHERE id::text = $1)
      + (SELECT count(*) FROM df.nodes WHERE instance_id::text = $1)
      + (SELECT count(*) FROM _duroxide.instances WHERE instance_id = $1)
      + (SELECT count(*) FROM _duroxide.executions WHERE instance_id = $1)
      + (SELECT count(*) FROM _duroxide.history WHERE instance_id = $1)
      + (SELECT count(*) FROM _duroxide.orchestrator_queue WHERE instance_id = $1)
      + (SELECT count(*) FROM _duroxide.worker_queue WHERE instance_id = $1)
      + (SELECT count(*) FROM _duroxide.instance_locks WHERE instance_id = $1)
      + (SELECT count(*) FROM _duroxide.kv_store WHERE instance_id = $1)
      + (SELECT count(*) FROM _duroxide.kv_delta WHERE instance_id = $1)";
    c.query_one(sql, &[&id]).await.expect("row count").get(0)
}

/// Engine instance ids, as a set.
async fn engine_set(c: &Client) -> BTreeSet<String> {
    engine_ids(c).await.into_iter().collect()
}

/// The engine instances reachable from `root` through parent links (root included).
async fn tree_of(c: &Client, root: &str) -> BTreeSet<String> {
    c.query(
        "WITH RECURSIVE t(id) AS (
             SELECT instance_id FROM _duroxide.instances WHERE instance_id = $1
           UNION
             SELECT i.instance_id FROM _duroxide.instances i JOIN t ON i.parent_instance_id = t.id)
         SELECT id FROM t",
        &[&root],
    )
    .await
    .expect("tree")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// A session of its own, for a user's open transaction.
async fn session(db: &TestDb) -> Client {
    let (client, conn) = tokio_postgres::connect(&db.dsn, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// An ordinary role of this test (role names are cluster-wide), with nothing but what
/// pg_durable grants to PUBLIC: it may UPDATE `status` and `updated_at` of its own rows.
async fn ordinary_user(db: &TestDb, suffix: &str) -> String {
    let name = format!("{}_{suffix}", db.name);
    exec(
        &db.client().await,
        &format!("DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN"),
    )
    .await;
    name
}

/// A session acting as `role` (RLS applies: it sees and writes its own rows only).
async fn session_as(db: &TestDb, role: &str) -> Client {
    let s = session(db).await;
    exec(&s, &format!("SET ROLE {role}")).await;
    s
}

// ---------------------------------------------------------------------------------------
// Users writing what their column grants allow
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_terminal_row_flipped_back_to_running_is_live_again() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "flipper").await;
    workflow_of(
        &c,
        "50000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        1,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "50000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "50000003",
        "cancelled",
        None,
        60.0 * DAY,
        None,
        0,
        1,
        &user,
    )
    .await;
    let before = engine_set(&c).await;

    // The user's own session, through the column grant: every expired row back to running.
    let u = session_as(&db, &user).await;
    let flipped = u
        .execute("UPDATE df.instances SET status = 'running'", &[])
        .await
        .expect("status is user-writable");
    assert_eq!(flipped, 3, "the user sees and flips their own rows");

    let report = bounded_pass(&config_for(&db)).await;
    assert_eq!(df_ids(&c).await, vec!["50000001", "50000002", "50000003"]);
    assert_eq!(
        engine_set(&c).await,
        before,
        "engine trees of live rows kept"
    );
    assert_eq!(report.instances_removed(), 0);
    assert_eq!(
        report.orphans_reclaimed, 0,
        "a live df row's tree is no orphan"
    );
    assert_eq!(
        report.df_rows_without_engine, 1,
        "50000003 is running for df with no engine record nor queue item: drift"
    );
    assert!(violations(&c).await.is_empty());

    // Flipped back to terminal, the same rows expire again (terminal_at never came from
    // the user-writable columns) and go whole.
    u.execute("UPDATE df.instances SET status = 'failed'", &[])
        .await
        .unwrap();
    let report = bounded_pass(&config_for(&db)).await;
    assert!(df_ids(&c).await.is_empty());
    assert!(engine_ids(&c).await.is_empty());
    assert_eq!(report.expired_removed.failed, 3);
    assert_eq!(report.engine_children_removed, 1);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn a_status_flip_in_flight_is_skipped_without_waiting_and_then_honoured() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "inflight").await;
    for id in ["51000001", "51000002"] {
        workflow_of(
            &c,
            id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(59.0 * DAY),
            1,
            1,
            &user,
        )
        .await;
    }
    // The user's transaction is open: one row flipped to running, the other's updated_at
    // bumped. Both rows are locked by it.
    let u = session_as(&db, &user).await;
    exec(
        &u,
        "BEGIN;
         UPDATE df.instances SET status = 'running' WHERE id = '51000001';
         UPDATE df.instances SET updated_at = 'infinity' WHERE id = '51000002';",
    )
    .await;

    let mut cfg = config_for(&db);
    cfg.pass.lock_timeout = Duration::from_millis(500);
    let began = Instant::now();
    let report = bounded_pass(&cfg).await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the pass never waits on a user's row lock: {:?}",
        began.elapsed()
    );
    assert_eq!(report.skipped_locked, 2);
    assert_eq!(report.instances_removed(), 0);
    assert_eq!(df_ids(&c).await.len(), 2);
    assert_eq!(engine_ids(&c).await.len(), 4);

    exec(&u, "COMMIT").await;
    let report = bounded_pass(&cfg).await;
    assert_eq!(
        df_ids(&c).await,
        vec!["51000001"],
        "the committed flip is honoured"
    );
    assert!(engine_ids(&c)
        .await
        .iter()
        .all(|id| id.starts_with("51000001")));
    assert_eq!(
        report.expired_removed.completed, 1,
        "updated_at changed nothing"
    );
    assert_eq!(report.skipped_locked, 0);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn a_live_row_flipped_to_terminal_while_its_engine_root_runs_is_unsettled() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "early").await;
    // Old and young running workflows whose engine roots still run, and one whose engine
    // root finished long ago.
    workflow_of(
        &c,
        "52000001",
        "running",
        Some("Running"),
        60.0 * DAY,
        None,
        2,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "52000002",
        "running",
        Some("Running"),
        HOUR,
        None,
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "52000003",
        "running",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        1,
        1,
        &user,
    )
    .await;
    let u = session_as(&db, &user).await;
    exec(
        &u,
        "UPDATE df.instances SET status = 'completed';
         UPDATE df.instances SET status = 'cancelled' WHERE id = '52000002';",
    )
    .await;
    let before_1 = rows_exactly(&c, "52000001").await;

    let report = bounded_pass(&config_for(&db)).await;

    // 52000001: terminal for df, 60 days old by created_at (no completion time anywhere),
    // but its engine root runs: skipped and counted, not one row of it deleted.
    assert_eq!(rows_exactly(&c, "52000001").await, before_1);
    assert_eq!(tree_of(&c, "52000001").await.len(), 3);
    assert_eq!(report.skipped_unsettled, 1);
    // 52000002: young, not a candidate at all.
    assert!(df_ids(&c).await.contains(&"52000002".to_string()));
    // 52000003: the spec trusts df's status: terminal, settled, aged by the engine's
    // completed_at: deleted whole.
    assert_eq!(rows_exactly(&c, "52000003").await, 0);
    assert!(tree_of(&c, "52000003").await.is_empty());
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.engine_children_removed, 1);
    assert_eq!(
        report.running_without_df_row, 0,
        "the running roots have df rows"
    );
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn updated_at_anywhere_in_time_changes_nothing() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let user = ordinary_user(&db, "clock").await;
    // Expired ones.
    workflow_of(
        &c,
        "53000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        1,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(59.0 * DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000003",
        "cancelled",
        None,
        60.0 * DAY,
        None,
        0,
        1,
        &user,
    )
    .await;
    // Young or live ones.
    workflow_of(
        &c,
        "53000004",
        "completed",
        Some("Completed"),
        DAY,
        Some(DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000005",
        "failed",
        Some("Failed"),
        2.0 * DAY,
        Some(DAY),
        0,
        1,
        &user,
    )
    .await;
    workflow_of(
        &c,
        "53000006",
        "running",
        Some("Running"),
        400.0 * DAY,
        None,
        1,
        1,
        &user,
    )
    .await;
    let u = session_as(&db, &user).await;
    // Expired rows made to look brand new (or newer than time), young ones ancient.
    exec(
        &u,
        "UPDATE df.instances SET updated_at = 'infinity' WHERE id = '53000001';
         UPDATE df.instances SET updated_at = '294276-12-31 23:59:59+00' WHERE id = '53000002';
         UPDATE df.instances SET updated_at = now() + interval '1000 years' WHERE id = '53000003';
         UPDATE df.instances SET updated_at = '-infinity' WHERE id = '53000004';
         UPDATE df.instances SET updated_at = '4713-01-01 00:00:00+00 BC' WHERE id = '53000005';
         UPDATE df.instances SET updated_at = '-infinity' WHERE id = '53000006';",
    )
    .await;

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(df_ids(&c).await, vec!["53000004", "53000005", "53000006"]);
    for id in ["53000001", "53000002", "53000003"] {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id}");
    }
    assert_eq!(
        engine_ids(&c).await.len(),
        4,
        "53000004, 53000005, 53000006 and its child"
    );
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert_eq!(report.expired_removed.cancelled, 1);
    assert_eq!(report.capped_removed, 0);
    assert!(violations(&c).await.is_empty());
}

/// `completed_at` is in pg_durable's INSERT grant: a user can insert a terminal row whose
/// completion time is infinitely old or infinitely new.
async fn seed_infinite_completion_times(db: &TestDb) {
    let c = db.client().await;
    let user = ordinary_user(db, "inserter").await;
    for (id, age) in [
        ("54000001", 60.0 * DAY),
        ("54000002", 60.0 * DAY),
        ("54000003", DAY),
        ("54000004", 2.0 * DAY),
    ] {
        workflow_of(
            &c,
            id,
            "completed",
            Some("Completed"),
            age,
            Some(age),
            0,
            1,
            &user,
        )
        .await;
    }
    // As superuser only because the fixture writes the rows; the values are what the
    // INSERT grant lets the user choose.
    exec(
        &c,
        "UPDATE df.instances SET completed_at = '-infinity' WHERE id IN ('54000001', '54000003');
         UPDATE df.instances SET completed_at = 'infinity' WHERE id IN ('54000002', '54000004');",
    )
    .await;
}

#[tokio::test]
async fn infinite_completion_times_expire_or_stay_by_the_window() {
    let db = TestDb::new().await;
    seed_infinite_completion_times(&db).await;
    let c = db.client().await;

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(
        df_ids(&c).await,
        vec!["54000002", "54000004"],
        "+infinity never expires"
    );
    assert_eq!(
        report.expired_removed.completed, 2,
        "-infinity is older than any window"
    );
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn infinite_completion_times_at_the_hard_cap_edge() {
    let db = TestDb::new().await;
    seed_infinite_completion_times(&db).await;
    let c = db.client().await;
    // Newest first: 54000004, 54000002 (+infinity), then 54000003, 54000001 (-infinity).
    // With a cap of 2 the edge row, which the pass reads and binds as a parameter of
    // every batch, is a -infinity one. (The rows beyond it are older than any window, so
    // they count as expired, not capped.)
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 2;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["54000002", "54000004"]);
    assert_eq!(report.expired_removed.completed, 2);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn infinite_completion_times_in_the_deletions_audit() {
    let db = TestDb::new().await;
    seed_infinite_completion_times(&db).await;
    let c = db.client().await;
    let mut cfg = config_for(&db);
    cfg.audit.record_deletions = true;
    {
        let pool = df_reconciler_core::db::build_pool(&cfg).unwrap();
        let mut client = pool.get().await.unwrap();
        df_reconciler_core::audit::migrate(&mut client, &cfg.audit)
            .await
            .expect("migrate");
    }

    let report = bounded_pass(&cfg).await;

    assert_eq!(report.expired_removed.completed, 2);
    assert_eq!(df_ids(&c).await, vec!["54000002", "54000004"]);
    let recorded = ids(
        &c,
        "SELECT instance_id || ' ' || terminal_at::text FROM df_reconciler.deletions ORDER BY 1",
    )
    .await;
    assert_eq!(recorded, vec!["54000001 -infinity", "54000003 -infinity"]);
}

// ---------------------------------------------------------------------------------------
// NULLs where a value is expected
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn null_status_rows_are_never_touched_nor_taken_for_orphans() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // status is nullable in pg_durable (default 'pending', CHECK lets NULL through).
    workflow(
        &c,
        "55000001",
        "completed",
        Some("Completed"),
        400.0 * DAY,
        Some(400.0 * DAY),
        1,
    )
    .await;
    workflow(
        &c,
        "55000002",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        Some(400.0 * DAY),
        0,
    )
    .await;
    workflow(&c, "55000003", "cancelled", None, 400.0 * DAY, None, 0).await;
    workflow(
        &c,
        "55000004",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    exec(
        &c,
        "UPDATE df.instances SET status = NULL WHERE id <> '55000004'",
    )
    .await;
    let before = engine_set(&c).await;

    for hard_cap in [10_000, 0] {
        let mut cfg = config_for(&db);
        cfg.retention.hard_cap = hard_cap;
        let report = bounded_pass(&cfg).await;
        assert_eq!(
            df_ids(&c).await,
            vec!["55000001", "55000002", "55000003"],
            "hard_cap {hard_cap}"
        );
        assert_eq!(
            report.orphans_reclaimed, 0,
            "a NULL-status row still owns its tree"
        );
        assert_eq!(report.running_without_df_row, 0);
        assert_eq!(report.skipped_unsettled + report.skipped_inconsistent, 0);
    }
    let mut expected = before;
    expected.remove("55000004");
    assert_eq!(engine_set(&c).await, expected);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn unknown_terminal_time_is_kept_even_over_the_hard_cap() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // terminal_at = coalesce(df.completed_at, engine completed_at, df.created_at): all NULL.
    workflow(&c, "56000001", "cancelled", None, 400.0 * DAY, None, 0).await;
    workflow(
        &c,
        "56000002",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        None,
        1,
    )
    .await;
    workflow(
        &c,
        "56000003",
        "cancelled",
        Some("Running"),
        400.0 * DAY,
        None,
        0,
    )
    .await;
    // created_at NULL too, but a completion time is known: these age normally.
    workflow(
        &c,
        "56000004",
        "completed",
        Some("Completed"),
        400.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "56000005",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "56000006",
        "failed",
        Some("Failed"),
        400.0 * DAY,
        Some(DAY),
        0,
    )
    .await;
    exec(&c, "UPDATE df.instances SET created_at = NULL").await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM df.instances WHERE completed_at IS NULL AND created_at IS NULL"
        )
        .await,
        5
    );

    let report = bounded_pass(&config_for(&db)).await;
    assert_eq!(
        df_ids(&c).await,
        vec!["56000001", "56000002", "56000003", "56000006"]
    );
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert!(violations(&c).await.is_empty());

    // Unknown counts as newest for the cap: with room for one, the known one goes.
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 1;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["56000001", "56000002", "56000003"]);
    assert_eq!(report.capped_removed, 1);
    // And with no room at all, unknown still means keep.
    cfg.retention.hard_cap = 0;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["56000001", "56000002", "56000003"]);
    assert_eq!(report.instances_removed(), 0);
    assert_eq!(
        engine_ids(&c).await.len(),
        3,
        "56000002, its child, 56000003"
    );
    assert!(violations(&c).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Ids of every shape
// ---------------------------------------------------------------------------------------

/// Engine ids with no child shape: old terminal orphans, each must be reclaimed exactly.
fn root_shaped_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "ABCDEF01",
        "ünïcødé-根-🦀",
        "it's \"quoted\"",
        "%",
        "_",
        "a%b_c",
        " spaced id ",
        "back\\slash",
        "new\nline\ttab",
        "a::b",
        "::::",
        "a::x1::b",
        "a::1",
        "a::١::b", // Arabic-Indic digit: not an ASCII digit, for Rust and SQL alike
        "SUB::3",
        "subway",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push(format!("long-{}", "0123456789abcdef".repeat(125)));
    ids
}

/// Child-shaped ids without a parent link: not roots, never deleted on their own.
const CHILD_SHAPED_IDS: [&str; 5] = ["sub::3", "x::sub::1", "a::12::b", "::1::", "q::7::"];

#[tokio::test]
async fn unusual_engine_ids_are_matched_exactly() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let roots = root_shaped_ids();
    for (i, id) in roots.iter().enumerate() {
        // Every third one with a child, whose composed id embeds the odd one.
        orphan(
            &c,
            id,
            "Failed",
            60.0 * DAY,
            60.0 * DAY,
            i32::from(i % 3 == 0),
        )
        .await;
    }
    for id in CHILD_SHAPED_IDS {
        orphan(&c, id, "Failed", 60.0 * DAY, 60.0 * DAY, 0).await;
    }
    // Bystanders a pattern match (LIKE '%', '_', case folding) would take along: young
    // orphans, and a live workflow differing only in case from an orphan.
    orphan(&c, "young-%-x", "Failed", 600.0, 300.0, 0).await;
    orphan(&c, "y", "Completed", 600.0, 300.0, 0).await;
    workflow(
        &c,
        "abcdef01",
        "running",
        Some("Running"),
        60.0 * DAY,
        None,
        1,
    )
    .await;
    let children: BTreeSet<String> = ids(
        &c,
        "SELECT instance_id FROM _duroxide.instances WHERE parent_instance_id IS NOT NULL",
    )
    .await
    .into_iter()
    .filter(|id| !id.starts_with("abcdef01"))
    .collect();
    assert_eq!(children.len(), 6);
    assert!(violations(&c).await.is_empty());

    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 3; // keyset paging over odd ids, across several batches
    let report = bounded_pass(&cfg).await;

    for id in &roots {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id:?} reclaimed entirely");
    }
    for id in &children {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id:?} went with its root");
    }
    let mut survivors = set(&CHILD_SHAPED_IDS);
    survivors.extend(set(&["young-%-x", "y"]));
    survivors.extend(tree_of(&c, "abcdef01").await);
    assert_eq!(engine_set(&c).await, survivors);
    assert_eq!(df_ids(&c).await, vec!["abcdef01"]);
    for id in CHILD_SHAPED_IDS {
        assert_eq!(rows_exactly(&c, id).await, 9, "{id:?} whole: 1+1+6+1 rows");
    }
    assert_eq!(report.orphans_reclaimed, roots.len() as u64);
    assert_eq!(report.orphans_by_status.failed, roots.len() as u64);
    assert_eq!(report.engine_children_removed, children.len() as u64);
    assert_eq!(report.orphans_waiting, 2, "the two young ones");
    assert!(violations(&c).await.is_empty());
    // Idempotent on odd ids too.
    assert_eq!(bounded_pass(&cfg).await.instances_removed(), 0);
}

#[tokio::test]
async fn unusual_df_ids_are_matched_exactly() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // df ids are varchar(8) with no shape check: 8 characters of anything.
    let expired = ["ABCDEF01", "a%b_c d ", "o'q\"x\\y ", "ü%_ 🦀;--", "a::1::b"];
    for id in expired {
        workflow(
            &c,
            id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(60.0 * DAY),
            1,
        )
        .await;
    }
    // Young bystanders every pattern above would match.
    for id in ["abcdef01", "aXbYc d ", "o'q\"x\\yz", "üx_ 🦀;--"] {
        workflow(&c, id, "completed", Some("Completed"), DAY, Some(DAY), 1).await;
    }
    assert!(violations(&c).await.is_empty());

    let report = bounded_pass(&config_for(&db)).await;

    for id in &expired[..4] {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id:?} went whole");
    }
    // A df row whose engine record has a child shape: the engine record is not a root,
    // so nothing of it may go (counted as inconsistent).
    assert!(rows_exactly(&c, "a::1::b").await > 0);
    assert_eq!(report.skipped_inconsistent, 1);
    let mut kept = vec!["a::1::b", "abcdef01", "aXbYc d ", "o'q\"x\\yz", "üx_ 🦀;--"];
    kept.sort_unstable();
    let mut after = df_ids(&c).await;
    after.sort_unstable();
    assert_eq!(after, kept);
    assert_eq!(report.expired_removed.completed, 4);
    assert_eq!(report.engine_children_removed, 4);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn an_empty_id_is_reclaimed_like_any_other() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // An expired df row with id '' (varchar(8) allows it) and its engine tree.
    workflow(&c, "", "cancelled", Some("Failed"), 60.0 * DAY, None, 1).await;
    let report = bounded_pass(&config_for(&db)).await;
    assert!(df_ids(&c).await.is_empty(), "the expired df row ''");
    assert!(engine_ids(&c).await.is_empty(), "its tree: '' and '::1::…'");
    assert_eq!(report.expired_removed.cancelled, 1);
    // An old orphan engine root with id ''.
    orphan(&c, "", "Failed", 60.0 * DAY, 60.0 * DAY, 1).await;
    let report = bounded_pass(&config_for(&db)).await;
    assert!(
        engine_ids(&c).await.is_empty(),
        "the orphan '' and its child"
    );
    assert_eq!(report.orphans_reclaimed, 1);
}

// ---------------------------------------------------------------------------------------
// Broken and cyclic parent links
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn children_whose_parent_is_gone_are_never_deleted_alone() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // An old orphan tree 3 levels deep whose root was removed by hand: every level left
    // has lost its root; the first level has lost its parent.
    c.execute(
        "SELECT df_fixture.orphan_root('57000001', 'Failed', now() - interval '90 days',
                now() - interval '90 days', children => 2, depth => 3)",
        &[],
    )
    .await
    .unwrap();
    exec(
        &c,
        "DELETE FROM _duroxide.executions WHERE instance_id = '57000001';
         DELETE FROM _duroxide.history WHERE instance_id = '57000001';
         DELETE FROM _duroxide.kv_store WHERE instance_id = '57000001';
         DELETE FROM _duroxide.instances WHERE instance_id = '57000001';",
    )
    .await;
    // An expired df row whose engine root is gone but whose children are still there.
    workflow(
        &c,
        "57000002",
        "completed",
        Some("Completed"),
        90.0 * DAY,
        Some(90.0 * DAY),
        2,
    )
    .await;
    exec(
        &c,
        "DELETE FROM _duroxide.executions WHERE instance_id = '57000002';
         DELETE FROM _duroxide.history WHERE instance_id = '57000002';
         DELETE FROM _duroxide.kv_store WHERE instance_id = '57000002';
         DELETE FROM _duroxide.instances WHERE instance_id = '57000002';",
    )
    .await;
    // A chain whose first level is gone: the root is whole, the two levels below hang in
    // the air.
    c.execute(
        "SELECT df_fixture.orphan_root('57000003', 'Completed', now() - interval '90 days',
                now() - interval '90 days', children => 1, depth => 3)",
        &[],
    )
    .await
    .unwrap();
    let middle: String = c
        .query_one(
            "SELECT instance_id FROM _duroxide.instances WHERE parent_instance_id = '57000003'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for table in ["executions", "history", "kv_store", "instances"] {
        c.execute(
            &format!("DELETE FROM _duroxide.{table} WHERE instance_id = $1"),
            &[&middle],
        )
        .await
        .unwrap();
    }
    let stranded: BTreeSet<String> = engine_set(&c)
        .await
        .into_iter()
        .filter(|id| id != "57000003")
        .collect();
    assert_eq!(
        stranded.len(),
        6 + 2 + 2,
        "57000001's six, 57000002's two, 57000003's lower two"
    );
    let broken_before = violations(&c).await;
    assert!(!broken_before.is_empty(), "the population starts broken");

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(
        engine_set(&c).await,
        stranded,
        "only 57000003 (now a lone root) went"
    );
    assert!(
        df_ids(&c).await.is_empty(),
        "57000002 has no engine record: df rows go alone"
    );
    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(report.engine_children_removed, 0);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(violations(&c).await, broken_before, "nothing new broken");
    assert_eq!(bounded_pass(&config_for(&db)).await.instances_removed(), 0);
    assert_eq!(
        engine_set(&c).await,
        stranded,
        "stranded children stay, pass after pass"
    );
}

/// Points `child`'s parent link at `parent`.
async fn link(c: &Client, child: &str, parent: &str) {
    c.execute(
        "UPDATE _duroxide.instances SET parent_instance_id = $2 WHERE instance_id = $1",
        &[&child, &parent],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn cycles_in_parent_links_end_the_pass_and_only_reachable_trees_go() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let old = 90.0 * DAY;
    // a -> b -> a with no root anywhere, and a self-loop.
    orphan(&c, "58cyc-a", "Failed", old, old, 0).await;
    orphan(&c, "58cyc-b", "Failed", old, old, 0).await;
    link(&c, "58cyc-a", "58cyc-b").await;
    link(&c, "58cyc-b", "58cyc-a").await;
    orphan(&c, "58self", "Completed", old, old, 0).await;
    link(&c, "58self", "58self").await;
    // A real orphan root with a chain below it, and a cycle whose ids claim to belong to
    // it (x -> y -> z -> x). Every instance has ONE parent link and a root has none, so no
    // cycle can be reachable downwards from a root: the tree expansion (UNION, so it would
    // end anyway) takes the root's real descendants and leaves the cycle.
    c.execute(
        "SELECT df_fixture.orphan_root('58000001', 'Failed', now() - interval '90 days',
                now() - interval '90 days', children => 2, depth => 2)",
        &[],
    )
    .await
    .unwrap();
    for n in ["x", "y", "z"] {
        orphan(&c, &format!("58000001::1::{n}"), "Failed", old, old, 0).await;
    }
    link(&c, "58000001::1::x", "58000001::1::z").await;
    link(&c, "58000001::1::y", "58000001::1::x").await;
    link(&c, "58000001::1::z", "58000001::1::y").await;
    // A child hanging below the cycle.
    orphan(&c, "58000001::1::x::1::w", "Failed", old, old, 0).await;
    link(&c, "58000001::1::x::1::w", "58000001::1::x").await;
    // Expired df rows whose engine records sit in cycles: their engine record is not a
    // root, so the df row cannot be deleted without leaving (or guessing) engine rows.
    workflow(
        &c,
        "58000002",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        0,
    )
    .await;
    workflow(&c, "58000003", "failed", Some("Failed"), old, Some(old), 0).await;
    link(&c, "58000002", "58000003").await;
    link(&c, "58000003", "58000002").await;
    workflow(
        &c,
        "58000004",
        "cancelled",
        Some("Failed"),
        old,
        Some(old),
        0,
    )
    .await;
    link(&c, "58000004", "58000004").await;
    let reachable = tree_of(&c, "58000001").await;
    assert_eq!(reachable.len(), 5, "root + 2 branches of 2");
    let everything = engine_set(&c).await;

    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 2;
    let report = bounded_pass(&cfg).await;

    let expected: BTreeSet<String> = everything.difference(&reachable).cloned().collect();
    assert_eq!(
        engine_set(&c).await,
        expected,
        "exactly the reachable tree went"
    );
    assert_eq!(df_ids(&c).await, vec!["58000002", "58000003", "58000004"]);
    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(report.engine_children_removed, 4);
    assert_eq!(report.skipped_inconsistent, 3);
    assert_eq!(report.expired_removed.total(), 0);

    // Dry run and a second pass terminate on the same cycles and change nothing.
    let dry = tokio::time::timeout(PASS_BOUND, pass(&cfg, true))
        .await
        .expect("dry run ends");
    assert_eq!(dry.instances_removed(), 0);
    assert_eq!(dry.skipped_inconsistent, 3);
    assert_eq!(bounded_pass(&cfg).await.instances_removed(), 0);
    assert_eq!(engine_set(&c).await, expected);
}

// ---------------------------------------------------------------------------------------
// A df row without its root node
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn df_rows_missing_their_root_node_or_every_node_are_handled() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // The deferred FK df.instances (id, root_node) -> df.nodes makes such a row impossible
    // to commit: drop it in this database only, found by its shape in pg_catalog.
    let fk: String = c
        .query_one(
            "SELECT conname::text FROM pg_constraint
              WHERE conrelid = 'df.instances'::regclass AND contype = 'f'
                AND confrelid = 'df.nodes'::regclass",
            &[],
        )
        .await
        .expect("the instances -> nodes foreign key exists")
        .get(0);
    exec(
        &c,
        &format!("ALTER TABLE df.instances DROP CONSTRAINT {fk}"),
    )
    .await;
    // Expired, root node gone (the JOIN at ordinal 0; nothing else points at it).
    workflow(
        &c,
        "59000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        2,
    )
    .await;
    // Expired, no node at all.
    workflow(
        &c,
        "59000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    // Live, root node gone.
    workflow(
        &c,
        "59000003",
        "running",
        Some("Running"),
        60.0 * DAY,
        None,
        2,
    )
    .await;
    exec(
        &c,
        "DELETE FROM df.nodes n USING df.instances d
          WHERE n.instance_id = d.id AND n.id = d.root_node AND d.id IN ('59000001', '59000003');
         DELETE FROM df.nodes WHERE instance_id = '59000002';",
    )
    .await;
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM df.instances d WHERE NOT EXISTS (
                     SELECT 1 FROM df.nodes n WHERE n.instance_id = d.id AND n.id = d.root_node)"
        )
        .await,
        3
    );

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(df_ids(&c).await, vec!["59000003"]);
    assert_eq!(rows_exactly(&c, "59000001").await, 0);
    assert_eq!(rows_exactly(&c, "59000002").await, 0);
    assert_eq!(tree_of(&c, "59000003").await.len(), 3);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert_eq!(report.engine_children_removed, 2);
    assert!(violations(&c).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Size and time
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_huge_tree_goes_whole_in_one_batch() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // An expired workflow whose engine tree has 3000 sub-orchestrations, each two levels
    // deep (6001 engine instances, ~42,000 rows), and an orphan that is one chain 300
    // levels deep. The df graph is kept small here (see the next test for a big one).
    exec(
        &c,
        "SELECT df_fixture.workflow('5a000001', 'completed', NULL, now() - interval '60 days',
                now() - interval '60 days');
         SELECT df_fixture.engine_tree('5a000001', 'Completed', now() - interval '60 days',
                now() - interval '60 days', 3000, 2, 1, true);
         SELECT df_fixture.orphan_root('5a000002', 'Failed', now() - interval '60 days',
                now() - interval '60 days', children => 1, depth => 300);
         SELECT df_fixture.workflow('5a000003', 'completed', 'Completed', now() - interval '1 day',
                now() - interval '1 day', children => 2);",
    )
    .await;
    assert_eq!(tree_of(&c, "5a000001").await.len(), 6001);
    assert_eq!(tree_of(&c, "5a000002").await.len(), 301);
    let history = count(&c, "SELECT count(*) FROM _duroxide.history").await;
    assert!(violations(&c).await.is_empty());

    // One root per batch: each tree is still one transaction, whatever its size.
    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 1;
    let began = Instant::now();
    let report = bounded_pass(&cfg).await;
    let took = began.elapsed();

    assert_eq!(df_ids(&c).await, vec!["5a000003"]);
    assert_eq!(engine_set(&c).await, tree_of(&c, "5a000003").await);
    assert_eq!(report.batches, 2, "one batch per tree");
    assert_eq!(report.batches_abandoned, 0);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.orphans_reclaimed, 1);
    assert_eq!(report.engine_children_removed, 6000 + 300);
    assert_eq!(report.rows_deleted["_duroxide.instances"], 6001 + 301);
    assert_eq!(report.rows_deleted["_duroxide.worker_queue"], 6001);
    assert_eq!(
        report.rows_deleted["_duroxide.history"],
        history as u64 - 3 * 6
    );
    assert!(violations(&c).await.is_empty());
    eprintln!("6001 + 301 engine instances deleted in {took:?}");
}

/// A workflow whose df graph is big: 1000 branches two levels deep, 3999 nodes, 2001
/// engine instances.
async fn seed_big_graph(c: &Client, id: &str) {
    c.execute(
        "SELECT df_fixture.workflow($1, 'completed', 'Completed', now() - interval '60 days',
                now() - interval '60 days', children => 1000, depth => 2)",
        &[&id],
    )
    .await
    .unwrap();
}

/// pg_durable has no index on df.nodes (instance_id, left_node) or (instance_id,
/// right_node), the referencing side of the two deferred self-referencing foreign keys: at
/// COMMIT each deleted node's check scans every node of its instance, so deleting one
/// instance costs O(nodes^2) (measured: 1000 branches 3.4 s, 2000 15.5 s, 3000 45 s; with
/// both indexes 3000 branches take 0.6 s).
#[tokio::test]
async fn a_big_df_graph_goes_whole_in_one_batch() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_big_graph(&c, "5d000001").await;
    let nodes = count(&c, "SELECT count(*) FROM df.nodes").await;
    assert!(nodes > 3000, "{nodes}");

    let began = Instant::now();
    let report = bounded_pass(&config_for(&db)).await;
    let took = began.elapsed();

    assert!(df_ids(&c).await.is_empty());
    assert!(engine_ids(&c).await.is_empty());
    assert_eq!(report.batches, 1);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.engine_children_removed, 2000);
    assert_eq!(report.rows_deleted["df.nodes"], nodes as u64);
    assert!(violations(&c).await.is_empty());
    eprintln!("{nodes} nodes of one instance deleted in {took:?}");
}

/// The deferred foreign-key checks run inside COMMIT, and PostgreSQL disarms
/// statement_timeout before it commits: the batch's server-side bound does not cover
/// them. Here a 300 ms statement_timeout does not stop a ~3 s COMMIT. Beyond the
/// client-side bound (2 x statement_timeout + 5 s) the pass fails while the server still
/// commits. `SET CONSTRAINTS ALL IMMEDIATE` as the batch's last statement would run the
/// checks under the timeout.
#[tokio::test]
async fn a_batch_commit_is_bounded_by_the_statement_timeout() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_big_graph(&c, "5e000001").await;
    workflow(
        &c,
        "5e000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    let before = rows_exactly(&c, "5e000001").await;
    let tree = tree_of(&c, "5e000001").await;

    let mut cfg = config_for(&db);
    cfg.pass.statement_timeout = Duration::from_millis(300);
    cfg.pass.batch_size = 1;
    let report = bounded_pass(&cfg).await;

    assert_eq!(
        rows_exactly(&c, "5e000001").await,
        before,
        "rolled back whole"
    );
    assert_eq!(tree_of(&c, "5e000001").await, tree);
    assert_eq!(df_ids(&c).await, vec!["5e000001"], "the small one went");
    assert_eq!(report.batches_abandoned, 1);
    assert_eq!(report.expired_removed.failed, 1);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn timestamps_in_the_future_never_expire() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Created and finished next year.
    workflow(
        &c,
        "5b000001",
        "completed",
        Some("Completed"),
        -YEAR,
        Some(-YEAR - DAY),
        1,
    )
    .await;
    workflow(&c, "5b000002", "cancelled", None, -YEAR, None, 0).await;
    // Created long ago, finished (by the engine's clock) next year.
    workflow(
        &c,
        "5b000003",
        "failed",
        Some("Failed"),
        90.0 * DAY,
        Some(-YEAR),
        0,
    )
    .await;
    // Orphans from the future, and an old one whose completion lies in the future.
    orphan(&c, "5b000004", "Failed", -YEAR, -YEAR, 1).await;
    orphan(&c, "5b000005", "Completed", 90.0 * DAY, -YEAR, 0).await;
    // A row that expires in the ordinary way, and one that is merely young.
    workflow(
        &c,
        "5b000006",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        0,
    )
    .await;
    workflow(
        &c,
        "5b000007",
        "completed",
        Some("Completed"),
        2.0 * DAY,
        Some(2.0 * DAY),
        0,
    )
    .await;
    let future_engine: BTreeSet<String> = engine_set(&c)
        .await
        .into_iter()
        .filter(|id| !id.starts_with("5b000006") && !id.starts_with("5b000007"))
        .collect();

    let report = bounded_pass(&config_for(&db)).await;
    assert_eq!(
        df_ids(&c).await,
        vec!["5b000001", "5b000002", "5b000003", "5b000007"]
    );
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(report.orphans_reclaimed, 0);
    assert_eq!(report.orphans_waiting, 2, "the future orphans wait");
    assert!(violations(&c).await.is_empty());

    // For the hard cap the future is newest: with room for three, the young row from the
    // past is the one over the cap.
    let mut cfg = config_for(&db);
    cfg.retention.hard_cap = 3;
    let report = bounded_pass(&cfg).await;
    assert_eq!(df_ids(&c).await, vec!["5b000001", "5b000002", "5b000003"]);
    assert_eq!(report.capped_removed, 1);
    let mut expected = future_engine;
    expected.retain(|id| !id.starts_with("5b000007"));
    assert_eq!(engine_set(&c).await, expected);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn unknown_engine_statuses_and_missing_executions_mean_keep() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let old = 60.0 * DAY;
    // Expired df rows whose engine root has a status we do not know, or whose current
    // execution does not exist.
    workflow(
        &c,
        "5c000001",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        1,
    )
    .await;
    workflow(&c, "5c000002", "failed", Some("Failed"), old, Some(old), 0).await;
    // Orphans alike.
    orphan(&c, "5c000003", "Completed", old, old, 1).await;
    orphan(&c, "5c000004", "Failed", old, old, 0).await;
    // A control that goes.
    workflow(
        &c,
        "5c000005",
        "completed",
        Some("Completed"),
        old,
        Some(old),
        0,
    )
    .await;
    exec(
        &c,
        "UPDATE _duroxide.executions SET status = 'Suspended' WHERE instance_id IN ('5c000001', '5c000003');
         UPDATE _duroxide.instances SET current_execution_id = 7 WHERE instance_id IN ('5c000002', '5c000004');",
    )
    .await;
    let before = engine_set(&c).await;

    let report = bounded_pass(&config_for(&db)).await;

    assert_eq!(df_ids(&c).await, vec!["5c000001", "5c000002"]);
    let mut expected = before;
    expected.remove("5c000005");
    assert_eq!(engine_set(&c).await, expected);
    assert_eq!(report.expired_removed.completed, 1);
    assert_eq!(
        report.skipped_unsettled, 2,
        "unknown engine state of a df-owned root"
    );
    assert_eq!(report.orphans_reclaimed, 0);
    assert_eq!(
        report.running_without_df_row, 0,
        "unknown is not Running either"
    );
    assert!(violations(&c).await.is_empty());
}
