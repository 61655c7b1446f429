//! Where the daemon connects: url_file problems, an empty or malformed DSN, a missing
//! database, a dead port and a wrong password. Each is named without the password, and
//! nothing is deleted.

use std::time::Duration;

use df_reconciler_core::error::exit_code::{FAILED, OK};

use super::{reconciler, run, run_all, secret_dsn, snapshot, SECRET};
use crate::support::db::exec;
use crate::support::harness::{self, wait_until, TestDb};
use crate::support::process::{free_port, toml_file};
use crate::support::seed::seed_deletable;

#[tokio::test]
async fn unusable_url_file_and_database_settings_are_named() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&db).await;
    let before = snapshot(&c).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dsn");
    let good = dir.path().join("dsn");
    std::fs::write(&good, format!("{}\n", secret_dsn(&db))).unwrap();
    let malformed = dir.path().join("malformed");
    std::fs::write(
        &malformed,
        format!("host=127.0.0.1 port=x password={SECRET}\n"),
    )
    .unwrap();

    let mut cases = Vec::new();
    let mut needles: Vec<Vec<String>> = Vec::new();
    for command in [
        &["once", "--json"][..],
        &["check"][..],
        &["migrate"][..],
        &["history"][..],
    ] {
        let name = command[0];
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &missing);
        cases.push((format!("{name}: url_file missing"), cmd));
        needles.push(vec![
            "database.url_file".into(),
            missing.display().to_string(),
            "No such file".into(),
        ]);

        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", dir.path());
        cases.push((format!("{name}: url_file is a directory"), cmd));
        needles.push(vec!["database.url_file".into(), "directory".into()]);

        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &malformed);
        cases.push((format!("{name}: url_file holds a malformed DSN"), cmd));
        needles.push(vec![
            "not a valid PostgreSQL connection string".into(),
            "port".into(),
        ]);

        // Both set: the real database is right there, and still nothing may happen.
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &good)
            .env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db));
        cases.push((format!("{name}: url and url_file"), cmd));
        needles.push(vec!["database.url".into(), "database.url_file".into()]);

        cases.push((
            format!("{name}: no database configured"),
            reconciler(command),
        ));
        needles.push(vec!["database.url".into()]);

        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db))
            .env("DF_RECONCILER__TLS__CA_FILE", dir.path().join("no-ca.pem"));
        cases.push((format!("{name}: tls.ca_file missing"), cmd));
        needles.push(vec!["tls.ca_file".into(), "no-ca.pem".into()]);
    }
    for (r, needles) in run_all(cases).await.iter().zip(&needles) {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        r.usage_error(&needles);
    }
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    // The good file works: the cases above failed for their own reason only.
    let mut cmd = reconciler(&["once", "--dry-run", "--json"]);
    cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &good);
    let r = run("once --dry-run with the good url_file", cmd).await;
    r.expect(OK);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["expired_removed"]["completed"], 1);
}

#[tokio::test]
async fn an_empty_dsn_is_a_configuration_error() {
    let empty = toml_file("");
    let mut cmd = reconciler(&["once"]);
    cmd.env("DF_RECONCILER__DATABASE__URL_FILE", empty.path());
    run("once with an empty url_file", cmd)
        .await
        .usage_error(&["database.url_file"]);
    let mut cmd = reconciler(&["once"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", "");
    run("once with an empty url", cmd)
        .await
        .usage_error(&["database.url"]);
}

#[tokio::test]
async fn malformed_dsns_are_named_without_the_password() {
    let mut cases = Vec::new();
    let mut needles = Vec::new();
    for (dsn, needle) in [
        (
            format!("postgres://u:{SECRET}@127.0.0.1:notaport/db"),
            "port",
        ),
        (format!("postgres://u:{SECRET}@127.0.0.1:99999/db"), "port"),
        (format!("postgres://u:{SECRET}@[::1/db"), "host"),
        (
            format!("postgres://u:{SECRET}@127.0.0.1/db?sslmode=bogus"),
            "sslmode",
        ),
        (
            format!("postgres://u:{SECRET}@127.0.0.1/db?no_such_option=1"),
            "no_such_option",
        ),
        (format!("host=127.0.0.1 password='{SECRET}"), "unterminated"),
        (
            format!("host=127.0.0.1 no_such_option=1 password={SECRET}"),
            "no_such_option",
        ),
        (
            format!("host=127.0.0.1 connect_timeout=soon password={SECRET}"),
            "connect_timeout",
        ),
        (
            format!("mysql://u:{SECRET}@127.0.0.1/db"),
            "connection string",
        ),
    ] {
        for command in ["once", "check"] {
            let mut cmd = reconciler(&[command]);
            cmd.env("DF_RECONCILER__DATABASE__URL", &dsn);
            cases.push((format!("{command} {}", dsn.replace(SECRET, "***")), cmd));
            needles.push(needle);
        }
    }
    for (r, needle) in run_all(cases).await.iter().zip(needles) {
        r.usage_error(&["database.url", needle]);
    }
}

#[tokio::test]
async fn a_missing_database_or_a_dead_port_is_a_run_time_failure_naming_the_target() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&db).await;
    let before = snapshot(&c).await;
    let missing_db = format!("{}_missing", db.name);
    let missing_dsn = secret_dsn(&db).replace(&format!("/{}", db.name), &format!("/{missing_db}"));
    let port = free_port();
    let dead_dsn = format!("postgres://postgres:{SECRET}@127.0.0.1:{port}/{}", db.name);
    let mut cases = Vec::new();
    let mut needles: Vec<Vec<String>> = Vec::new();
    for command in [
        &["once", "--json"][..],
        &["check"][..],
        &["migrate"][..],
        &["history"][..],
    ] {
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", &missing_dsn);
        cases.push((format!("{}: missing database", command[0]), cmd));
        needles.push(vec![format!("\"{missing_db}\" does not exist")]);
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", &dead_dsn)
            .env("DF_RECONCILER__DATABASE__CONNECT_TIMEOUT", "2s");
        cases.push((format!("{}: nothing listens", command[0]), cmd));
        needles.push(vec![format!("127.0.0.1:{port}"), "refused".into()]);
    }
    for (r, needles) in run_all(cases).await.iter().zip(&needles) {
        r.expect(FAILED);
        for needle in needles {
            r.mentions(needle);
        }
        if r.what.starts_with("check") {
            assert_eq!(
                r.stdout
                    .lines()
                    .filter(|l| l.starts_with("problem: "))
                    .count(),
                1,
                "{}",
                r.all()
            );
        } else {
            r.one_error(&[&needles[0]]);
        }
    }
    assert_eq!(snapshot(&c).await, before, "nothing deleted");
}

#[tokio::test]
async fn a_wrong_password_is_refused_by_the_server_and_never_printed() {
    // The shared cluster trusts everyone: this test needs password authentication.
    let cluster = harness::private_cluster().await;
    let db = TestDb::new_in(&cluster).await;
    let c = db.client().await;
    seed_deletable(&db).await;
    let before = snapshot(&c).await;
    let role = "pw_reconciler";
    let right = "right-Zq8-password";
    exec(
        &c,
        &format!(
            "CREATE ROLE {role} LOGIN BYPASSRLS PASSWORD '{right}';
             GRANT USAGE ON SCHEMA df, _duroxide TO {role};
             GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA df, _duroxide TO {role};
             GRANT UPDATE (id) ON df.instances TO {role};
             GRANT UPDATE (instance_id) ON _duroxide.instances TO {role};
             GRANT pg_read_all_stats TO {role};"
        ),
    )
    .await;
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    exec(&c, "SELECT pg_reload_conf()").await;
    let dsn = |password: &str| {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{}",
            cluster.port(),
            db.name
        )
    };
    let without_password = format!("postgres://{role}@127.0.0.1:{}/{}", cluster.port(), db.name);
    wait_until(
        "the server asks for passwords",
        Duration::from_secs(10),
        || {
            let dsn = without_password.clone();
            async move {
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                    .await
                    .is_err()
            }
        },
    )
    .await;

    let mut cases = Vec::new();
    for command in [&["once", "--json"][..], &["check"][..], &["migrate"][..]] {
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", dsn(SECRET));
        cases.push((format!("{}: wrong password", command[0]), cmd));
    }
    let dsn_file = toml_file(&dsn(SECRET));
    let mut cmd = reconciler(&["once"]);
    cmd.env("DF_RECONCILER__DATABASE__URL_FILE", dsn_file.path());
    cases.push(("once: wrong password from url_file".into(), cmd));
    for r in run_all(cases).await {
        r.expect(FAILED).mentions(&format!(
            "password authentication failed for user \"{role}\""
        ));
        if !r.what.starts_with("check") {
            r.one_error(&["password authentication failed"]);
        }
    }
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    // The right password: the same role reconciles (and its password is not printed).
    let mut cmd = reconciler(&["once", "--json"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", dsn(right));
    let r = run("once: right password", cmd).await;
    assert_eq!(r.code, Some(OK), "{}", r.all());
    assert!(!r.all().contains(right), "{}", r.all());
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["expired_removed"]["completed"], 1);
    assert_eq!(report["orphans_reclaimed"], 1);
}
