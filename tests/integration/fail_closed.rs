//! Fail closed: with invisible rows, missing schemas or tables, missing privileges or an
//! unknown per-instance engine table, a pass refuses to run and deletes nothing. Also the
//! discovery of the engine schema.

use df_reconciler_core::config::SecretString;
use df_reconciler_core::error::{exit_code, Error};

use crate::support::db::{count, ids};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass, try_pass};
use crate::support::seed::seed_deletable;

/// Rows of df.instances plus the engine's instances, wherever the engine schema is now.
async fn all_rows(db: &TestDb) -> i64 {
    let c = db.client().await;
    let engine: String = c
        .query_one(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = '_duroxide_migrations'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    count(
        &c,
        &format!(
            "SELECT (SELECT count(*) FROM df.instances) + (SELECT count(*) FROM \"{engine}\".instances)"
        ),
    )
    .await
}

/// Expects a refusal naming `needle`, and that nothing was deleted.
async fn assert_refused(db: &TestDb, cfg: &df_reconciler_core::config::Config, needle: &str) {
    let before = all_rows(db).await;
    let failed = try_pass(cfg, false)
        .await
        .expect_err("the pass must refuse");
    match &failed.error {
        Error::Refused(problems) => assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem naming {needle:?}, got {problems:?}"
        ),
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(failed.error.exit_code(), exit_code::REFUSED);
    assert_eq!(all_rows(db).await, before, "nothing deleted");
}

/// A login role with the given attributes and full table privileges on both schemas.
async fn role(db: &TestDb, name: &str, attributes: &str) -> String {
    let c = db.client().await;
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {name};
         CREATE ROLE {name} LOGIN {attributes};
         GRANT USAGE ON SCHEMA df, _duroxide TO {name};
         GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA df, _duroxide TO {name};
         GRANT UPDATE (id) ON df.instances TO {name};
         GRANT UPDATE (instance_id) ON _duroxide.instances TO {name};
         GRANT EXECUTE ON FUNCTION df.duroxide_schema() TO {name};
         GRANT pg_read_all_stats TO {name};"
    ))
    .await
    .unwrap();
    db.dsn
        .replacen("postgres://postgres@", &format!("postgres://{name}@"), 1)
}

#[tokio::test]
async fn a_role_subject_to_row_level_security_is_refused() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let dsn = role(&db, &format!("{}_rls", db.name), "NOBYPASSRLS").await;
    let mut cfg = config_for(&db);
    cfg.database.url = Some(SecretString::new(dsn));
    assert_refused(&db, &cfg, "row-level security").await;
}

#[tokio::test]
async fn a_role_with_bypassrls_and_grants_reconciles() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let dsn = role(&db, &format!("{}_ok", db.name), "BYPASSRLS").await;
    let mut cfg = config_for(&db);
    cfg.database.url = Some(SecretString::new(dsn));
    let report = pass(&cfg, false).await;
    assert_eq!(report.instances_removed(), 2);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[tokio::test]
async fn without_pg_read_all_stats_the_guard_falls_back_to_the_age_floor_and_says_so() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let name = format!("{}_nostats", db.name);
    let dsn = role(&db, &name, "BYPASSRLS").await;
    db.client()
        .await
        .batch_execute(&format!("REVOKE pg_read_all_stats FROM {name}"))
        .await
        .unwrap();
    let mut cfg = config_for(&db);
    cfg.database.url = Some(SecretString::new(dsn));
    let report = pass(&cfg, false).await;
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("pg_read_all_stats")),
        "{:?}",
        report.warnings
    );
    assert_eq!(
        report.orphans_reclaimed, 1,
        "old orphans still go, by the age floor"
    );
}

#[tokio::test]
async fn a_role_without_delete_privilege_is_refused_but_may_dry_run() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let name = format!("{}_ro", db.name);
    let dsn = role(&db, &name, "BYPASSRLS").await;
    db.client()
        .await
        .batch_execute(&format!("REVOKE DELETE ON _duroxide.history FROM {name}"))
        .await
        .unwrap();
    let mut cfg = config_for(&db);
    cfg.database.url = Some(SecretString::new(dsn));
    assert_refused(&db, &cfg, "DELETE on _duroxide.history").await;
    let dry = pass(&cfg, true).await;
    assert_eq!(dry.instances_removed(), 2);
}

#[tokio::test]
async fn a_role_that_cannot_lock_rows_is_refused() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let name = format!("{}_nolock", db.name);
    let dsn = role(&db, &name, "BYPASSRLS").await;
    db.client()
        .await
        .batch_execute(&format!("REVOKE UPDATE ON _duroxide.instances FROM {name}"))
        .await
        .unwrap();
    let mut cfg = config_for(&db);
    cfg.database.url = Some(SecretString::new(dsn));
    assert_refused(&db, &cfg, "UPDATE on a column of _duroxide.instances").await;
}

#[tokio::test]
async fn missing_schemas_and_tables_are_named() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let mut cfg = config_for(&db);
    cfg.schemas.control = "nope".into();
    assert_refused(&db, &cfg, "\"nope\" does not exist").await;

    let mut cfg = config_for(&db);
    cfg.schemas.engine = "elsewhere".into();
    assert_refused(&db, &cfg, "\"elsewhere\" does not exist").await;

    db.client()
        .await
        .batch_execute("DROP TABLE _duroxide.kv_delta")
        .await
        .unwrap();
    assert_refused(&db, &config_for(&db), "_duroxide.kv_delta does not exist").await;
}

#[tokio::test]
async fn an_unknown_per_instance_engine_table_is_refused() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    db.client()
        .await
        .batch_execute("CREATE TABLE _duroxide.timers (instance_id text, fire_at bigint)")
        .await
        .unwrap();
    assert_refused(&db, &config_for(&db), "_duroxide.timers").await;
}

#[tokio::test]
async fn an_unknown_engine_migration_version_is_a_warning() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO _duroxide._duroxide_migrations (version, name) VALUES (22, '0022_future')",
        )
        .await
        .unwrap();
    let report = pass(&config_for(&db), false).await;
    assert!(
        report.warnings.iter().any(|w| w.contains("version 22")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.instances_removed(), 2);
}

#[tokio::test]
async fn engine_schema_is_discovered_or_configured() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let c = db.client().await;
    // An install upgraded from pg_durable <= 0.2.2: schema `duroxide`, no discovery function.
    c.batch_execute(
        "ALTER SCHEMA _duroxide RENAME TO duroxide;
         DROP FUNCTION df.duroxide_schema();",
    )
    .await
    .unwrap();
    let report = pass(&config_for(&db), false).await;
    assert_eq!(report.instances_removed(), 2);
    assert!(report.rows_deleted.contains_key("duroxide.instances"));

    // A function that names a schema that is not there: refused by name.
    c.batch_execute(
        "CREATE FUNCTION df.duroxide_schema() RETURNS text LANGUAGE sql AS $$ SELECT 'engine_x' $$",
    )
    .await
    .unwrap();
    assert_refused(&db, &config_for(&db), "\"engine_x\" does not exist").await;

    // The explicit override wins over discovery.
    c.batch_execute("ALTER SCHEMA duroxide RENAME TO engine_y")
        .await
        .unwrap();
    let mut cfg = config_for(&db);
    cfg.schemas.engine = "engine_y".into();
    pass(&cfg, false).await;
    assert!(engine_ids_in(&db, "engine_y").await.is_empty());
}

async fn engine_ids_in(db: &TestDb, schema: &str) -> Vec<String> {
    ids(
        &db.client().await,
        &format!("SELECT instance_id FROM {schema}.instances"),
    )
    .await
}

#[tokio::test]
async fn a_dead_server_is_a_clear_failure_not_a_hang() {
    let db = TestDb::new().await;
    let mut cfg = config_for(&db);
    // Nothing listens on port 1 of the loopback.
    cfg.database.url = Some(SecretString::new(
        "postgres://postgres:secret@127.0.0.1:1/db".to_string(),
    ));
    cfg.database.connect_timeout = std::time::Duration::from_secs(2);
    let failed = try_pass(&cfg, false).await.expect_err("no server");
    let message = failed.error.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !message.contains("secret"),
        "the password is never printed: {message}"
    );
    assert_eq!(failed.error.exit_code(), exit_code::FAILED);
}
