//! The real pg_durable extension as a test tier: a throwaway cluster whose background
//! worker (the duroxide engine) runs real workflows beside the daemon under test.
//!
//! Nothing of pg_durable is part of this crate. The tier uses the extension when the
//! server binaries the throwaway cluster would run have it installed
//! ([`real_extension_available`]); callers skip their test otherwise.
//!
//! [`RealEngine::start`]:
//! 1. starts a [`ThrowawayCluster`] with `shared_preload_libraries = 'pg_durable'` (the
//!    extension refuses any other way of being loaded), its worker serving database
//!    [`DATABASE`] as `postgres`, superuser instances allowed (tests run as the
//!    superuser) and pg_durable's own reconcile off (`reconcile_interval = 0`: the daemon
//!    under test is the only thing that deletes). The worker connects over TCP to
//!    127.0.0.1 on the server's own port without a password, which the cluster's listen
//!    address and trust authentication allow. The cluster stops with an immediate
//!    shutdown (on drop, on restart, when the process dies): the worker can keep a fast
//!    one waiting.
//! 2. runs `CREATE DATABASE` and `CREATE EXTENSION pg_durable`, then a CHECKPOINT (the
//!    cluster commits asynchronously, and the restart below is immediate);
//! 3. restarts the server: a running worker only polls for its database and the extension
//!    every 5-10 s, one started with both in place is ready within a second;
//! 4. waits (30 s at most) until the worker has created `_duroxide._worker_ready`, with its
//!    row, and written an epoch (`df._worker_epoch`) since this start.
//!
//! The worker serves ONE database, so each [`RealEngine`] is a cluster of its own.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::throwaway::{children_of, server_bindir, simple_query, ClusterOptions};
use crate::{ThrowawayCluster, ThrowawayError};

/// The database pg_durable's worker serves on a [`RealEngine`] cluster.
pub const DATABASE: &str = "durable";

/// Budget for the worker to become ready after the restart (observed: well under a
/// second; a first start without the restart takes 5-10 s).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
/// Per read of a set-up statement (CREATE EXTENSION takes about a second).
const SQL_TIMEOUT: Duration = Duration::from_secs(60);
/// The process title of pg_durable's background worker.
const WORKER_TITLE: &str = "postgres: pg_durable_worker";

/// Why the real extension cannot be used, or a [`RealEngine`] could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RealEngineError {
    /// The extension (or the server binaries) is not installed: the tier is skipped.
    #[error("{0}")]
    Unavailable(String),
    /// The throwaway cluster could not be started or restarted.
    #[error(transparent)]
    Cluster(#[from] ThrowawayError),
    /// A set-up statement failed.
    #[error("{what} failed: {message}")]
    Sql {
        /// The statement, or what it was for.
        what: String,
        /// The server's error.
        message: String,
    },
    /// The worker did not become ready within the deadline.
    #[error(
        "pg_durable's background worker was not ready within {waited:?} (last check: \
         {last_check}); end of the server log:\n{log_tail}"
    )]
    NotReady {
        /// How long it was waited for.
        waited: Duration,
        /// What the last readiness check saw.
        last_check: String,
        /// The end of the server log.
        log_tail: String,
    },
    /// The worker process could not be found or signalled.
    #[error("pg_durable's background worker: {0}")]
    Worker(String),
}

/// `Ok` when the server binaries a throwaway cluster would run have pg_durable installed
/// (its control file and its library); otherwise one line saying what is missing, e.g.
/// `pg_durable is not installed for this PostgreSQL (no
/// /usr/share/postgresql/15/extension/pg_durable.control)`.
pub fn real_extension_available() -> Result<(), String> {
    let bindir = server_bindir().map_err(|e| e.to_string())?;
    let dirs = InstallDirs::of(&bindir)?;
    let control = dirs.sharedir.join("extension").join("pg_durable.control");
    if !control.is_file() {
        return Err(format!(
            "pg_durable is not installed for this PostgreSQL (no {})",
            control.display()
        ));
    }
    let library = dirs.pkglibdir.join("pg_durable.so");
    if !library.is_file() {
        return Err(format!(
            "pg_durable's library is not installed for this PostgreSQL (no {}, though {} exists)",
            library.display(),
            control.display()
        ));
    }
    Ok(())
}

/// Where the installation that owns a bindir keeps extension files.
struct InstallDirs {
    sharedir: PathBuf,
    pkglibdir: PathBuf,
}

impl InstallDirs {
    /// Asks the `pg_config` of that installation (next to the binaries, symlinks
    /// resolved), else derives Debian's layout (`/usr/lib/postgresql/<ver>/bin` ->
    /// `/usr/share/postgresql/<ver>`, `/usr/lib/postgresql/<ver>/lib`), else asks the
    /// `pg_config` on PATH if it names the same binaries.
    fn of(bindir: &Path) -> Result<Self, String> {
        // PATH may hold symlinks (e.g. /usr/local/bin/postgres): follow them to the
        // installation's own bindir.
        let real_bindir = fs::canonicalize(bindir.join("postgres"))
            .ok()
            .and_then(|postgres| postgres.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| bindir.to_path_buf());
        for pg_config in [real_bindir.join("pg_config"), bindir.join("pg_config")] {
            if let Some(dirs) = Self::from_pg_config(&pg_config, None) {
                return Ok(dirs);
            }
        }
        if let Some(version) = debian_version(&real_bindir) {
            return Ok(InstallDirs {
                sharedir: PathBuf::from(format!("/usr/share/postgresql/{version}")),
                pkglibdir: PathBuf::from(format!("/usr/lib/postgresql/{version}/lib")),
            });
        }
        Self::from_pg_config(Path::new("pg_config"), Some(&real_bindir)).ok_or_else(|| {
            format!(
                "cannot tell where the PostgreSQL in {} keeps its extensions (no pg_config \
                 next to it or on PATH for it, and not Debian's layout)",
                real_bindir.display()
            )
        })
    }

    /// `pg_config --sharedir --pkglibdir --bindir`; with `same_bindir`, only when its
    /// bindir is that one.
    fn from_pg_config(pg_config: &Path, same_bindir: Option<&Path>) -> Option<Self> {
        let output = Command::new(pg_config)
            .args(["--sharedir", "--pkglibdir", "--bindir"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8(output.stdout).ok()?;
        let mut lines = text.lines().map(str::trim);
        let (sharedir, pkglibdir, its_bindir) = (lines.next()?, lines.next()?, lines.next()?);
        if let Some(expected) = same_bindir {
            if fs::canonicalize(its_bindir).ok()? != fs::canonicalize(expected).ok()? {
                return None;
            }
        }
        Some(InstallDirs {
            sharedir: PathBuf::from(sharedir),
            pkglibdir: PathBuf::from(pkglibdir),
        })
    }
}

/// `15` for `/usr/lib/postgresql/15/bin`.
fn debian_version(bindir: &Path) -> Option<String> {
    let version = bindir
        .strip_prefix("/usr/lib/postgresql")
        .ok()?
        .parent()
        .filter(|_| bindir.ends_with("bin"))?;
    let version = version.to_str()?;
    (!version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .then(|| version.to_owned())
}

/// A throwaway cluster with pg_durable's worker running and ready, serving [`DATABASE`].
/// Dropping it stops the server immediately and removes its folder.
pub struct RealEngine {
    cluster: ThrowawayCluster,
    /// Length of the server log when the worker became ready: what came before is
    /// start-up noise (e.g. the worker looking for a database that did not exist yet).
    ready_log_offset: u64,
}

impl RealEngine {
    /// Starts the cluster, creates [`DATABASE`] and the extension, and waits until the
    /// worker is ready (about 2-3 s on a 2-core machine). Blocking.
    pub fn start() -> Result<Self, RealEngineError> {
        let began = Instant::now();
        let mut cluster = Self::cluster_with_worker()?;
        run_sql(&cluster, "postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        run_sql(&cluster, DATABASE, "CREATE EXTENSION pg_durable")?;
        // The cluster commits asynchronously and the restart is immediate: without a
        // checkpoint the extension's commit may not have reached the WAL yet.
        run_sql(&cluster, DATABASE, "CHECKPOINT")?;
        cluster.restart()?;
        wait_until_ready(&cluster)?;
        let ready_log_offset = fs::metadata(cluster.log_path()).map_or(0, |m| m.len());
        tracing::info!(
            port = cluster.port(),
            elapsed_ms = began.elapsed().as_millis() as u64,
            "throwaway PostgreSQL with pg_durable's worker ready"
        );
        Ok(RealEngine {
            cluster,
            ready_log_offset,
        })
    }

    /// A fresh install before `CREATE EXTENSION pg_durable`: the cluster with the library
    /// preloaded and its worker running (polling for the extension, every 5-10 s), and
    /// [`DATABASE`] created, empty. The caller creates the extension; the engine's store
    /// appears once the worker has noticed it and migrated (see [`RealEngine::is_ready`]).
    /// Blocking.
    pub fn start_before_extension() -> Result<Self, RealEngineError> {
        let cluster = Self::cluster_with_worker()?;
        run_sql(&cluster, "postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        Ok(RealEngine {
            cluster,
            ready_log_offset: 0,
        })
    }

    /// Whether the worker has migrated its store and is serving (its readiness table, with
    /// its row, and an epoch since the server started); `Err` says what is missing yet.
    /// Blocking.
    pub fn is_ready(&self) -> Result<(), String> {
        readiness(self.cluster.port())
    }

    /// The throwaway cluster with pg_durable preloaded (step 1 of the module docs).
    fn cluster_with_worker() -> Result<ThrowawayCluster, RealEngineError> {
        real_extension_available().map_err(RealEngineError::Unavailable)?;
        let options = ClusterOptions::new()
            .setting("shared_preload_libraries", "pg_durable")
            .setting("pg_durable.database", DATABASE)
            .setting("pg_durable.worker_role", "postgres")
            .setting("pg_durable.enable_superuser_instances", "on")
            .setting("pg_durable.reconcile_interval", "0")
            // Log lines carry UTC times, comparable with the worker's own (RFC 3339, Z).
            .setting("log_timezone", "UTC")
            .immediate_shutdown();
        // From here on, dropping the cluster stops the server if anything fails.
        Ok(ThrowawayCluster::start_with(options)?)
    }

    /// The cluster (port, log, data directory, postmaster pid).
    pub fn cluster(&self) -> &ThrowawayCluster {
        &self.cluster
    }

    /// `postgres://postgres@127.0.0.1:PORT/durable`: the superuser on the database the
    /// worker serves.
    pub fn dsn(&self) -> String {
        self.cluster.dsn(DATABASE)
    }

    /// Everything the server logged since the worker became ready: the worker's own
    /// tracing lines and the server's errors.
    pub fn log_since_ready(&self) -> io::Result<String> {
        let bytes = fs::read(self.cluster.log_path())?;
        let start = usize::try_from(self.ready_log_offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
    }

    /// The pid of the worker process, a child of the postmaster titled
    /// `postgres: pg_durable_worker`.
    pub fn worker_pid(&self) -> Result<u32, RealEngineError> {
        let postmaster = self
            .cluster
            .postmaster_pid()
            .ok_or_else(|| RealEngineError::Worker("the server is stopped".to_owned()))?;
        children_of(postmaster)
            .into_iter()
            .find(|pid| is_worker(*pid))
            .ok_or_else(|| {
                RealEngineError::Worker(format!(
                    "no child of postmaster {postmaster} is titled {WORKER_TITLE:?}"
                ))
            })
    }

    /// Stops the worker process (SIGSTOP), so the engine's state holds still: nothing is
    /// dispatched, no timer fires, no status changes until the returned guard is dropped
    /// or [`FrozenWorker::thaw`]ed (SIGCONT). Its database sessions stay open and idle.
    pub fn freeze_worker(&self) -> Result<FrozenWorker, RealEngineError> {
        let pid = self.worker_pid()?;
        let pid = Pid::from_raw(
            i32::try_from(pid).map_err(|_| RealEngineError::Worker(format!("pid {pid}")))?,
        );
        kill(pid, Signal::SIGSTOP)
            .map_err(|e| RealEngineError::Worker(format!("cannot stop {pid}: {e}")))?;
        Ok(FrozenWorker { pid })
    }
}

/// A stopped worker process; continues it (SIGCONT) when dropped.
#[must_use = "the worker stays frozen only as long as this guard lives"]
pub struct FrozenWorker {
    pid: Pid,
}

impl FrozenWorker {
    /// Lets the worker run again.
    pub fn thaw(self) {}
}

impl Drop for FrozenWorker {
    fn drop(&mut self) {
        if let Err(e) = kill(self.pid, Signal::SIGCONT) {
            tracing::warn!(pid = %self.pid, error = %e, "cannot continue pg_durable's worker");
        }
    }
}

/// Runs `sql` as the superuser on `database` of `cluster`.
fn run_sql(cluster: &ThrowawayCluster, database: &str, sql: &str) -> Result<(), RealEngineError> {
    simple_query(cluster.port(), database, sql, SQL_TIMEOUT)
        .map(drop)
        .map_err(|message| RealEngineError::Sql {
            what: sql.to_owned(),
            message,
        })
}

/// Polls until the worker has created its readiness table with its row and written an
/// epoch since the server (re)started.
fn wait_until_ready(cluster: &ThrowawayCluster) -> Result<(), RealEngineError> {
    let began = Instant::now();
    loop {
        let last_check = match readiness(cluster.port()) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if began.elapsed() >= READY_TIMEOUT {
            return Err(RealEngineError::NotReady {
                waited: began.elapsed(),
                last_check,
                log_tail: cluster.log_tail(),
            });
        }
        thread::sleep(READY_POLL);
    }
}

/// One readiness check: `Err` says what is not there yet.
fn readiness(port: u16) -> Result<(), String> {
    let one = |sql: &str| -> Result<Option<String>, String> {
        let rows = simple_query(port, DATABASE, sql, SQL_TIMEOUT)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten()))
    };
    let schema = one("SELECT df.duroxide_schema()")?
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .ok_or("df.duroxide_schema() names no plain schema")?;
    let table = format!("{schema}._worker_ready");
    if one(&format!("SELECT to_regclass('{table}') IS NOT NULL"))?.as_deref() != Some("t") {
        return Err(format!("no {table} yet"));
    }
    if one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))?.as_deref() != Some("t") {
        return Err(format!("{table} has no row yet"));
    }
    let epoch = "SELECT EXISTS (SELECT 1 FROM df._worker_epoch \
                 WHERE started_at >= pg_postmaster_start_time())";
    if one(epoch)?.as_deref() != Some("t") {
        return Err("no worker epoch since the server started".to_owned());
    }
    Ok(())
}

fn is_worker(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.starts_with(WORKER_TITLE.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_bindirs_name_their_version() {
        assert_eq!(
            debian_version(Path::new("/usr/lib/postgresql/15/bin")).as_deref(),
            Some("15")
        );
        assert_eq!(
            debian_version(Path::new("/usr/lib/postgresql/9.6/bin")).as_deref(),
            Some("9.6")
        );
        assert_eq!(
            debian_version(Path::new("/usr/lib/postgresql/15/lib")),
            None
        );
        assert_eq!(debian_version(Path::new("/usr/local/pgsql/bin")), None);
        assert_eq!(debian_version(Path::new("/usr/lib/postgresql/x/bin")), None);
    }

    #[test]
    fn availability_names_what_is_missing_or_nothing() {
        // Either answer is fine on a given machine; a refusal must say what is missing.
        if let Err(why) = real_extension_available() {
            assert!(
                why.contains("pg_durable") || why.contains("server binaries"),
                "{why}"
            );
            assert!(!why.contains('\n'), "one line: {why}");
        }
    }
}
