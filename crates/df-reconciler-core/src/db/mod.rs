//! All database access: the connection pool, DSN parsing ([`dsn`]) and TLS ([`tls`]).
//! Secrets never leave this module in printable form.
//!
//! Every session pins its search path to [`SEARCH_PATH`] as soon as it is connected, and
//! every transaction of the daemon pins it again ([`SET_LOCAL_SEARCH_PATH`]), so that no
//! statement resolves a name to an object someone else could have created (see
//! docs/ARCHITECTURE.md, "The search path").
//!
//! Dependencies run one way: `config` <- `db` <- `pass`, `daemon`, `preflight`.

mod dsn;
pub mod exec;
mod tls;

pub use exec::{Exec, Param, StatementMode, Stmt};

use dsn::{parse_dsn, DsnTls};
use tls::connector;

use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, RecyclingMethod, Runtime};
pub use deadpool_postgres::{Object, Pool};

use crate::config::{Config, ConfigError, DatabaseConfig};
use crate::error::Error;

/// The daemon's search path: the catalog, then the session's own temporary schema, named
/// last so that it is not searched first for relations (functions and operators are never
/// looked up there). Nothing on it can be written by another role.
pub const SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Pins [`SEARCH_PATH`] for the rest of the session. Safe under any search path: the one
/// function it calls is schema-qualified and its arguments are typed.
const PIN_SEARCH_PATH: &str =
    "SELECT pg_catalog.set_config('search_path'::text, 'pg_catalog, pg_temp'::text, false)";

/// Pins [`SEARCH_PATH`] for the rest of a transaction, as its first statement: a
/// transaction pooler may hand each transaction a server connection that never saw
/// [`PIN_SEARCH_PATH`]. A utility statement: it resolves no name at all.
pub(crate) const SET_LOCAL_SEARCH_PATH: &str = "SET LOCAL search_path = pg_catalog, pg_temp";

/// Pins the search path of a new session (see [`PIN_SEARCH_PATH`]).
async fn pin_search_path(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(PIN_SEARCH_PATH).await
}

/// A pool for the daemon. Connections are created lazily, so building it never fails on a
/// dead server; the first `get` does. TLS follows the DSN's `sslmode` and `[tls]` (see
/// [`tls`]); a CA file that cannot be read fails here, by name.
pub fn build_pool(cfg: &Config) -> Result<Pool, Error> {
    let db = &cfg.database;
    let (mut pg, dsn_tls) = connection_settings(db)?;
    bound_network_waits(&mut pg, cfg);
    let tls = connector(&dsn_tls, &cfg.tls)?;
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(db.pool_size)
        .runtime(Runtime::Tokio1)
        // Bounded waits: a dead server fails the pass instead of hanging it.
        .create_timeout(Some(db.connect_timeout))
        .wait_timeout(Some(db.connect_timeout + Duration::from_secs(5)))
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move { pin_search_path(client).await.map_err(HookError::Backend) })
        }))
        .build()
        .map_err(|e| Error::Pool(e.to_string()))
}

/// Parsed connection settings, with the application name and connect timeout filled in
/// when the DSN has none.
pub fn pg_config(db: &DatabaseConfig) -> Result<tokio_postgres::Config, ConfigError> {
    connection_settings(db).map(|(pg, _)| pg)
}

/// [`pg_config`] plus the DSN's libpq TLS parameters (`sslmode=verify-full`,
/// `sslrootcert`, ...), which tokio-postgres cannot parse itself; see [`tls`].
pub(crate) fn connection_settings(
    db: &DatabaseConfig,
) -> Result<(tokio_postgres::Config, DsnTls), ConfigError> {
    let dsn = db.connection_string()?;
    // The parser's messages never echo the password; the DSN itself is not shown.
    let (mut pg, tls) = parse_dsn(dsn.expose())?;
    if pg.get_application_name().is_none() {
        pg.application_name(&db.application_name);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(db.connect_timeout);
    }
    Ok((pg, tls))
}

/// Where a DSN points, without the password: `user@host:port/dbname`.
pub fn describe_target(pg: &tokio_postgres::Config) -> String {
    let host = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = pg
        .get_ports()
        .first()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "5432".into());
    format!(
        "{}@{}:{}/{}",
        pg.get_user().unwrap_or("?"),
        if host.is_empty() {
            "localhost".into()
        } else {
            host
        },
        port,
        pg.get_dbname().unwrap_or("?")
    )
}

/// Takes a connection from the pool, naming the target (never the password) on failure.
pub async fn connect(pool: &Pool, target: &str) -> Result<deadpool_postgres::Object, Error> {
    pool.get().await.map_err(|e| {
        let cause = match &e {
            deadpool_postgres::PoolError::Backend(pg) => crate::error::describe_pg_error(pg),
            deadpool_postgres::PoolError::PostCreateHook(HookError::Backend(pg)) => format!(
                "pinning the search path: {}",
                crate::error::describe_pg_error(pg)
            ),
            other => other.to_string(),
        };
        Error::Pool(format!("{target}: {cause}"))
    })
}

/// A connection outside the pool, for state that must live exactly as long as one session
/// (the leader's session advisory lock). Same DSN and TLS settings as the pool.
pub(crate) async fn connect_dedicated(cfg: &Config) -> Result<tokio_postgres::Client, Error> {
    let (mut pg, dsn_tls) = connection_settings(&cfg.database)?;
    bound_network_waits(&mut pg, cfg);
    let tls = connector(&dsn_tls, &cfg.tls)?;
    let target = describe_target(&pg);
    let (client, connection) = pg
        .connect(tls)
        .await
        .map_err(|e| Error::Pool(format!("{target}: {}", crate::error::describe_pg_error(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "dedicated connection ended");
        }
    });
    pin_search_path(&client)
        .await
        .map_err(|e| Error::Pool(format!("{target}: {}", crate::error::describe_pg_error(&e))))?;
    Ok(client)
}

/// A server that vanishes without closing the connection (a cut cable, a black-holing
/// proxy) must not hang a pass: TCP keepalives find an idle dead peer, and
/// `tcp_user_timeout` bounds how long sent data may stay unacknowledged. Both are only set
/// when the DSN does not choose them.
fn bound_network_waits(pg: &mut tokio_postgres::Config, cfg: &Config) {
    if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg.keepalives_idle(Duration::from_secs(30));
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(Duration::from_secs(10));
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(3);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(cfg.pass.statement_timeout + Duration::from_secs(30));
    }
}
