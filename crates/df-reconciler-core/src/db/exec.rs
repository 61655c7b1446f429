//! How every statement reaches the server, so that none depends on a server session
//! outliving a transaction (a transaction-mode pooler such as PgBouncer hands each
//! transaction, and each statement outside one, to any of its server connections).
//!
//! tokio-postgres's `query(&str, ..)` prepares a *named* statement (`s1`, `s2`, ...),
//! executes it in a second exchange and closes it later: behind a transaction pooler the
//! three may land on different server connections (`prepared statement "s4" does not
//! exist`), and a name one client left on a server connection collides with another's
//! (`prepared statement "s1" already exists`). So:
//! - a one-off statement (`&str`) always runs as the *unnamed* statement, its parameter
//!   types given by the Rust values ([`Param`]): Parse, Bind, Execute and Sync in one
//!   exchange, one round trip instead of two, valid on any server connection;
//! - a statement a pass runs many times ([`Stmt`]) is prepared once on the pass's
//!   connection ([`StatementMode::Prepared`], the default: one round trip per execution,
//!   no planning of the text each time), or, behind a transaction pooler, kept as text and
//!   run unnamed like a one-off ([`StatementMode::Unnamed`]).
//!
//! [`Exec`] is the one entry point: `fetch_all`, `fetch_one`, `fetch_opt`, `exec` on any
//! client or transaction, with a `&str` or a [`Stmt`].

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::{Timestamp, ToSql, Type};
use tokio_postgres::{Error, GenericClient, Row, Statement};

/// Whether the pass's repeated statements are prepared (named, per connection) or sent
/// as unnamed statements each time (`database.pooler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementMode {
    /// Prepared once per pass on its connection: the fastest, needs the server session
    /// for the whole pass (a direct connection, or a session-mode pooler).
    Prepared,
    /// Never a named statement: each execution parses its text (`database.pooler =
    /// "transaction"`).
    Unnamed,
}

/// A statement a pass runs many times: prepared, or its text (see [`StatementMode`]).
#[derive(Debug, Clone)]
pub enum Stmt {
    /// Prepared on the pass's connection.
    Prepared(Statement),
    /// Sent as the unnamed statement on every execution.
    Unnamed(Arc<str>),
}

impl Stmt {
    /// Prepares `sql` on `client`, or keeps its text, as `mode` says.
    pub(crate) async fn new(
        client: &impl GenericClient,
        sql: &str,
        mode: StatementMode,
    ) -> Result<Self, Error> {
        match mode {
            StatementMode::Prepared => Ok(Stmt::Prepared(client.prepare(sql).await?)),
            StatementMode::Unnamed => Ok(Stmt::Unnamed(Arc::from(sql))),
        }
    }
}

/// What [`Exec`] runs: a one-off text, or a pass's [`Stmt`].
#[derive(Clone, Copy)]
pub enum Sql<'a> {
    /// Run as the unnamed statement.
    Text(&'a str),
    /// Prepared on this connection.
    Prepared(&'a Statement),
}

impl<'a> From<&'a str> for Sql<'a> {
    fn from(s: &'a str) -> Self {
        Sql::Text(s)
    }
}

impl<'a> From<&'a String> for Sql<'a> {
    fn from(s: &'a String) -> Self {
        Sql::Text(s)
    }
}

impl<'a> From<&'a Stmt> for Sql<'a> {
    fn from(s: &'a Stmt) -> Self {
        match s {
            Stmt::Unnamed(text) => Sql::Text(text),
            Stmt::Prepared(statement) => Sql::Prepared(statement),
        }
    }
}

/// A statement parameter whose PostgreSQL type follows from its Rust type, so that a
/// statement can run without preparing it first. Every statement of the daemon casts its
/// parameters where the server could infer another type (`$1::text[]`).
pub trait Param: Sync {
    /// The value, for the driver.
    fn value(&self) -> &(dyn ToSql + Sync);
    /// Its type, declared in the Parse message.
    fn pg_type(&self) -> Type;
}

/// The PostgreSQL type of a Rust type (also when the value is NULL).
pub trait PgType {
    /// The declared type.
    fn pg_type() -> Type;
}

impl<T: ToSql + Sync + PgType> Param for T {
    fn value(&self) -> &(dyn ToSql + Sync) {
        self
    }
    fn pg_type(&self) -> Type {
        T::pg_type()
    }
}

macro_rules! pg_types {
    ($($rust:ty => $pg:expr),* $(,)?) => {
        $(impl PgType for $rust {
            fn pg_type() -> Type {
                $pg
            }
        })*
    };
}

pg_types! {
    bool => Type::BOOL,
    i16 => Type::INT2,
    i32 => Type::INT4,
    i64 => Type::INT8,
    f64 => Type::FLOAT8,
    String => Type::TEXT,
    &str => Type::TEXT,
    SystemTime => Type::TIMESTAMPTZ,
    Timestamp<SystemTime> => Type::TIMESTAMPTZ,
    Vec<Option<Timestamp<SystemTime>>> => Type::TIMESTAMPTZ_ARRAY,
    Vec<Option<SystemTime>> => Type::TIMESTAMPTZ_ARRAY,
    Vec<Option<String>> => Type::TEXT_ARRAY,
    serde_json::Value => Type::JSONB,
    Vec<String> => Type::TEXT_ARRAY,
    Vec<&String> => Type::TEXT_ARRAY,
    Vec<&str> => Type::TEXT_ARRAY,
    &[String] => Type::TEXT_ARRAY,
    Vec<i64> => Type::INT8_ARRAY,
    Vec<i32> => Type::INT4_ARRAY,
    Vec<Option<u32>> => Type::OID_ARRAY,
}

impl<T: PgType> PgType for Option<T> {
    fn pg_type() -> Type {
        T::pg_type()
    }
}

impl<T: PgType + ?Sized> PgType for &T {
    fn pg_type() -> Type {
        T::pg_type()
    }
}

/// Runs statements without ever leaving a named statement behind a transaction (see the
/// module docs). Implemented for every tokio-postgres client and transaction.
#[allow(async_fn_in_trait)]
pub trait Exec {
    /// Every row.
    async fn fetch_all<'a>(
        &self,
        sql: impl Into<Sql<'a>>,
        params: &[&dyn Param],
    ) -> Result<Vec<Row>, Error>;

    /// Exactly one row (an error otherwise).
    async fn fetch_one<'a>(
        &self,
        sql: impl Into<Sql<'a>>,
        params: &[&dyn Param],
    ) -> Result<Row, Error>;

    /// At most one row (an error for more).
    async fn fetch_opt<'a>(
        &self,
        sql: impl Into<Sql<'a>>,
        params: &[&dyn Param],
    ) -> Result<Option<Row>, Error>;

    /// The number of rows the statement affected.
    async fn exec<'a>(&self, sql: impl Into<Sql<'a>>, params: &[&dyn Param]) -> Result<u64, Error>;
}

impl<C: GenericClient> Exec for C {
    async fn fetch_all<'a>(
        &self,
        sql: impl Into<Sql<'a>>,
        params: &[&dyn Param],
    ) -> Result<Vec<Row>, Error> {
        match sql.into() {
            Sql::Text(text) => self.query_typed(text, &typed(params)).await,
            Sql::Prepared(st) => self.query(st, &values(params)).await,
        }
    }

    async fn fetch_one<'a>(
        &self,
        sql: impl Into<Sql<'a>>,
        params: &[&dyn Param],
    ) -> Result<Row, Error> {
        match sql.into() {
            Sql::Text(text) => self.query_typed_one(text, &typed(params)).await,
            Sql::Prepared(st) => self.query_one(st, &values(params)).await,
        }
    }

    async fn fetch_opt<'a>(
        &self,
        sql: impl Into<Sql<'a>>,
        params: &[&dyn Param],
    ) -> Result<Option<Row>, Error> {
        match sql.into() {
            Sql::Text(text) => self.query_typed_opt(text, &typed(params)).await,
            Sql::Prepared(st) => self.query_opt(st, &values(params)).await,
        }
    }

    async fn exec<'a>(&self, sql: impl Into<Sql<'a>>, params: &[&dyn Param]) -> Result<u64, Error> {
        match sql.into() {
            Sql::Text(text) => {
                let rows = self
                    .query_typed_raw(text, params.iter().map(|p| (p.value(), p.pg_type())))
                    .await?;
                pin_mut!(rows);
                while rows.try_next().await?.is_some() {}
                Ok(rows.rows_affected().unwrap_or(0))
            }
            Sql::Prepared(st) => self.execute(st, &values(params)).await,
        }
    }
}

fn typed<'p>(params: &[&'p dyn Param]) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    params.iter().map(|p| (p.value(), p.pg_type())).collect()
}

fn values<'p>(params: &[&'p dyn Param]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p.value()).collect()
}
