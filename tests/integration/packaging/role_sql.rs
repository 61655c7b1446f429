//! deploy/sql/reconciler-role.sql: the least-privileged role, applied to a test database,
//! grants what a pass needs and nothing more, serves the legacy engine schema, and cannot
//! reconcile without BYPASSRLS.

use df_reconciler_core::config::{Config, SecretString};
use df_reconciler_core::error::{exit_code, Error};

use super::read;
use crate::support::db::{count, df_ids, engine_ids, rows_of};
use crate::support::harness::TestDb;
use crate::support::passes::{pass, try_pass};
use crate::support::seed::{orphan, workflow, DAY};

/// deploy/sql/reconciler-role.sql as plain SQL: the psql meta-commands (the variable
/// defaults) dropped and the variables substituted, as psql would.
pub(crate) fn role_sql(role: &str, engine_schema: &str) -> String {
    let mut sql: String = read("deploy/sql/reconciler-role.sql")
        .lines()
        .filter(|line| !line.trim_start().starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    for (name, value) in [
        ("role", role),
        ("control_schema", "df"),
        ("engine_schema", engine_schema),
        ("audit_schema", "df_reconciler"),
    ] {
        sql = sql
            .replace(&format!(":\"{name}\""), &format!("\"{value}\""))
            .replace(&format!(":'{name}'"), &format!("'{value}'"));
    }
    assert!(
        !sql.contains(":\"") && !sql.contains(":'"),
        "a psql variable the test does not know:\n{sql}"
    );
    sql
}

/// Applies the role SQL for a role unique to `db` (roles are cluster-wide) and returns the
/// role's name and a configuration connecting as it.
async fn apply_role_sql(db: &TestDb, engine_schema: &str) -> (String, Config) {
    let role = format!("{}_rec", db.name);
    db.client()
        .await
        .batch_execute(&role_sql(&role, engine_schema))
        .await
        .unwrap_or_else(|e| panic!("reconciler-role.sql: {e:?}"));
    let mut cfg = Config::default();
    cfg.database.url = Some(SecretString::new(db.dsn.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}@"),
        1,
    )));
    (role, cfg)
}

async fn seed_mix(db: &TestDb) {
    let c = db.client().await;
    // Expired with a child: goes. Young: stays. Running: stays. Old orphan: goes.
    workflow(
        &c,
        "50000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    workflow(&c, "50000002", "failed", Some("Failed"), DAY, Some(DAY), 0).await;
    workflow(
        &c,
        "50000003",
        "running",
        Some("Running"),
        90.0 * DAY,
        None,
        1,
    )
    .await;
    orphan(&c, "50000004", "Failed", 60.0 * DAY, 60.0 * DAY, 1).await;
}

#[tokio::test]
async fn the_role_sql_grants_what_a_pass_needs_and_no_more() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    let (role, cfg) = apply_role_sql(&db, "_duroxide").await;
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT rolcanlogin, rolbypassrls, rolsuper, rolcreatedb, rolcreaterole,
                    pg_has_role(oid, 'pg_read_all_stats', 'USAGE')
             FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let flags: [bool; 6] = std::array::from_fn(|i| row.get(i));
    assert_eq!(flags, [true, true, false, false, false, true], "{role}");

    let report = pass(&cfg, false).await;
    assert_eq!(report.instances_removed(), 2, "{report}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(df_ids(&c).await, ["50000002", "50000003"]);
    assert_eq!(rows_of(&c, "50000001").await, 0);
    assert_eq!(rows_of(&c, "50000004").await, 0);
    let engine = engine_ids(&c).await;
    assert!(
        engine
            .iter()
            .all(|id| id.starts_with("50000002") || id.starts_with("50000003")),
        "{engine:?}"
    );

    // No more than that: as the role, anything outside the grants is refused.
    let as_role =
        crate::support::harness::connect(cfg.database.url.as_ref().unwrap().expose()).await;
    for statement in [
        "DELETE FROM _duroxide.sessions",
        "DELETE FROM _duroxide._duroxide_migrations",
        // (df.grant_usage gives a user UPDATE on status and updated_at; never completed_at.)
        "UPDATE df.instances SET completed_at = now()",
        "UPDATE _duroxide.executions SET status = 'Failed'",
        "INSERT INTO df.vars (owner, name) VALUES ('postgres', 'x')",
        "CREATE TABLE df.intruder (x int)",
        "DROP TABLE _duroxide.history",
    ] {
        let err = as_role.batch_execute(statement).await.expect_err(statement);
        let code = err.code().map(|c| c.code().to_owned());
        assert!(
            matches!(code.as_deref(), Some("42501") | Some("42P01")),
            "{statement}: {err:?}"
        );
    }
    // Its own schema, for the audit trail, it may create tables in.
    as_role
        .batch_execute("CREATE TABLE df_reconciler.probe (x int); DROP TABLE df_reconciler.probe")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_role_sql_serves_the_legacy_engine_schema_and_bypassrls_is_required() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    let c = db.client().await;
    c.batch_execute("SELECT df_fixture.rename_engine_schema('duroxide')")
        .await
        .unwrap();
    let (role, cfg) = apply_role_sql(&db, "duroxide").await;
    c.batch_execute(&format!("ALTER ROLE \"{role}\" NOBYPASSRLS"))
        .await
        .unwrap();
    let rows =
        "SELECT (SELECT count(*) FROM df.instances) + (SELECT count(*) FROM duroxide.instances)";
    let before = count(&c, rows).await;

    let failed = try_pass(&cfg, false).await.expect_err("refused");
    match &failed.error {
        // The only problem is row-level security: every grant is there for `duroxide`.
        Error::Refused(problems) => assert!(
            !problems.is_empty() && problems.iter().all(|p| p.contains("row-level security")),
            "{problems:?}"
        ),
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(failed.error.exit_code(), exit_code::REFUSED);
    assert_eq!(count(&c, rows).await, before, "nothing deleted");

    // Given BYPASSRLS again, the same role reconciles the legacy schema.
    c.batch_execute(&format!("ALTER ROLE \"{role}\" BYPASSRLS"))
        .await
        .unwrap();
    let report = pass(&cfg, false).await;
    assert_eq!(report.instances_removed(), 2, "{report}");
    assert!(report.rows_deleted.contains_key("duroxide.instances"));
}
