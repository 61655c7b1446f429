//! The operator's configuration.
//!
//! Precedence: built-in defaults < TOML file < `DF_RECONCILER__SECTION__KEY` environment
//! variables < `--set section.key=value` flags. Every section rejects unknown keys by name,
//! durations use humantime syntax, and `Config::validate` enforces the guards that keep a
//! typo from wiping a database.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::TerminalStatus;
use crate::rules::RetentionRule;

/// Windows shorter than this need `allow_short_retention = true`: `30m` typed for `30M`
/// (months) must not delete everything older than half an hour.
pub(crate) const SHORT_RETENTION_FLOOR: Duration = Duration::from_secs(3600);

/// Prefix of the environment variables that override configuration keys.
pub(crate) const ENV_PREFIX: &str = "DF_RECONCILER";

/// Why a configuration was rejected; every variant is a usage error (exit code 2), so
/// nothing is attempted against the database.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment could not be read or parsed (unknown key, wrong type).
    #[error("cannot read configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A key parsed but its value is refused (out of range, a short window without
    /// consent, contradictory keys).
    #[error("invalid configuration: {key} = {value}: {reason}")]
    Invalid {
        /// The offending key as `section.key`, so the operator knows what to fix.
        key: &'static str,
        /// The refused value as shown in the message (never a secret).
        value: String,
        /// Why the value is refused.
        reason: String,
    },
    /// A `[[retention.rules]]` entry's key parsed but its value is refused.
    #[error(
        "invalid configuration: retention.rules[{index}] ({name:?}): {key} = {value}: {reason}"
    )]
    InvalidRule {
        /// The rule's position in the file, from 0.
        index: usize,
        /// The rule's name as written (possibly the refused value itself).
        name: String,
        /// The offending key of the rule.
        key: &'static str,
        /// The refused value as shown in the message.
        value: String,
        /// Why the value is refused.
        reason: String,
    },
    /// A `--set` argument that is not of the form `section.key=value`.
    #[error("invalid --set {0:?}: expected section.key=value")]
    BadOverride(String),
    /// `database.url_file` cannot be read, or holds nothing.
    #[error("cannot read database.url_file {path}: {source}")]
    UrlFile {
        /// The file named by `database.url_file`.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// Neither `database.url` nor `database.url_file` is set, and a command needs the
    /// database.
    #[error("no database configured: set database.url or database.url_file (env DF_RECONCILER__DATABASE__URL)")]
    NoDatabase,
    /// The connection string does not parse, or combines TLS options libpq would refuse;
    /// the message never carries the password.
    #[error("database.url is not a valid PostgreSQL connection string: {0}")]
    BadDsn(String),
    /// The TLS settings cannot be used (unreadable CA file, no trusted roots, ...).
    #[error("TLS: {0}")]
    Tls(String),
}

/// The whole configuration, one field per TOML section; see [`Config::load`] for where
/// the values come from.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[database]`: where to connect and how.
    pub database: DatabaseConfig,
    /// `[tls]`: whom to trust when the DSN's `sslmode` asks for TLS.
    pub tls: TlsConfig,
    /// `[schemas]`: where the two stores live.
    pub schemas: SchemasConfig,
    /// `[retention]`: how long terminal instances and orphans are kept.
    pub retention: RetentionConfig,
    /// `[pass]`: scheduling and pacing of passes, and the bounds of each batch.
    pub pass: PassConfig,
    /// `[http]`: the /metrics, /healthz and /readyz endpoint.
    pub http: HttpConfig,
    /// `[log]`: the log line format.
    pub log: LogConfig,
    /// `[audit]`: the daemon's own audit trail.
    pub audit: AuditConfig,
}

/// A connection string that never appears in logs, reports or `Debug` output.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a connection string so it can no longer leak through `Debug`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, only for handing to the driver; never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// `[database]`: the one database holding both stores.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// libpq URL or key=value string. Prefer `url_file` in production so the secret stays
    /// out of the environment and the process list.
    pub url: Option<SecretString>,
    /// File holding the connection string (systemd credentials, Kubernetes secrets).
    pub url_file: Option<PathBuf>,
    /// Connections in the pool; a pass uses one at a time, the rest serve checks.
    #[serde(deserialize_with = "strict::integer")]
    pub pool_size: usize,
    /// Bound on connecting (default 10s): a dead server fails the pass, never hangs it.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Shown in pg_stat_activity so DBAs can tell the reconciler's sessions apart.
    pub application_name: String,
    /// What sits between the daemon and PostgreSQL. A transaction-mode pooler (PgBouncer
    /// `pool_mode = transaction`, most managed poolers) hands every transaction to any of
    /// its server connections: then no named prepared statement is used, and no session
    /// advisory lock (leader election falls back to the batch fence alone).
    pub pooler: Pooler,
}

/// `database.pooler`: the kind of connection pooler in front of PostgreSQL, if any.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// A direct connection, or a pooler in session mode: one server session per client
    /// connection for as long as it lives.
    #[default]
    None,
    /// A pooler in transaction mode, of any version: server sessions change between
    /// transactions.
    Transaction,
}

impl Pooler {
    /// How a pass runs its repeated statements behind this pooler.
    pub fn statement_mode(self) -> crate::db::StatementMode {
        match self {
            Pooler::None => crate::db::StatementMode::Prepared,
            Pooler::Transaction => crate::db::StatementMode::Unnamed,
        }
    }

    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Transaction => "transaction",
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            pool_size: 2,
            connect_timeout: Duration::from_secs(10),
            application_name: "df-reconciler".into(),
            pooler: Pooler::None,
        }
    }
}

impl DatabaseConfig {
    /// The connection string, read from `url_file` when that is set.
    pub(crate) fn connection_string(&self) -> Result<SecretString, ConfigError> {
        match (&self.url, &self.url_file) {
            (Some(url), None) if url.expose().trim().is_empty() => Err(ConfigError::Invalid {
                key: "database.url",
                value: "\"\"".into(),
                reason: "is empty".into(),
            }),
            (Some(url), None) => Ok(url.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| SecretString::new(s.trim().to_owned()))
                .and_then(|s| {
                    if s.expose().is_empty() {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "the file is empty",
                        ))
                    } else {
                        Ok(s)
                    }
                })
                .map_err(|source| ConfigError::UrlFile {
                    path: path.clone(),
                    source,
                }),
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                key: "database.url_file",
                value: "<set>".into(),
                reason: "set database.url or database.url_file, not both".into(),
            }),
            (None, None) => Err(ConfigError::NoDatabase),
        }
    }
}

/// `[schemas]`: the schema names of the two stores.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemasConfig {
    /// The pg_durable control-plane schema (default `df`).
    pub control: String,
    /// `auto` asks `df.duroxide_schema()`, falling back to `duroxide` when it is absent.
    pub engine: String,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        Self {
            control: "df".into(),
            engine: "auto".into(),
        }
    }
}

/// `[retention]`: what counts as expired. Windows are measured from the moment an
/// instance became terminal.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Default window for every terminal status.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Window for `completed` instances; None: `window`.
    #[serde(with = "humantime_serde")]
    pub completed: Option<Duration>,
    /// Window for `failed` instances; None: `window`.
    #[serde(with = "humantime_serde")]
    pub failed: Option<Duration>,
    /// Window for `cancelled` instances; None: `window`.
    #[serde(with = "humantime_serde")]
    pub cancelled: Option<Duration>,
    /// At most this many terminal instances are retained, newest first.
    #[serde(deserialize_with = "strict::integer")]
    pub hard_cap: u64,
    /// Floor for reclaiming orphans; applies even when `window` is 0.
    #[serde(with = "humantime_serde")]
    pub orphan_min_age: Duration,
    /// Consent for windows under one hour.
    #[serde(deserialize_with = "strict::boolean")]
    pub allow_short_retention: bool,
    /// Prune old generations (executions) of instances still retained: live loops, and
    /// terminal instances not yet expired.
    #[serde(deserialize_with = "strict::boolean")]
    pub prune_executions: bool,
    /// The newest generations of an instance kept by pruning, the current one included.
    #[serde(deserialize_with = "strict::integer")]
    pub keep_executions: u32,
    /// A generation is pruned only once it ended longer ago than this (a ContinuedAsNew
    /// generation ended when its successor started).
    #[serde(with = "humantime_serde")]
    pub execution_min_age: Duration,
    /// `[[retention.rules]]`: per-workload overrides, first match in file order wins
    /// (see [`crate::rules`]).
    pub rules: Vec<RetentionRule>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30 * 86_400),
            completed: None,
            failed: None,
            cancelled: None,
            hard_cap: 10_000,
            orphan_min_age: Duration::from_secs(3600),
            allow_short_retention: false,
            prune_executions: true,
            keep_executions: 10,
            execution_min_age: Duration::from_secs(3600),
            rules: Vec::new(),
        }
    }
}

impl RetentionConfig {
    /// The retention window of `status`: its override if set, else `window`.
    pub fn window_for(&self, status: TerminalStatus) -> Duration {
        let specific = match status {
            TerminalStatus::Completed => self.completed,
            TerminalStatus::Failed => self.failed,
            TerminalStatus::Cancelled => self.cancelled,
        };
        specific.unwrap_or(self.window)
    }

    /// Age an orphan engine root must reach: max(window, orphan_min_age).
    pub fn orphan_age(&self) -> Duration {
        self.window.max(self.orphan_min_age)
    }
}

/// `[pass]`: when passes run and how hard a pass may lean on the database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PassConfig {
    /// Time between passes in `run`; 0 disables passes (the daemon idles).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Roots per transaction.
    #[serde(deserialize_with = "strict::integer")]
    pub batch_size: u32,
    /// `SET LOCAL statement_timeout` per batch (> 0): a slow batch is rolled back, not
    /// left holding its row locks.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// `SET LOCAL lock_timeout` per batch (> 0): a batch never queues long behind the
    /// live engine.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Stop a pass (between batches) after this long; the next pass continues. None: no limit.
    #[serde(with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// Random delay before the first pass and added to each interval, so replicas started
    /// together do not collide on every tick.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Cap of the exponential backoff after a failed pass.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// Hold a session advisory lock on a dedicated connection; only the holder runs passes.
    #[serde(deserialize_with = "strict::boolean")]
    pub leader_election: bool,
    /// `run` counts drift between the stores in a pass only when the last count is at least
    /// this old: the counts read every live row (seconds at 1M rows), the deletions do not.
    /// 0: every pass. `once` always counts (unless `--no-drift`).
    #[serde(with = "humantime_serde")]
    pub drift_interval: Duration,
    /// While other sessions of the database are at work, a pass spends at most
    /// this percentage of its time in batches: after each batch it pauses for the batch's
    /// duration times (100 / this - 1). 100: never pause. An idle database is not slowed.
    #[serde(deserialize_with = "strict::integer")]
    pub busy_duty_percent: u32,
}

impl Default for PassConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(3600),
            batch_size: 1000,
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(2),
            max_duration: None,
            jitter: Duration::from_secs(10),
            retry_backoff_max: Duration::from_secs(300),
            leader_election: true,
            drift_interval: Duration::from_secs(3600),
            busy_duty_percent: 25,
        }
    }
}

/// `[http]`: the endpoint `run` serves for Prometheus and orchestrator probes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of /metrics, /healthz, /readyz; "" disables.
    pub listen: String,
    /// /readyz turns unready once passes have been failing for longer than this.
    #[serde(with = "humantime_serde")]
    pub ready_max_failing: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9187".into(),
            ready_max_failing: Duration::from_secs(900),
        }
    }
}

/// `[audit]`: the `passes` and `deletions` tables that record what the daemon did.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The daemon's own schema, created by `df-reconciler migrate`.
    pub schema: String,
    /// Apply pending migrations at start (under an advisory lock).
    #[serde(deserialize_with = "strict::boolean")]
    pub auto_migrate: bool,
    /// Write one row per removed root into `<schema>.deletions`, in the batch transaction.
    #[serde(deserialize_with = "strict::boolean")]
    pub record_deletions: bool,
    /// Rows of `passes` and `deletions` older than this are removed after each pass.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            schema: "df_reconciler".into(),
            auto_migrate: false,
            record_deletions: false,
            retention: Duration::from_secs(90 * 86_400),
        }
    }
}

/// `log.format`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal or journald.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// TLS of the database connections. Whether TLS is used, and how strictly the server is
/// checked, is the DSN's `sslmode` (libpq semantics, see `db::tls`); this section only
/// says whom to trust.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the server's certificate must chain to. None: the
    /// system's trust store (verify-ca / verify-full), no verification (prefer / require).
    /// A `sslrootcert` in the DSN takes precedence.
    pub ca_file: Option<PathBuf>,
}

/// `[log]`: logging settings (`RUST_LOG` or `-v` set the level).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (default `text`); every line of a pass carries its `pass_id`.
    pub format: LogFormat,
}

impl Config {
    /// Whether `run` takes the session-level leader lock: `pass.leader_election`, except
    /// behind a transaction pooler, where a session lock means nothing (the server session
    /// holding it serves other clients' transactions) and the batch fence alone keeps
    /// replicas apart.
    pub fn leader_lock_in_use(&self) -> bool {
        self.pass.leader_election && self.database.pooler == Pooler::None
    }

    /// How statements and leader election run with this configuration, and why: one line
    /// each, for `check` and the start-up log.
    pub fn connection_modes(&self) -> Vec<String> {
        let pooler = self.database.pooler.as_str();
        let statements = match self.database.pooler {
            Pooler::None => format!(
                "statements: prepared once per pass on its connection (database.pooler = \"{pooler}\")"
            ),
            Pooler::Transaction => format!(
                "statements: never prepared by name, each sent as the unnamed statement with its parameter types (database.pooler = \"{pooler}\": server sessions change between transactions)"
            ),
        };
        let leader = match (self.pass.leader_election, self.database.pooler) {
            (true, Pooler::None) => "leader election: on, a session advisory lock on a dedicated connection (pass.leader_election = true)".to_owned(),
            (false, _) => "leader election: off, replicas are kept apart by the batch fence alone (pass.leader_election = false)".to_owned(),
            (true, Pooler::Transaction) => format!(
                "leader election: off, replicas are kept apart by the batch fence alone (database.pooler = \"{pooler}\": a session advisory lock means nothing behind it; pass.leader_election = true is ignored)"
            ),
        };
        vec![statements, leader]
    }

    /// Loads defaults, then `file`, then the environment, then `overrides` (`section.key=value`),
    /// and validates the result.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, vars, overrides)
    }

    /// [`Config::load`] with an explicit environment, so tests need not mutate the process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file.filter(|p| p.is_dir()) {
            return Err(ConfigError::Load(config::ConfigError::Message(format!(
                "configuration file {} is a directory",
                path.display()
            ))));
        }
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env_map: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env_map)),
        );
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .filter(|(k, _)| k.contains('.'))
                .ok_or_else(|| ConfigError::BadOverride(item.clone()))?;
            builder = builder.set_override(key.trim(), value.trim())?;
        }
        let cfg: Config = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The guards of the operator contract. Returns the first problem, naming key and value.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: &str| ConfigError::Invalid {
            key,
            value,
            reason: reason.into(),
        };
        let r = &self.retention;
        if !r.allow_short_retention {
            let windows = [
                ("retention.window", Some(r.window)),
                ("retention.completed", r.completed),
                ("retention.failed", r.failed),
                ("retention.cancelled", r.cancelled),
                ("retention.orphan_min_age", Some(r.orphan_min_age)),
                ("retention.execution_min_age", Some(r.execution_min_age)),
            ];
            for (key, value) in windows {
                if let Some(d) = value.filter(|d| *d < SHORT_RETENTION_FLOOR) {
                    return Err(invalid(
                        key,
                        humantime::format_duration(d).to_string(),
                        "shorter than 1h; set retention.allow_short_retention = true if you mean it",
                    ));
                }
            }
        }
        crate::rules::validate(r)?;
        let p = &self.pass;
        // PostgreSQL's timeouts are int milliseconds; tcp_user_timeout adds 30 s.
        let pg_max = Duration::from_millis(i32::MAX as u64 - 30_000);
        for (key, d) in [
            ("pass.statement_timeout", p.statement_timeout),
            ("pass.lock_timeout", p.lock_timeout),
        ] {
            if d > pg_max {
                return Err(invalid(
                    key,
                    humantime::format_duration(d).to_string(),
                    "must be at most 24 days",
                ));
            }
        }
        let century = Duration::from_secs(100 * 365 * 86_400);
        let millennium = Duration::from_secs(1000 * 365 * 86_400);
        for (key, d, max) in [
            ("retention.window", Some(r.window), millennium),
            ("retention.completed", r.completed, millennium),
            ("retention.failed", r.failed, millennium),
            ("retention.cancelled", r.cancelled, millennium),
            (
                "retention.orphan_min_age",
                Some(r.orphan_min_age),
                millennium,
            ),
            (
                "retention.execution_min_age",
                Some(r.execution_min_age),
                millennium,
            ),
            ("audit.retention", Some(self.audit.retention), millennium),
            ("pass.interval", Some(p.interval), century),
            ("pass.jitter", Some(p.jitter), century),
            ("pass.drift_interval", Some(p.drift_interval), century),
            ("pass.max_duration", p.max_duration, century),
            ("pass.retry_backoff_max", Some(p.retry_backoff_max), century),
            (
                "http.ready_max_failing",
                Some(self.http.ready_max_failing),
                century,
            ),
            (
                "database.connect_timeout",
                Some(self.database.connect_timeout),
                century,
            ),
        ] {
            if let Some(d) = d.filter(|d| *d > max) {
                return Err(invalid(
                    key,
                    humantime::format_duration(d).to_string(),
                    "is too long",
                ));
            }
        }
        if r.keep_executions == 0 {
            return Err(invalid(
                "retention.keep_executions",
                "0".into(),
                "must be at least 1 (the current generation is always kept)",
            ));
        }
        if p.batch_size == 0 {
            return Err(invalid("pass.batch_size", "0".into(), "must be at least 1"));
        }
        if !(1..=100).contains(&p.busy_duty_percent) {
            return Err(invalid(
                "pass.busy_duty_percent",
                p.busy_duty_percent.to_string(),
                "must be between 1 and 100",
            ));
        }
        if p.statement_timeout.is_zero() {
            return Err(invalid(
                "pass.statement_timeout",
                "0s".into(),
                "must be positive (0 would disable the timeout)",
            ));
        }
        if p.lock_timeout.is_zero() {
            return Err(invalid(
                "pass.lock_timeout",
                "0s".into(),
                "must be positive (0 would wait forever on a lock)",
            ));
        }
        if self.database.pool_size == 0 {
            return Err(invalid(
                "database.pool_size",
                "0".into(),
                "must be at least 1",
            ));
        }
        for (key, name) in [
            ("schemas.control", &self.schemas.control),
            ("schemas.engine", &self.schemas.engine),
            ("audit.schema", &self.audit.schema),
        ] {
            if name.is_empty() || name.len() > 63 {
                return Err(invalid(key, format!("{name:?}"), "must be 1 to 63 bytes"));
            }
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "http.listen",
                format!("{:?}", self.http.listen),
                "expected host:port (e.g. 127.0.0.1:9187) or \"\" to disable",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)], overrides: &[&str]) -> Result<Config, ConfigError> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::load_from(Some(file.path()), env, &overrides)
    }

    #[test]
    fn defaults_match_the_operator_contract() {
        let c = Config::load_from(None, Vec::new(), &[]).unwrap();
        assert_eq!(c.retention.window, Duration::from_secs(30 * 86_400));
        assert_eq!(c.retention.hard_cap, 10_000);
        assert_eq!(c.retention.orphan_min_age, Duration::from_secs(3600));
        assert_eq!(c.pass.batch_size, 1000);
        assert_eq!(c.schemas.engine, "auto");
        assert_eq!(c.http.listen, "127.0.0.1:9187");
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let c = load(
            "[pass]\nbatch_size = 10\ninterval = \"5m\"\n[retention]\nfailed = \"90d\"\n",
            &[("DF_RECONCILER__PASS__BATCH_SIZE", "20")],
            &["pass.interval=7m"],
        )
        .unwrap();
        assert_eq!(c.pass.batch_size, 20);
        assert_eq!(c.pass.interval, Duration::from_secs(420));
        assert_eq!(
            c.retention.window_for(TerminalStatus::Failed),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            c.retention.window_for(TerminalStatus::Completed),
            c.retention.window
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load("[pass]\nbatch_sise = 10\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_sise"), "{err}");
        let err = load("[passes]\n", &[], &[]).unwrap_err().to_string();
        assert!(err.contains("passes"), "{err}");
    }

    #[test]
    fn short_windows_need_consent() {
        let err = load("[retention]\nwindow = \"30m\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.window"), "{err}");
        assert!(load(
            "[retention]\nwindow = \"30m\"\norphan_min_age = \"1h\"\nallow_short_retention = true\n",
            &[],
            &[]
        )
        .is_ok());
        let err = load("[retention]\ncancelled = \"10s\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.cancelled"), "{err}");
    }

    #[test]
    fn pruning_defaults_and_guards() {
        let c = load("", &[], &[]).unwrap();
        assert!(c.retention.prune_executions);
        assert_eq!(c.retention.keep_executions, 10);
        assert_eq!(c.retention.execution_min_age, Duration::from_secs(3600));
        let err = load("[retention]\nkeep_executions = 0\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.keep_executions"), "{err}");
        let err = load("[retention]\nexecution_min_age = \"5m\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("retention.execution_min_age"), "{err}");
        let c = load(
            "[retention]\nexecution_min_age = \"5s\"\nallow_short_retention = true\nkeep_executions = 1\nprune_executions = false\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.retention.execution_min_age, Duration::from_secs(5));
        assert_eq!(c.retention.keep_executions, 1);
        assert!(!c.retention.prune_executions);
    }

    #[test]
    fn bad_values_are_named() {
        for (toml, key) in [
            ("[pass]\nbatch_size = 0\n", "pass.batch_size"),
            ("[pass]\nbatch_size = -3\n", "batch_size"),
            ("[pass]\ninterval = \"soon\"\n", "interval"),
            ("[retention]\nhard_cap = \"many\"\n", "hard_cap"),
            ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
            ("[log]\nformat = \"xml\"\n", "xml"),
        ] {
            let err = load(toml, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let c = load(
            "[database]\nurl = \"postgres://u:hunter2@h/db\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn url_file_is_read_and_trimmed() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "host=localhost dbname=app").unwrap();
        let toml = format!("[database]\nurl_file = {:?}\n", f.path());
        let c = load(&toml, &[], &[]).unwrap();
        assert_eq!(
            c.database.connection_string().unwrap().expose(),
            "host=localhost dbname=app"
        );
    }
}

/// [`strict`]'s integer, for the rule keys of [`crate::rules`].
pub(crate) fn strict_integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    strict::integer(d)
}

/// Deserializers that refuse config-rs' own conversions between scalar types (a float
/// rounded into an integer, a number taken for a boolean). Strings are parsed strictly:
/// `--set` overrides arrive as strings.
mod strict {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};

    pub(super) fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        struct V;
        impl Visitor<'_> for V {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                v.trim()
                    .parse()
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        let v = d.deserialize_any(V)?;
        T::try_from(v).map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Unsigned(v), &"a smaller integer")
        })
    }

    pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
                Ok(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
                match v.trim() {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}
