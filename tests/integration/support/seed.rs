//! Seeding test databases with the `df_fixture` functions: whole workflows, orphan engine
//! trees, bulk backlogs. Ages are seconds before now, as `f64`.

use tokio_postgres::Client;

use super::harness::TestDb;

pub const HOUR: f64 = 3_600.0;
pub const DAY: f64 = 86_400.0;

/// A whole workflow: df rows, nodes and (unless `engine_status` is None) an engine tree.
/// Ages are seconds before now; `finished` None leaves completion times NULL.
pub async fn workflow(
    c: &Client,
    id: &str,
    df_status: &str,
    engine_status: Option<&str>,
    created_ago: f64,
    finished_ago: Option<f64>,
    children: i32,
) {
    c.execute(
        "SELECT df_fixture.workflow($1, $2, $3, now() - make_interval(secs => $4),
                now() - make_interval(secs => $5), $6)",
        &[
            &id,
            &df_status,
            &engine_status,
            &created_ago,
            &finished_ago,
            &children,
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("seeding workflow {id}: {e:?}"));
}

/// An engine tree with no df row.
pub async fn orphan(
    c: &Client,
    id: &str,
    engine_status: &str,
    created_ago: f64,
    finished_ago: f64,
    children: i32,
) {
    c.execute(
        "SELECT df_fixture.orphan_root($1, $2, now() - make_interval(secs => $3),
                now() - make_interval(secs => $4), $5)",
        &[&id, &engine_status, &created_ago, &finished_ago, &children],
    )
    .await
    .unwrap_or_else(|e| panic!("seeding orphan {id}: {e:?}"));
}

/// A cancellation request for engine instance `id`, queued `requested_ago` seconds ago:
/// what `df.cancel()` enqueues before it updates the df row. The instance stays live.
pub async fn request_cancel(c: &Client, id: &str, requested_ago: f64) {
    c.execute(
        "SELECT df_fixture.request_cancel($1, now() - make_interval(secs => $2))",
        &[&id, &requested_ago],
    )
    .await
    .unwrap_or_else(|e| panic!("requesting the cancellation of {id}: {e:?}"));
}

/// The engine ends live instance `id` now, in `engine_status` (Completed or Failed): a
/// Running current execution ends; one between generations starts its queued generation,
/// which ends at once. Its pending ContinueAsNew and CancelInstance items are consumed.
pub async fn finish_instance(c: &Client, id: &str, engine_status: &str) {
    c.execute(
        "SELECT df_fixture.finish_instance($1, $2)",
        &[&id, &engine_status],
    )
    .await
    .unwrap_or_else(|e| panic!("finishing {id}: {e:?}"));
}

/// `df_fixture.backlog(n)`: `n` roots of every kind, mostly expired (see
/// seed_functions.sql), set-based and fast.
pub async fn backlog(c: &Client, n: i32) {
    c.execute("SELECT df_fixture.backlog($1)", &[&n])
        .await
        .unwrap_or_else(|e| panic!("seeding a backlog of {n}: {e:?}"));
}

/// Deletable rows (an expired workflow with a child, an old orphan), so that a run that
/// should do nothing visibly did nothing.
pub async fn seed_deletable(db: &TestDb) {
    let c = db.client().await;
    workflow(
        &c,
        "70000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    orphan(&c, "70000002", "Failed", 60.0 * DAY, 60.0 * DAY, 0).await;
}
