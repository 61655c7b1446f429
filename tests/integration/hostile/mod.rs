//! Hostile and odd data: what users may legally write through their column grants
//! (`status`, `updated_at`, inserted `completed_at`), what a damaged or unusual store may
//! hold (NULLs where a value is expected, ids of every shape, broken and cyclic parent
//! links, a df row without its root node, huge trees, timestamps in the future), and what
//! the pass makes of it. Every test asserts on the database state AND on the report: the
//! pass terminates, deletes only what the rules allow (whole trees, both stores), and
//! counts what it skipped.
//!
//! - [`user_writes`]: status flips, `updated_at` anywhere in time, infinite completion
//!   times;
//! - [`unknowns`]: NULL status, unknown terminal time, unknown engine status or a missing
//!   execution: all mean keep;
//! - [`ids`]: engine and df ids of every shape, matched exactly;
//! - [`broken_links`]: children whose parent is gone, cycles of parent links, df rows
//!   missing their root node;
//! - [`size_and_time`]: huge engine trees and df graphs, the commit under the statement
//!   timeout, timestamps in the future;
//! - [`search_path`]: a role that plants look-alike functions and operators where the
//!   daemon's role would find them (search-path hijacking).

use std::collections::BTreeSet;
use std::time::Duration;

use df_reconciler_core::config::Config;
use df_reconciler_core::report::PassReport;
use tokio_postgres::Client;

use crate::support::db::{engine_ids, exec};
use crate::support::harness::TestDb;
use crate::support::passes::pass;
use crate::support::seed::DAY;

mod broken_links;
mod ids;
mod search_path;
mod size_and_time;
mod unknowns;
mod user_writes;

pub(super) const YEAR: f64 = 365.0 * DAY;

/// Generous bound on one pass over a small population: a pass that loops on hostile data
/// fails the test instead of hanging the suite.
pub(super) const PASS_BOUND: Duration = Duration::from_secs(60);

/// One pass that must succeed and must terminate within [`PASS_BOUND`].
pub(super) async fn bounded_pass(cfg: &Config) -> PassReport {
    tokio::time::timeout(PASS_BOUND, pass(cfg, false))
        .await
        .unwrap_or_else(|_| panic!("the pass did not finish within {PASS_BOUND:?}"))
}

/// A whole workflow like [`workflow`](crate::support::seed::workflow), with the fixture's other knobs: `depth` levels of
/// children and the role that submitted it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn workflow_of(
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

/// Rows of every per-instance table whose id is exactly `id` (no pattern matching: ids
/// here contain `%` and `_`).
pub(super) async fn rows_exactly(c: &Client, id: &str) -> i64 {
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
pub(super) async fn engine_set(c: &Client) -> BTreeSet<String> {
    engine_ids(c).await.into_iter().collect()
}

/// The engine instances reachable from `root` through parent links (root included).
pub(super) async fn tree_of(c: &Client, root: &str) -> BTreeSet<String> {
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

pub(super) fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// An ordinary role of this test (role names are cluster-wide), with what
/// `df.grant_usage` gives it and nothing more (PUBLIC gets nothing): among others, UPDATE
/// of `status` and `updated_at` of its own rows.
pub(super) async fn ordinary_user(db: &TestDb, suffix: &str) -> String {
    let name = format!("{}_{suffix}", db.name);
    exec(
        &db.client().await,
        &format!(
            "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN;
             SELECT df.grant_usage('{name}')"
        ),
    )
    .await;
    name
}

/// A session of its own acting as `role`, e.g. for a user's open transaction (RLS
/// applies: it sees and writes its own rows only).
pub(super) async fn session_as(db: &TestDb, role: &str) -> Client {
    let s = db.client().await;
    exec(&s, &format!("SET ROLE {role}")).await;
    s
}
