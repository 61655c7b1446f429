//! Reading back (and writing by hand) what a test database holds: counts, ids, whole
//! instances, and the consistency of both stores.

use tokio_postgres::Client;

/// Runs `sql` (one or more statements) that must succeed.
pub async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

pub async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// Ids present in df.instances, sorted.
pub async fn df_ids(client: &Client) -> Vec<String> {
    ids(client, "SELECT id::text FROM df.instances ORDER BY 1").await
}

/// Ids present in the engine's instances table, sorted.
pub async fn engine_ids(client: &Client) -> Vec<String> {
    ids(
        client,
        "SELECT instance_id FROM _duroxide.instances ORDER BY 1",
    )
    .await
}

/// The status of each engine instance's current execution, by id, for the instances whose
/// id starts with `prefix`.
pub async fn engine_statuses(client: &Client, prefix: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT ei.instance_id, coalesce(ex.status, '?')
               FROM _duroxide.instances ei
               LEFT JOIN _duroxide.executions ex
                      ON ex.instance_id = ei.instance_id
                     AND ex.execution_id = ei.current_execution_id
              WHERE ei.instance_id LIKE $1 || '%'
              ORDER BY 1",
            &[&prefix],
        )
        .await
        .expect("engine statuses")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub async fn ids(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every row of every per-instance table that mentions `id` (df and engine), for asserting
/// that an instance is entirely present or entirely gone.
pub async fn rows_of(client: &Client, id: &str) -> i64 {
    let like = format!("{id}%");
    let sql = "SELECT
        (SELECT count(*) FROM df.instances WHERE id::text = $1)
      + (SELECT count(*) FROM df.nodes WHERE instance_id::text = $1)
      + (SELECT count(*) FROM _duroxide.instances WHERE instance_id LIKE $2)
      + (SELECT count(*) FROM _duroxide.executions WHERE instance_id LIKE $2)
      + (SELECT count(*) FROM _duroxide.history WHERE instance_id LIKE $2)
      + (SELECT count(*) FROM _duroxide.orchestrator_queue WHERE instance_id LIKE $2)
      + (SELECT count(*) FROM _duroxide.worker_queue WHERE instance_id LIKE $2)
      + (SELECT count(*) FROM _duroxide.instance_locks WHERE instance_id LIKE $2)
      + (SELECT count(*) FROM _duroxide.kv_store WHERE instance_id LIKE $2)
      + (SELECT count(*) FROM _duroxide.kv_delta WHERE instance_id LIKE $2)";
    client
        .query_one(sql, &[&id, &like])
        .await
        .expect("row count")
        .get(0)
}

/// Consistency violations across both stores: half-deleted instances of any kind.
/// Empty means every instance is either fully present or fully gone.
pub async fn violations(client: &Client) -> Vec<String> {
    let checks = [
        (
            "df row without nodes",
            "SELECT count(*) FROM df.instances d WHERE NOT EXISTS (SELECT 1 FROM df.nodes n WHERE n.instance_id = d.id)",
        ),
        (
            "nodes without df row",
            "SELECT count(*) FROM df.nodes n WHERE NOT EXISTS (SELECT 1 FROM df.instances d WHERE d.id = n.instance_id)",
        ),
        (
            "engine child without its parent",
            "SELECT count(*) FROM _duroxide.instances c WHERE c.parent_instance_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM _duroxide.instances p WHERE p.instance_id = c.parent_instance_id)",
        ),
        (
            "execution without instance",
            "SELECT count(*) FROM _duroxide.executions e WHERE NOT EXISTS (SELECT 1 FROM _duroxide.instances i WHERE i.instance_id = e.instance_id)",
        ),
        (
            "history without instance",
            "SELECT count(*) FROM _duroxide.history h WHERE NOT EXISTS (SELECT 1 FROM _duroxide.instances i WHERE i.instance_id = h.instance_id)",
        ),
        (
            "history without its execution",
            "SELECT count(*) FROM _duroxide.history h WHERE NOT EXISTS (SELECT 1 FROM _duroxide.executions e
               WHERE e.instance_id = h.instance_id AND e.execution_id = h.execution_id)",
        ),
        (
            "engine instance without execution",
            "SELECT count(*) FROM _duroxide.instances i WHERE NOT EXISTS (SELECT 1 FROM _duroxide.executions e WHERE e.instance_id = i.instance_id)",
        ),
        (
            "kv without instance",
            "SELECT count(*) FROM _duroxide.kv_store k WHERE NOT EXISTS (SELECT 1 FROM _duroxide.instances i WHERE i.instance_id = k.instance_id)",
        ),
    ];
    let mut found = Vec::new();
    for (what, sql) in checks {
        let n = count(client, sql).await;
        if n > 0 {
            found.push(format!("{what}: {n}"));
        }
    }
    found
}

/// Every per-instance table of both stores, df first, as the fixture names them.
pub const PER_INSTANCE_TABLES: [&str; 10] = [
    "df.instances",
    "df.nodes",
    "_duroxide.instances",
    "_duroxide.executions",
    "_duroxide.history",
    "_duroxide.orchestrator_queue",
    "_duroxide.worker_queue",
    "_duroxide.instance_locks",
    "_duroxide.kv_store",
    "_duroxide.kv_delta",
];

/// Row counts of `tables`, in order, for asserting that nothing was written.
pub async fn table_counts(c: &Client, tables: &[&str]) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in tables {
        counts.push(count(c, &format!("SELECT count(*) FROM {table}")).await);
    }
    counts
}
