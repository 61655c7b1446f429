//! The PostgreSQL every integration test runs against.
//!
//! - One [`ThrowawayCluster`] per test binary, started by the first test that needs it and
//!   shared by all tests (parallel threads, each `#[tokio::test]` with its own runtime, so
//!   nothing here is tied to one runtime). It lives in a static, which is never dropped:
//!   when the binary exits, the server gets its parent-death signal and the cluster's
//!   janitor removes its folder.
//! - A template database [`TEMPLATE_DB`] holding both schemas and the `df_fixture` seed
//!   helpers ([`FIXTURE_SQL`]), built once with the cluster. Each [`TestDb`] is a
//!   `CREATE DATABASE ... TEMPLATE` copy of it, so tests never see each other's rows.
//!   Databases are left behind: they die with the cluster.
//! - Tests that stop, crash or restart the server must not do it to the shared cluster:
//!   they take their own with [`private_cluster`] and [`TestDb::new_in`].
//! - Tests wait for conditions with [`wait_until`]; they never sleep and hope.

// Every test module uses a different subset of the helpers.
#![allow(dead_code)]

use std::{
    future::Future,
    panic,
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use df_reconciler_testkit::{fixture, ThrowawayCluster};
use tokio_postgres::{Client, NoTls};

/// The database every [`TestDb`] on the shared cluster is copied from.
pub const TEMPLATE_DB: &str = "df_template";

/// What every test database starts with, in order: both schemas (empty), then the
/// `df_fixture` functions the tests seed rows with.
const FIXTURE_SQL: [(&str, &str); 2] = [
    ("fixture::SCHEMA_SQL", fixture::SCHEMA_SQL),
    ("fixture::SEED_FUNCTIONS_SQL", fixture::SEED_FUNCTIONS_SQL),
];

/// How often [`wait_until`] re-checks its condition.
const POLL: Duration = Duration::from_millis(50);

static CLUSTER: OnceLock<ThrowawayCluster> = OnceLock::new();

/// PostgreSQL refuses to copy a template that another session is using, and a concurrent
/// CREATE DATABASE from the same template can count as one: copies are made one at a time.
static CREATE_DATABASE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Test databases are `t_<n>`, unique within the test binary (and so within its cluster).
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// The shared cluster, started with its template on first use (about a second, blocking).
/// From async code, [`TestDb::new`] is the usual way in.
pub fn cluster() -> &'static ThrowawayCluster {
    CLUSTER.get_or_init(|| {
        let cluster = ThrowawayCluster::start()
            .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL: {e}"));
        // A panic here drops `cluster`, which stops the server and removes its folder.
        block_on_own_runtime(create_template(
            cluster.dsn("postgres"),
            cluster.dsn(TEMPLATE_DB),
        ));
        cluster
    })
}

/// [`cluster`], keeping the first, blocking start off the test's runtime threads.
pub async fn shared_cluster() -> &'static ThrowawayCluster {
    if let Some(cluster) = CLUSTER.get() {
        return cluster;
    }
    unblock(cluster).await
}

/// A cluster of the test's own, for tests that stop, crash or restart the server. Dropping
/// it stops the server and removes its folder.
pub async fn private_cluster() -> ThrowawayCluster {
    unblock(|| {
        ThrowawayCluster::start()
            .unwrap_or_else(|e| panic!("cannot start a private test PostgreSQL: {e}"))
    })
    .await
}

/// A database of one test, with both schemas and no rows.
pub struct TestDb {
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/<name>`: superuser, trust authentication.
    pub dsn: String,
    host: String,
    port: u16,
}

impl TestDb {
    /// A fresh copy of the template on the shared cluster.
    pub async fn new() -> TestDb {
        let cluster = shared_cluster().await;
        let name = next_db_name();
        let admin = connect(&cluster.dsn("postgres")).await;
        {
            let _one_copy_at_a_time = CREATE_DATABASE.lock().await;
            admin
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
                .await
                .unwrap_or_else(|e| panic!("cannot create test database {name}: {}", describe(&e)));
        }
        TestDb::on(cluster, name)
    }

    /// A fresh database with both schemas on a cluster of the test's own (see
    /// [`private_cluster`]); built from [`FIXTURE_SQL`] directly, no template.
    pub async fn new_in(cluster: &ThrowawayCluster) -> TestDb {
        let name = next_db_name();
        connect(&cluster.dsn("postgres"))
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {}", describe(&e)));
        let db = TestDb::on(cluster, name);
        load_fixture(&db.client().await).await;
        db
    }

    fn on(cluster: &ThrowawayCluster, name: String) -> TestDb {
        TestDb {
            dsn: cluster.dsn(&name),
            name,
            host: cluster.host().to_owned(),
            port: cluster.port(),
        }
    }

    /// A new superuser session on this database.
    pub async fn client(&self) -> Client {
        connect(&self.dsn).await
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A superuser session on any database of the shared cluster, e.g. `postgres` to
/// terminate another test's backends or inspect `pg_stat_activity`.
pub async fn superuser_client(dbname: &str) -> Client {
    connect(&shared_cluster().await.dsn(dbname)).await
}

/// Connects without TLS; the connection task runs on the calling test's runtime and ends
/// with the client. Its errors are dropped: a broken connection already surfaces as errors
/// of the client's calls.
pub async fn connect(dsn: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {dsn}: {}", describe(&e)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Re-checks `condition` every 50 ms until it holds; panics naming `what` once `deadline`
/// has passed.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let began = Instant::now();
    loop {
        if condition().await {
            return;
        }
        if began.elapsed() >= deadline {
            panic!("gave up after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Creates [`TEMPLATE_DB`] with both schemas, then makes it a template nobody can connect
/// to (a session on it would block every copy).
async fn create_template(admin_dsn: String, template_dsn: String) {
    let admin = connect(&admin_dsn).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {TEMPLATE_DB}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create {TEMPLATE_DB}: {}", describe(&e)));

    let (template, connection) = tokio_postgres::connect(&template_dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {TEMPLATE_DB}: {}", describe(&e)));
    let connection = tokio::spawn(connection);
    load_fixture(&template).await;
    // Close the session (and wait for it) before the first copy is made.
    drop(template);
    let _ = connection.await;

    admin
        .batch_execute(&format!(
            "ALTER DATABASE {TEMPLATE_DB} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
        ))
        .await
        .unwrap_or_else(|e| panic!("cannot seal {TEMPLATE_DB}: {}", describe(&e)));
}

async fn load_fixture(client: &Client) {
    for (what, sql) in FIXTURE_SQL {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {}", describe(&e)));
    }
}

/// Runs `future` to completion on a runtime of its own, on a thread of its own: the
/// template outlives the test that happened to build it, so it must not depend on that
/// test's runtime, and a runtime cannot be started from a thread that runs one.
fn block_on_own_runtime<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot build a tokio runtime")
            .block_on(future);
    })
    .join()
    .unwrap_or_else(|payload| panic::resume_unwind(payload));
}

/// Runs blocking `f` off the runtime's threads, passing its panic on unchanged.
async fn unblock<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => panic::resume_unwind(payload),
            Err(e) => panic!("blocking task failed: {e}"),
        },
    }
}

fn next_db_name() -> String {
    format!("t_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed))
}

/// tokio-postgres' `Display` hides the server's message behind "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}
