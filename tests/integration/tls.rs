//! TLS of the daemon's connections against a server with a certificate from a private CA:
//! libpq's sslmode semantics (verify-full, verify-ca, require, prefer, disable), the CA
//! file from `[tls] ca_file` or the DSN's `sslrootcert`, and clear failures that never
//! print the password.
//!
//! Switching `ssl = on` is a cluster-wide setting, so this runs on a private cluster.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use df_reconciler_core::config::{Config, SecretString};
use df_reconciler_core::error::{exit_code, Error};
use df_reconciler_testkit::throwaway::ThrowawayCluster;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::support::db::df_ids;
use crate::support::harness::{private_cluster, wait_until, TestDb};
use crate::support::passes::{pass, try_pass};
use crate::support::seed::{workflow, DAY};

/// Trust authentication ignores it; it is here to prove it is never printed.
const PASSWORD: &str = "tls-test-secret";

/// A CA's certificate (PEM) and the means to sign with it.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> TestCa {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    TestCa {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for `localhost` and 127.0.0.1, signed by `ca`: (cert PEM, key PEM).
fn server_certificate(ca: &TestCa) -> (String, String) {
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "df-reconciler test server");
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("server certificate");
    (cert.pem(), key.serialize_pem())
}

/// Installs the certificate in the data directory (owned by the server's OS user, key
/// 0600 as PostgreSQL insists) and switches TLS on with a reload.
async fn enable_tls(cluster: &ThrowawayCluster, db: &TestDb, cert: &str, key: &str) {
    let data_dir = cluster.data_dir();
    let owner = std::fs::metadata(data_dir).expect("data dir").uid();
    let group = std::fs::metadata(data_dir).expect("data dir").gid();
    for (name, contents) in [("server.crt", cert), ("server.key", key)] {
        let path = data_dir.join(name);
        std::fs::write(&path, contents).expect("write certificate");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(owner), Some(group)).expect("chown");
    }
    let admin = db.client().await;
    // ALTER SYSTEM refuses to run inside a (multi-statement, implicit) transaction.
    for statement in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    // New sessions see the reloaded setting once the postmaster has processed SIGHUP.
    wait_until("the server offers TLS", Duration::from_secs(10), || async {
        let c = db.client().await;
        let on: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        on == "on"
    })
    .await;
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// The daemon's configuration for `dsn` (which carries the password) and `ca_file`.
fn config(dsn: String, ca_file: Option<&Path>) -> Config {
    let mut cfg = Config::default();
    cfg.database.url = Some(SecretString::new(dsn));
    cfg.database.connect_timeout = Duration::from_secs(5);
    cfg.tls.ca_file = ca_file.map(Path::to_path_buf);
    cfg
}

/// Connects through the daemon's pool; Ok(whether pg_stat_ssl says the session is
/// encrypted), or the error's message.
async fn session_ssl(cfg: &Config) -> Result<bool, String> {
    let pool = df_reconciler_core::db::build_pool(cfg).map_err(|e| e.to_string())?;
    let result = match df_reconciler_core::db::connect(&pool, "test").await {
        Ok(client) => Ok(client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0)),
        Err(e) => Err(e.to_string()),
    };
    pool.close();
    result
}

async fn expect_failure(cfg: &Config, needle: &str) -> String {
    let message = session_ssl(cfg)
        .await
        .expect_err("the connection must fail");
    assert!(
        message.contains(needle),
        "expected {needle:?} in: {message}"
    );
    assert!(
        !message.contains(PASSWORD),
        "the password is never printed: {message}"
    );
    message
}

#[tokio::test]
async fn sslmodes_against_a_server_with_a_private_ca() {
    let cluster = private_cluster().await;
    let db = TestDb::new_in(&cluster).await;
    let right = ca("df-reconciler test CA");
    let wrong = ca("some other CA");
    let (cert, key) = server_certificate(&right);
    enable_tls(&cluster, &db, &cert, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let right_ca = write_pem(dir.path(), "right-ca.pem", &right.pem);
    let wrong_ca = write_pem(dir.path(), "wrong-ca.pem", &wrong.pem);
    let (port, name) = (cluster.port(), &db.name);
    let url =
        |params: &str| format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/{name}?{params}");
    // Connects to 127.0.0.1 but checks the certificate against the name `host`.
    let named = |host: &str, mode: &str| {
        format!("host={host} hostaddr=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname={name} sslmode={mode}")
    };

    // verify-full with the right CA: encrypted, and a real pass works over it.
    let verified = config(url("sslmode=verify-full"), Some(&right_ca));
    assert_eq!(session_ssl(&verified).await, Ok(true));
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
    workflow(
        &c,
        "70000002",
        "completed",
        Some("Completed"),
        DAY,
        Some(DAY),
        0,
    )
    .await;
    let report = pass(&verified, false).await;
    assert_eq!(report.instances_removed(), 1);
    assert_eq!(df_ids(&c).await, ["70000002"]);
    // The name the certificate was issued for also matches.
    assert_eq!(
        session_ssl(&config(named("localhost", "verify-full"), Some(&right_ca))).await,
        Ok(true)
    );

    // A certificate from another CA: refused, saying why, the password never shown.
    let message = expect_failure(
        &config(url("sslmode=verify-full"), Some(&wrong_ca)),
        "UnknownIssuer",
    )
    .await;
    assert!(
        message.contains("tls.ca_file"),
        "the hint names the key: {message}"
    );
    // The failure is a run-time one (exit 1), as for any unreachable server.
    let failed = try_pass(&config(url("sslmode=verify-ca"), Some(&wrong_ca)), false)
        .await
        .expect_err("the pass must fail");
    assert!(matches!(failed.error, Error::Pool(_)), "{}", failed.error);
    assert_eq!(failed.error.exit_code(), exit_code::FAILED);
    assert_eq!(df_ids(&c).await, ["70000002"], "nothing deleted");
    // Without a CA file, verify-full trusts the system store, which does not know ours
    // (on a machine without a CA bundle, building the pool says that instead).
    let system = session_ssl(&config(url("sslmode=verify-full"), None))
        .await
        .expect_err("our CA is in no system store");
    assert!(
        system.contains("UnknownIssuer") || system.contains("no trusted CA certificate"),
        "{system}"
    );

    // verify-full checks the host name; verify-ca does not.
    expect_failure(
        &config(named("db.invalid", "verify-full"), Some(&right_ca)),
        "not valid for name",
    )
    .await;
    assert_eq!(
        session_ssl(&config(named("db.invalid", "verify-ca"), Some(&right_ca))).await,
        Ok(true)
    );
    expect_failure(
        &config(named("db.invalid", "verify-ca"), Some(&wrong_ca)),
        "UnknownIssuer",
    )
    .await;

    // The DSN's sslrootcert wins over tls.ca_file.
    let rootcert = format!("sslmode=verify-full&sslrootcert={}", right_ca.display());
    assert_eq!(
        session_ssl(&config(url(&rootcert), Some(&wrong_ca))).await,
        Ok(true)
    );

    // require and prefer (the default): encrypted; the certificate is checked only when a
    // CA is configured, as libpq does.
    assert_eq!(
        session_ssl(&config(url("sslmode=require"), None)).await,
        Ok(true)
    );
    assert_eq!(
        session_ssl(&config(url("application_name=x"), None)).await,
        Ok(true)
    );
    expect_failure(
        &config(url("sslmode=require"), Some(&wrong_ca)),
        "UnknownIssuer",
    )
    .await;

    // disable: plain text, whatever the CA settings.
    assert_eq!(
        session_ssl(&config(url("sslmode=disable"), Some(&wrong_ca))).await,
        Ok(false)
    );

    // require against a server without TLS (the shared test cluster): refused, saying why.
    let plain = TestDb::new().await;
    let dsn = plain
        .dsn
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    expect_failure(
        &config(format!("{dsn}?sslmode=require"), None),
        "server does not support TLS",
    )
    .await;

    // A CA file that does not exist is a configuration error, named, before connecting.
    let missing = config(
        url("sslmode=verify-full"),
        Some(Path::new("/nonexistent/ca.pem")),
    );
    let error = df_reconciler_core::db::build_pool(&missing).expect_err("no CA file");
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    assert_eq!(error.exit_code(), exit_code::USAGE);
}
