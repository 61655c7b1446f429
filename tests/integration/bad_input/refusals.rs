//! Roles, schemas and tables the daemon must refuse with exit 3 and nothing deleted (row-
//! level security, missing privileges, missing schemas and tables), and an unknown engine
//! migration, which is only a warning.

use std::process::Command;

use df_reconciler_core::error::exit_code::{OK, REFUSED};

use super::{reconciler, run, run_all, secret_dsn, snapshot, SECRET};
use crate::support::db::{count, exec};
use crate::support::harness::TestDb;
use crate::support::seed::seed_deletable;

/// The DSN of `db` for `role` (trust authentication; the password is there to prove it is
/// never printed).
fn dsn_as(db: &TestDb, role: &str) -> String {
    db.dsn.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}:{SECRET}@"),
        1,
    )
}

/// Runs every case, expecting exit 3, its needle in the output, one error line for `once`
/// (with a JSON report that deleted nothing) and nothing but problem lines for `check`.
async fn expect_refusals(cases: Vec<(String, Command)>, needles: &[String]) {
    for (r, needle) in run_all(cases).await.iter().zip(needles) {
        r.expect(REFUSED).mentions(needle);
        if r.what.starts_with("once") {
            r.one_error(&["refusing to reconcile", needle]);
            let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("a JSON report");
            assert_eq!(report["rows_deleted"], serde_json::json!({}), "{}", r.what);
        } else {
            assert!(
                r.stdout.lines().all(|l| l.starts_with("problem: ")),
                "{}",
                r.stdout
            );
        }
    }
}

/// Collects (description, command) cases and their needles.
#[derive(Default)]
struct Cases {
    cases: Vec<(String, Command)>,
    needles: Vec<String>,
}

impl Cases {
    fn add(&mut self, what: &str, command: &[&str], env: &[(&str, String)], needle: &str) {
        let mut cmd = reconciler(command);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.cases
            .push((format!("{} {what}", command.join(" ")), cmd));
        self.needles.push(needle.to_owned());
    }
}

const URL: &str = "DF_RECONCILER__DATABASE__URL";

#[tokio::test]
async fn unsafe_roles_and_databases_are_refused_with_exit_3_and_nothing_deleted() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&db).await;
    let before = snapshot(&c).await;
    let rls = format!("{}_rls", db.name);
    let reader = format!("{}_reader", db.name);
    let no_delete = format!("{}_nodelete", db.name);
    exec(
        &c,
        &format!(
            "CREATE ROLE {rls} LOGIN NOBYPASSRLS;
             CREATE ROLE {reader} LOGIN BYPASSRLS;
             CREATE ROLE {no_delete} LOGIN BYPASSRLS;
             GRANT USAGE ON SCHEMA df, _duroxide TO {rls}, {reader}, {no_delete};
             GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA df, _duroxide TO {rls};
             GRANT UPDATE (id) ON df.instances TO {rls}, {no_delete};
             GRANT UPDATE (instance_id) ON _duroxide.instances TO {rls}, {no_delete};
             GRANT SELECT ON ALL TABLES IN SCHEMA df, _duroxide TO {no_delete};
             GRANT SELECT ON ALL TABLES IN SCHEMA df TO {reader};
             GRANT SELECT ON _duroxide.instances, _duroxide.executions,
                             _duroxide._duroxide_migrations TO {reader};"
        ),
    )
    .await;

    let mut cases = Cases::default();
    for command in [&["once", "--json"][..], &["check"][..]] {
        cases.add(
            "as a role subject to row-level security",
            command,
            &[(URL, dsn_as(&db, &rls))],
            "role is subject to row-level security on df.instances",
        );
        cases.add(
            "as a role that may read but not delete",
            command,
            &[(URL, dsn_as(&db, &no_delete))],
            "role lacks DELETE on _duroxide.kv_delta",
        );
        cases.add(
            "with a control schema that does not exist",
            command,
            &[
                (URL, secret_dsn(&db)),
                ("DF_RECONCILER__SCHEMAS__CONTROL", "pg_durable_x".into()),
            ],
            "control schema \"pg_durable_x\" does not exist",
        );
        cases.add(
            "with an engine schema that does not exist",
            command,
            &[
                (URL, secret_dsn(&db)),
                ("DF_RECONCILER__SCHEMAS__ENGINE", "duroxide_x".into()),
            ],
            "engine schema \"duroxide_x\" does not exist",
        );
    }
    cases.add(
        "as a role that may not read every table",
        &["once", "--dry-run", "--json"],
        &[(URL, dsn_as(&db, &reader))],
        "role lacks SELECT on _duroxide.history",
    );
    expect_refusals(cases.cases, &cases.needles).await;
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    // A table the engine must have is gone: refused before anything is read.
    exec(&c, "DROP TABLE _duroxide.worker_queue").await;
    let mut cases = Cases::default();
    cases.add(
        "without _duroxide.worker_queue",
        &["once", "--json"],
        &[(URL, secret_dsn(&db))],
        "table _duroxide.worker_queue does not exist",
    );
    expect_refusals(cases.cases, &cases.needles).await;
    assert_eq!(snapshot(&c).await, before, "nothing deleted");
}

/// Preflight asks `has_table_privilege('"_duroxide"."history"', ...)`, which raises
/// "permission denied for schema" without USAGE; and it reads `_duroxide_migrations`,
/// which the README's list of privileges does not name, raising "permission denied for
/// table". Both end as a database error (exit 1). A role without USAGE must be refused by
/// name (exit 3); for the migrations table a refusal or a warning naming it will do.
#[tokio::test]
async fn a_role_missing_a_schema_usage_or_the_migrations_grant_is_told_so() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&db).await;
    let before = snapshot(&c).await;
    let bare = format!("{}_bare", db.name);
    let readme = format!("{}_readme", db.name);
    // `readme` holds exactly what README's "The database role" lists.
    exec(
        &c,
        &format!(
            "CREATE ROLE {bare} LOGIN;
             CREATE ROLE {readme} LOGIN BYPASSRLS;
             GRANT USAGE ON SCHEMA df, _duroxide TO {readme};
             GRANT SELECT, DELETE ON df.instances, df.nodes, _duroxide.instances,
                   _duroxide.executions, _duroxide.history, _duroxide.orchestrator_queue,
                   _duroxide.worker_queue, _duroxide.instance_locks, _duroxide.kv_store,
                   _duroxide.kv_delta TO {readme};
             GRANT UPDATE (id) ON df.instances TO {readme};
             GRANT UPDATE (instance_id) ON _duroxide.instances TO {readme};
             GRANT pg_read_all_stats TO {readme};"
        ),
    )
    .await;
    let mut cases = Cases::default();
    // As on a real install, PUBLIC has USAGE on the engine schema and nothing on df: the
    // role must be told it lacks USAGE on df (not fail calling df.duroxide_schema()).
    for command in [&["once", "--json"][..], &["check"][..]] {
        cases.add(
            "as a role without any privilege",
            command,
            &[(URL, dsn_as(&db, &bare))],
            "USAGE on schema df",
        );
    }
    expect_refusals(cases.cases, &cases.needles).await;
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    for command in [&["check"][..], &["once", "--json"][..]] {
        let mut cmd = reconciler(command);
        cmd.env(URL, dsn_as(&db, &readme));
        let r = run(format!("{} as the README's role", command[0]), cmd).await;
        assert!(
            matches!(r.code, Some(OK) | Some(REFUSED)),
            "{}: exit {:?}\n{}",
            r.what,
            r.code,
            r.all()
        );
        r.expect(r.code.unwrap()).mentions("_duroxide_migrations");
        if r.code == Some(REFUSED) {
            assert_eq!(snapshot(&c).await, before, "nothing deleted");
        }
    }
}

#[tokio::test]
async fn an_unknown_engine_migration_is_a_warning_and_the_pass_still_works() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&db).await;
    exec(
        &c,
        "INSERT INTO _duroxide._duroxide_migrations (version, name) VALUES (99, '0099_future')",
    )
    .await;
    let mut cmd = reconciler(&["check"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db));
    let r = run("check", cmd).await;
    r.expect(OK)
        .mentions("warning: engine migration version 99 is newer")
        .mentions("engine migration 99");
    assert!(r.error_lines().is_empty(), "{}", r.stderr);

    let mut cmd = reconciler(&["once", "--json"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db));
    let r = run("once", cmd).await;
    r.expect(OK);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("version 99")),
        "{warnings:?}"
    );
    assert_eq!(report["expired_removed"]["completed"], 1);
    assert_eq!(report["orphans_reclaimed"], 1);
    assert_eq!(count(&c, "SELECT count(*) FROM df.instances").await, 0);
}
