//! A disposable PostgreSQL cluster for `df-reconciler demo` and the integration tests.
//!
//! [`ThrowawayCluster::start`] runs `initdb` into a fresh folder under the system temp
//! directory, then `postgres` in the foreground as a child process listening on a free port
//! of 127.0.0.1, with durability switched off (the data is disposable). Dropping the value
//! stops the server and removes the folder.
//!
//! The server must never outlive the process that started it, even one killed by SIGKILL:
//! - Every server binary runs under `setpriv --pdeathsig SIGINT` (setting the parent-death
//!   signal ourselves would need `unsafe` in `pre_exec`, which the crate forbids). setpriv
//!   applies it after changing credentials, so it survives the switch to the `postgres`
//!   user. SIGINT is postgres' fast shutdown (SIGQUIT, the immediate one, for clusters
//!   started with [`ClusterOptions::immediate_shutdown`]).
//! - Linux sends that signal when the *thread* that forked the child exits, not only when
//!   the process does, so all binaries are forked from one dedicated thread that lives as
//!   long as the cluster (`Spawner`), never from a caller's (test or tokio) thread.
//! - Values in statics (a test harness's shared cluster) are never dropped, so a janitor
//!   shell (`Janitor`) waits for this process to go, however it goes, then for the
//!   postmaster to exit, and removes the folder. `start` also sweeps folders whose owning
//!   process no longer exists, in case a janitor was killed too.
//!
//! `initdb` and `postgres` refuse to run as root; as root (sessions, CI) they run as the OS
//! user `postgres`, which then owns the folder.
//!
//! [`ThrowawayCluster::start_with`] takes [`ClusterOptions`]: extra server settings (e.g.
//! `shared_preload_libraries` for an extension with a background worker) and the
//! shutdown mode. A server whose background workers can keep a fast shutdown waiting is
//! stopped immediately (SIGQUIT) on drop, on restart and by the parent-death signal.

use std::{
    env,
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

/// The only address the server listens on.
const HOST: &str = "127.0.0.1";
/// Folders are named `df-reconciler-pg-<pid>-<n>`; the pid tells the sweep whether the
/// owner is still alive.
const FOLDER_PREFIX: &str = "df-reconciler-pg-";
/// The superuser initdb creates; trust authentication, no password.
const SUPERUSER: &str = "postgres";

/// Settings passed with `-c`, on top of initdb's defaults.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", HOST),
    // The data is disposable: durability only costs time.
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    // Tests run in parallel, each with its own connections and pools.
    ("max_connections", "200"),
    // Tests use two-phase commit to keep locks or rows pending across sessions.
    ("max_prepared_transactions", "10"),
];

/// A cold start takes well under a second; crash recovery after `stop_immediate` a little
/// more. The deadline only matters on a broken or overloaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(20);
/// Bounds each readiness probe, so a hung accept cannot eat the whole deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A fast shutdown of an idle test cluster takes milliseconds; after this, SIGKILL.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The postmaster itself SIGKILLs its children 5 s into an immediate shutdown.
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Another process can take the free port between our probe and the server's bind.
const BIND_ATTEMPTS: u32 = 5;
/// How much of the server log an error carries.
const LOG_TAIL_BYTES: u64 = 4096;

/// Why a throwaway cluster could not be started; each message says what to install or
/// where to look.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    /// `initdb` and `postgres` are nowhere to be found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH, in \
         `pg_config --bindir` or in /usr/lib/postgresql/*/bin (searched: {searched}); \
         install them with `apt-get install postgresql` (Debian/Ubuntu), or put the \
         directory holding them on PATH"
    )]
    NoServerBinaries {
        /// The directories looked in, comma-separated.
        searched: String,
    },
    /// `setpriv` (util-linux) is missing; without it the server could outlive a killed test.
    #[error(
        "`setpriv` was not found on PATH; it starts the server with a parent-death signal \
         (and, as root, as the `postgres` user): install it with `apt-get install util-linux`"
    )]
    NoSetpriv,
    /// Running as root without an OS user `postgres` to drop to.
    #[error(
        "running as root, but there is no OS user `postgres` to run the server as (initdb \
         and postgres refuse to run as root); `apt-get install postgresql` creates it"
    )]
    NoPostgresUser,
    /// A file, folder or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `initdb` exited unsuccessfully.
    #[error("initdb failed ({status}):\n{stderr}")]
    InitdbFailed {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed, which says why.
        stderr: String,
    },
    /// The postmaster died before accepting sessions (e.g. another process took the port).
    #[error("postgres exited while starting ({status}); end of the server log:\n{log_tail}")]
    ServerExited {
        /// The postmaster's exit status.
        status: ExitStatus,
        /// The end of what the server logged during this start.
        log_tail: String,
    },
    /// PgBouncer is not installed, or it did not start; the message says which.
    #[error("{0}")]
    PgBouncer(String),
    /// The server ran but did not accept sessions within the readiness deadline (30 s).
    #[error(
        "postgres did not accept sessions on {HOST}:{port} within {waited:?} (last check: \
         {last_check}); end of the server log:\n{log_tail}"
    )]
    StartTimeout {
        /// The port the server was told to listen on.
        port: u16,
        /// How long the start was waited for.
        waited: Duration,
        /// Why the last readiness probe failed.
        last_check: String,
        /// The end of what the server logged during this start.
        log_tail: String,
    },
}

/// Wraps an `io::Error` with what was being done.
fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> ThrowawayError {
    let context = context.into();
    move |source| ThrowawayError::Io { context, source }
}

/// How a [`ThrowawayCluster`] is started and stopped, beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `-c name=value` settings, after (and so overriding) the built-in ones.
    settings: Vec<(String, String)>,
    /// Stop with SIGQUIT instead of SIGINT (see [`ClusterOptions::immediate_shutdown`]).
    immediate_shutdown: bool,
}

impl ClusterOptions {
    /// The defaults: [`ThrowawayCluster::start`]'s settings and a fast shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a server setting, passed as `-c name=value` at every start (so it survives
    /// [`ThrowawayCluster::restart`]).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Stops the server with an immediate shutdown (SIGQUIT: no checkpoint, crash
    /// recovery at the next start) on drop, on [`ThrowawayCluster::restart`] and when the
    /// process dies. For servers whose background workers can keep a fast shutdown
    /// waiting; the data is disposable anyway.
    pub fn immediate_shutdown(mut self) -> Self {
        self.immediate_shutdown = true;
        self
    }

    /// The signal that stops the postmaster, and how long it may take before SIGKILL.
    fn stop_signal(&self) -> (Signal, Duration) {
        if self.immediate_shutdown {
            (Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT)
        } else {
            (Signal::SIGINT, FAST_STOP_TIMEOUT)
        }
    }
}

/// A PostgreSQL server on 127.0.0.1 with superuser `postgres` and trust authentication,
/// stopped and deleted on drop (and when the process dies; see the module docs).
///
/// Shareable between threads: everything but `stop_immediate` and `restart` takes `&self`.
pub struct ThrowawayCluster {
    /// `df-reconciler-pg-<pid>-<n>`: holds `data/`, `socket/` and `server.log`.
    folder: PathBuf,
    data_dir: PathBuf,
    /// The Unix socket and its lock file live here, not in /var/run/postgresql, which may
    /// not exist or belong to a system cluster.
    socket_dir: PathBuf,
    /// The server's stdout and stderr, appended across restarts.
    log_path: PathBuf,
    /// Chosen at start, kept across `restart` so DSNs handed out stay valid.
    port: u16,
    launcher: Launcher,
    /// Extra settings and the shutdown mode.
    options: ClusterOptions,
    /// `None` once stopped (between `stop_immediate` and `restart`).
    postmaster: Option<Child>,
    janitor: Option<Janitor>,
}

impl ThrowawayCluster {
    /// Creates and starts a cluster; blocks until it accepts sessions (about a second on a
    /// 2-core machine, nearly all of it initdb).
    pub fn start() -> Result<Self, ThrowawayError> {
        Self::start_with(ClusterOptions::new())
    }

    /// [`ThrowawayCluster::start`] with extra settings or an immediate shutdown.
    pub fn start_with(options: ClusterOptions) -> Result<Self, ThrowawayError> {
        let began = Instant::now();
        let binaries = ServerBinaries::find()?;
        let setpriv = find_on_path("setpriv")
            .or_else(|| executable(Path::new("/usr/bin/setpriv")))
            .ok_or(ThrowawayError::NoSetpriv)?;
        let run_as = server_os_user()?;
        let spawner = Spawner::new().map_err(io_context("cannot start the spawner thread"))?;
        let death_signal = if options.immediate_shutdown {
            "SIGQUIT"
        } else {
            "SIGINT"
        };

        let temp_dir = env::temp_dir();
        sweep_stale_folders(&temp_dir);
        let folder = create_folder(&temp_dir)?;
        // From here on, Drop removes the folder and stops the server if anything fails.
        let mut cluster = ThrowawayCluster {
            data_dir: folder.join("data"),
            socket_dir: folder.join("socket"),
            log_path: folder.join("server.log"),
            folder,
            port: 0,
            launcher: Launcher {
                binaries,
                setpriv,
                run_as,
                spawner,
                death_signal,
            },
            options,
            postmaster: None,
            janitor: None,
        };
        cluster.prepare_folder()?;
        match Janitor::spawn(&cluster.folder) {
            Ok(janitor) => cluster.janitor = Some(janitor),
            // Not fatal: the sweep at the next start removes the folder instead.
            Err(e) => tracing::warn!(error = %e, "cannot start the throwaway cluster's janitor"),
        }
        cluster.initdb()?;
        cluster.launch(PortChoice::Fresh)?;
        tracing::info!(
            port = cluster.port,
            data_dir = %cluster.data_dir.display(),
            elapsed_ms = began.elapsed().as_millis() as u64,
            "throwaway PostgreSQL ready"
        );
        Ok(cluster)
    }

    /// The TCP port, chosen at start and kept across `restart`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `127.0.0.1`: the server listens nowhere else.
    pub fn host(&self) -> &str {
        HOST
    }

    /// `postgres://postgres@127.0.0.1:PORT/dbname`
    pub fn dsn(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{dbname}", self.port)
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log file, appended across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last few KiB of the server log, for assertion messages.
    pub fn log_tail(&self) -> String {
        read_log_tail(&self.log_path, 0)
    }

    /// The postmaster's pid; `None` after `stop_immediate` until `restart`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// Crash simulation: SIGQUIT (immediate shutdown, no checkpoint) to the postmaster,
    /// then waits until it has exited. A no-op if the server is already stopped.
    pub fn stop_immediate(&mut self) -> Result<(), ThrowawayError> {
        self.stop_postmaster(Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT)
    }

    /// Starts the server again on the same data directory and port (stopping it first if
    /// it still runs: fast, or immediate with [`ClusterOptions::immediate_shutdown`]) and
    /// waits until it accepts sessions, crash recovery included.
    pub fn restart(&mut self) -> Result<(), ThrowawayError> {
        let (signal, timeout) = self.options.stop_signal();
        self.stop_postmaster(signal, timeout)?;
        self.launch(PortChoice::Keep)
    }

    /// Creates the sub-folders and hands them to the user the server runs as.
    fn prepare_folder(&self) -> Result<(), ThrowawayError> {
        // initdb insists on 0700 (or 0750) for the data directory.
        for (dir, mode) in [(&self.data_dir, 0o700), (&self.socket_dir, 0o755)] {
            fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .map_err(io_context(format!("cannot create {}", dir.display())))?;
        }
        File::create(&self.log_path).map_err(io_context(format!(
            "cannot create {}",
            self.log_path.display()
        )))?;
        if let Some(user) = &self.launcher.run_as {
            for dir in [&self.folder, &self.data_dir, &self.socket_dir] {
                std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(
                    io_context(format!("cannot chown {} to postgres", dir.display())),
                )?;
            }
        }
        Ok(())
    }

    fn initdb(&self) -> Result<(), ThrowawayError> {
        let mut command = self
            .launcher
            .command(&self.launcher.binaries.initdb(), &self.folder);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8"])
            // C: available everywhere and byte-order collation, so results never depend
            // on the machine's locales.
            .args(["--locale=C", "--no-sync"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = self
            .launcher
            .spawner
            .spawn(command)
            .map_err(io_context("cannot run initdb"))?
            .wait_with_output()
            .map_err(io_context("cannot wait for initdb"))?;
        if output.status.success() {
            return Ok(());
        }
        let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if stderr.trim().is_empty() {
            stderr = String::from_utf8_lossy(&output.stdout).into_owned();
        }
        Err(ThrowawayError::InitdbFailed {
            status: output.status,
            stderr,
        })
    }

    /// Starts the postmaster and waits until it is ready; retries with another port (or,
    /// on restart, the same one a little later) when the bind fails.
    fn launch(&mut self, ports: PortChoice) -> Result<(), ThrowawayError> {
        let mut attempt = 1;
        loop {
            if ports == PortChoice::Fresh {
                self.port = free_port()?;
            }
            let log_offset = fs::metadata(&self.log_path).map_or(0, |m| m.len());
            self.postmaster = Some(self.spawn_postmaster()?);
            let error = match self.wait_ready(log_offset) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let bind_failed = matches!(error, ThrowawayError::ServerExited { .. })
                && read_log_tail(&self.log_path, log_offset).contains("could not bind");
            if !bind_failed || attempt >= BIND_ATTEMPTS {
                let (signal, timeout) = self.options.stop_signal();
                if let Err(e) = self.stop_postmaster(signal, timeout) {
                    tracing::warn!(error = %e, "cannot stop a postgres that failed to start");
                }
                return Err(error);
            }
            tracing::debug!(
                port = self.port,
                attempt,
                "postgres could not bind its port; retrying"
            );
            if ports == PortChoice::Keep {
                thread::sleep(Duration::from_millis(200));
            }
            attempt += 1;
        }
    }

    fn spawn_postmaster(&self) -> Result<Child, ThrowawayError> {
        let open_log = || {
            OpenOptions::new()
                .append(true)
                .open(&self.log_path)
                .map_err(io_context(format!(
                    "cannot open {}",
                    self.log_path.display()
                )))
        };
        let mut command = self
            .launcher
            .command(&self.launcher.binaries.postgres(), &self.folder);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            .stdout(open_log()?)
            .stderr(open_log()?);
        let extra = self.options.settings.iter();
        for (name, value) in SERVER_SETTINGS
            .iter()
            .map(|(n, v)| (*n, *v))
            .chain(extra.map(|(n, v)| (n.as_str(), v.as_str())))
        {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        self.launcher
            .spawner
            .spawn(command)
            .map_err(io_context("cannot start postgres"))
    }

    /// Polls until the postmaster reports itself ready and a session actually starts.
    fn wait_ready(&mut self, log_offset: u64) -> Result<(), ThrowawayError> {
        let began = Instant::now();
        loop {
            let Some(postmaster) = self.postmaster.as_mut() else {
                return Err(io_context("waiting for postgres")(io::Error::other(
                    "no postmaster to wait for",
                )));
            };
            let pid = postmaster.id();
            if let Some(status) = postmaster
                .try_wait()
                .map_err(io_context("cannot poll the postmaster"))?
            {
                self.postmaster = None;
                return Err(ThrowawayError::ServerExited {
                    status,
                    log_tail: read_log_tail(&self.log_path, log_offset),
                });
            }
            // postmaster.pid says "ready" only for *our* pid, so a stranger that took the
            // port cannot pass; the session probe then proves TCP sessions really start.
            let check = if postmaster_reports_ready(&self.data_dir, pid) {
                probe_session(self.port)
            } else {
                Err("postmaster.pid does not say ready yet".to_owned())
            };
            let last_check = match check {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if began.elapsed() >= READY_TIMEOUT {
                return Err(ThrowawayError::StartTimeout {
                    port: self.port,
                    waited: began.elapsed(),
                    last_check,
                    log_tail: read_log_tail(&self.log_path, log_offset),
                });
            }
            thread::sleep(READY_POLL);
        }
    }

    /// Sends `signal` to the postmaster and reaps it; SIGKILL after `timeout`.
    fn stop_postmaster(&mut self, signal: Signal, timeout: Duration) -> Result<(), ThrowawayError> {
        let Some(mut postmaster) = self.postmaster.take() else {
            return Ok(());
        };
        // An unreaped child keeps its pid, so the signal cannot hit a recycled one.
        if postmaster
            .try_wait()
            .map_err(io_context("cannot poll the postmaster"))?
            .is_some()
        {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(postmaster.id()).unwrap_or(i32::MAX));
        kill(pid, signal).map_err(|errno| {
            io_context(format!("cannot send {signal} to postgres"))(errno.into())
        })?;
        if wait_with_deadline(&mut postmaster, timeout)
            .map_err(io_context("cannot wait for postgres"))?
            .is_none()
        {
            tracing::warn!(?timeout, %signal, "postgres did not stop in time; killing it");
            // A killed postmaster cannot stop its children (a background worker may never
            // notice it is gone): take them down too, found while they are still its own.
            let children = children_of(postmaster.id());
            postmaster
                .kill()
                .map_err(io_context("cannot kill postgres"))?;
            for child in children {
                if let Ok(raw) = i32::try_from(child) {
                    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
            }
            postmaster
                .wait()
                .map_err(io_context("cannot wait for postgres"))?;
        }
        Ok(())
    }
}

/// The directory of the server binaries (`initdb`, `postgres`) a cluster is started from:
/// PATH first, then `pg_config --bindir`, then Debian's `/usr/lib/postgresql/<ver>/bin`.
pub(crate) fn server_bindir() -> Result<PathBuf, ThrowawayError> {
    ServerBinaries::find().map(|binaries| binaries.bindir)
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let (signal, timeout) = self.options.stop_signal();
        if let Err(e) = self.stop_postmaster(signal, timeout) {
            tracing::warn!(error = %e, "cannot stop the throwaway PostgreSQL");
        }
        if let Err(e) = fs::remove_dir_all(&self.folder) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(error = %e, folder = %self.folder.display(), "cannot remove the throwaway cluster");
            }
        }
        if let Some(janitor) = self.janitor.take() {
            janitor.dismiss();
        }
        // The spawner thread ends when `launcher` drops, after the server has stopped.
    }
}

mod launcher;
mod pgbouncer;
mod probe;
mod reaper;

pub use pgbouncer::{pgbouncer_available, ThrowawayPgBouncer, POOL_SIZE};

use launcher::{executable, find_on_path, server_os_user, Launcher, PortChoice, ServerBinaries};
pub(crate) use probe::simple_query;
use probe::{free_port, probe_session, read_log_tail, wait_with_deadline};
pub(crate) use reaper::children_of;
use reaper::{create_folder, postmaster_reports_ready, sweep_stale_folders, Janitor, Spawner};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_tell_how_to_install_them() {
        let message = ThrowawayError::NoServerBinaries {
            searched: "/usr/bin".to_owned(),
        }
        .to_string();
        assert!(message.contains("initdb, postgres"), "{message}");
        assert!(message.contains("apt-get install postgresql"), "{message}");
    }
}
