//! Fail closed: with invisible rows, missing schemas or tables, missing privileges or an
//! unknown per-instance engine table, a pass refuses to run and deletes nothing; with an
//! open-transaction guard that cannot see every session, it reclaims no orphan. What is
//! not required (`_worker_ready`). Also the discovery of the engine schema.

use df_reconciler_core::config::SecretString;
use df_reconciler_core::error::{exit_code, Error};

use crate::support::db::{count, df_ids, engine_ids, ids};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass, try_pass};
use crate::support::process::{binary, run, text};
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

/// Expects a pass (real or dry) that removes the expired workflow of [`seed_deletable`]
/// but holds back its old orphan for `reason`, saying why in `warnings` (mentioning
/// `needle`) and in `orphans_held`; then `check` with the same configuration warns too.
async fn assert_orphans_held(
    db: &TestDb,
    cfg: &df_reconciler_core::config::Config,
    reason: &str,
    needle: &str,
) {
    for dry_run in [true, false] {
        let report = pass(cfg, dry_run).await;
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            json["orphans_held"],
            serde_json::json!([reason]),
            "dry run {dry_run}: {json}"
        );
        assert!(
            report.warnings.iter().any(|w| w.contains(needle)),
            "{:?}",
            report.warnings
        );
        assert_eq!(
            report.orphans_reclaimed, 0,
            "dry run {dry_run}: the guard is blind"
        );
        assert_eq!(
            report.expired_removed.completed, 1,
            "the expired phase still runs"
        );
    }
    let c = db.client().await;
    assert!(df_ids(&c).await.is_empty());
    assert_eq!(engine_ids(&c).await, vec!["70000002"], "the orphan is kept");

    let mut cmd = binary();
    cmd.arg("check").env(
        "DF_RECONCILER__DATABASE__URL",
        cfg.database.url.as_ref().unwrap().expose(),
    );
    let out = run(cmd).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("warning:") && l.contains(needle) && l.contains("no orphan")),
        "{stdout}"
    );
}

#[tokio::test]
async fn without_pg_read_all_stats_no_orphan_is_reclaimed_and_reports_and_check_say_why() {
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
    assert_orphans_held(&db, &cfg, "no_stats_privilege", "pg_read_all_stats").await;
}

/// A NOINHERIT role is a member of pg_read_all_stats but does not use its privileges
/// without SET ROLE: pg_stat_activity still hides other roles' sessions from it.
#[tokio::test]
async fn a_noinherit_member_of_pg_read_all_stats_is_blind_too() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    let dsn = role(
        &db,
        &format!("{}_noinherit", db.name),
        "BYPASSRLS NOINHERIT",
    )
    .await;
    let mut cfg = config_for(&db);
    cfg.database.url = Some(SecretString::new(dsn));
    assert_orphans_held(&db, &cfg, "no_stats_privilege", "pg_read_all_stats").await;
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

/// pg_durable's background worker creates `_worker_ready` the first time it starts: a
/// fresh install may not have it yet. It is never required (and never touched).
#[tokio::test]
async fn a_missing_worker_ready_sentinel_is_not_required() {
    let db = TestDb::new().await;
    seed_deletable(&db).await;
    db.client()
        .await
        .batch_execute("DROP TABLE _duroxide._worker_ready")
        .await
        .unwrap();

    let mut cmd = binary();
    cmd.arg("check")
        .env("DF_RECONCILER__DATABASE__URL", &db.dsn);
    let out = run(cmd).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains("_worker_ready"), "{stdout}");

    for dry_run in [true, false] {
        let report = pass(&config_for(&db), dry_run).await;
        assert_eq!(report.instances_removed(), 2, "dry run {dry_run}");
    }
    assert!(engine_ids(&db.client().await).await.is_empty());
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
