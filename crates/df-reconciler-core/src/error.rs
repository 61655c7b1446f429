//! The library's errors and the exit codes the binary maps them to.

use crate::config::ConfigError;

/// Exit codes of the binary; documented in the README and stable for scripts.
pub mod exit_code {
    /// Success.
    pub const OK: i32 = 0;
    /// A pass or a check failed at run time (database unreachable, statement error).
    pub const FAILED: i32 = 1;
    /// Bad usage or invalid configuration: nothing was attempted.
    pub const USAGE: i32 = 2;
    /// The database is not safe to reconcile (missing schema or table, rows hidden by RLS,
    /// missing privilege, unknown per-instance engine table): refused, nothing deleted.
    pub const REFUSED: i32 = 3;
}

/// Everything that can stop a command; [`Error::exit_code`] maps it to the process's exit
/// code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The fail-closed checks found problems; each string names one.
    #[error("refusing to reconcile: {}", .0.join("; "))]
    Refused(Vec<String>),
    /// A statement failed or the connection broke; an open transaction is rolled back, and
    /// `run` retries after a backoff.
    #[error("database error while {context}: {}", describe_pg_error(.source))]
    Database {
        /// What the daemon was doing, so the log says which step failed.
        context: String,
        /// The driver's error, rendered with the server's message and SQLSTATE.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No connection could be opened (server down, authentication, TLS, connect timeout).
    #[error("cannot get a database connection: {0}")]
    Pool(String),
    /// A step of a pass got no answer within its client-side bound; its connection is
    /// discarded and the server rolls the open transaction back.
    #[error("no answer from the database while {what} within {}", humantime::format_duration(*.after))]
    ClientTimeout {
        /// The step that went unanswered.
        what: &'static str,
        /// How long the daemon waited.
        after: std::time::Duration,
    },
    /// The daemon cannot start (e.g. the HTTP address cannot be bound).
    #[error("cannot start: {0}")]
    Startup(String),
}

impl Error {
    /// The process exit code for this error (see [`exit_code`]): 2 for configuration, 3 for
    /// a refusal, 1 for anything that failed at run time.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => exit_code::USAGE,
            Error::Refused(_) => exit_code::REFUSED,
            Error::Database { .. }
            | Error::Pool(_)
            | Error::Startup(_)
            | Error::ClientTimeout { .. } => exit_code::FAILED,
        }
    }

    /// The SQLSTATE of a database error, if any.
    pub(crate) fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Database { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// Attaches what the daemon was doing to a database error.
pub(crate) trait DbContext<T> {
    fn context(self, what: &str) -> Result<T, Error>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> DbContext<T> for Result<T, tokio_postgres::Error> {
    fn context(self, what: &str) -> Result<T, Error> {
        self.with_context(|| what.to_owned())
    }
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Database {
            context: what(),
            source,
        })
    }
}

/// Renders a tokio-postgres error with the server's message and detail, which its
/// `Display` hides behind "db error".
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!(
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                s.push_str(&format!("; {detail}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s.push_str(tls_hint(&s));
            s
        }
    }
}

/// What an operator should look at after a TLS failure, appended to connection errors;
/// empty when `message` is not one.
fn tls_hint(message: &str) -> &'static str {
    if message.contains("invalid peer certificate") {
        " (the server's certificate is not trusted: check sslmode and the CA in tls.ca_file or the DSN's sslrootcert)"
    } else if message.contains("server does not support TLS") {
        " (sslmode requires TLS: enable ssl on the server, or lower sslmode)"
    } else {
        ""
    }
}
