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
//!   user. SIGINT is postgres' fast shutdown.
//! - Linux sends that signal when the *thread* that forked the child exits, not only when
//!   the process does, so all binaries are forked from one dedicated thread that lives as
//!   long as the cluster ([`Spawner`]), never from a caller's (test or tokio) thread.
//! - Values in statics (a test harness's shared cluster) are never dropped, so a janitor
//!   shell ([`Janitor`]) waits for this process to go, however it goes, then for the
//!   postmaster to exit, and removes the folder. `start` also sweeps folders whose owning
//!   process no longer exists, in case a janitor was killed too.
//!
//! `initdb` and `postgres` refuse to run as root; as root (sessions, CI) they run as the OS
//! user `postgres`, which then owns the folder.

use std::{
    env,
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{kill, Signal},
    unistd::{geteuid, Pid, User},
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

#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH, in \
         `pg_config --bindir` or in /usr/lib/postgresql/*/bin (searched: {searched}); \
         install them with `apt-get install postgresql` (Debian/Ubuntu), or put the \
         directory holding them on PATH"
    )]
    NoServerBinaries { searched: String },
    #[error(
        "`setpriv` was not found on PATH; it starts the server with a parent-death signal \
         (and, as root, as the `postgres` user): install it with `apt-get install util-linux`"
    )]
    NoSetpriv,
    #[error(
        "running as root, but there is no OS user `postgres` to run the server as (initdb \
         and postgres refuse to run as root); `apt-get install postgresql` creates it"
    )]
    NoPostgresUser,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("initdb failed ({status}):\n{stderr}")]
    InitdbFailed { status: ExitStatus, stderr: String },
    #[error("postgres exited while starting ({status}); end of the server log:\n{log_tail}")]
    ServerExited {
        status: ExitStatus,
        log_tail: String,
    },
    #[error(
        "postgres did not accept sessions on {HOST}:{port} within {waited:?} (last check: \
         {last_check}); end of the server log:\n{log_tail}"
    )]
    StartTimeout {
        port: u16,
        waited: Duration,
        last_check: String,
        log_tail: String,
    },
}

/// Wraps an `io::Error` with what was being done.
fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> ThrowawayError {
    let context = context.into();
    move |source| ThrowawayError::Io { context, source }
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
    /// `None` once stopped (between `stop_immediate` and `restart`).
    postmaster: Option<Child>,
    janitor: Option<Janitor>,
}

impl ThrowawayCluster {
    /// Creates and starts a cluster; blocks until it accepts sessions (about a second on a
    /// 2-core machine, nearly all of it initdb).
    pub fn start() -> Result<Self, ThrowawayError> {
        let began = Instant::now();
        let binaries = ServerBinaries::find()?;
        let setpriv = find_on_path("setpriv")
            .or_else(|| executable(Path::new("/usr/bin/setpriv")))
            .ok_or(ThrowawayError::NoSetpriv)?;
        let run_as = server_os_user()?;
        let spawner = Spawner::new().map_err(io_context("cannot start the spawner thread"))?;

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
            },
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

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    /// `postgres://postgres@127.0.0.1:PORT/dbname`
    pub fn dsn(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{dbname}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

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

    /// Starts the server again on the same data directory and port (fast-stopping it first
    /// if it still runs) and waits until it accepts sessions, crash recovery included.
    pub fn restart(&mut self) -> Result<(), ThrowawayError> {
        self.stop_postmaster(Signal::SIGINT, FAST_STOP_TIMEOUT)?;
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
                if let Err(e) = self.stop_postmaster(Signal::SIGINT, FAST_STOP_TIMEOUT) {
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
        for (name, value) in SERVER_SETTINGS {
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
            postmaster
                .kill()
                .map_err(io_context("cannot kill postgres"))?;
            postmaster
                .wait()
                .map_err(io_context("cannot wait for postgres"))?;
        }
        Ok(())
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop_postmaster(Signal::SIGINT, FAST_STOP_TIMEOUT) {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum PortChoice {
    Fresh,
    Keep,
}

/// How server binaries are started: which ones, as whom, from which thread.
struct Launcher {
    binaries: ServerBinaries,
    setpriv: PathBuf,
    /// Set when running as root: the `postgres` OS user.
    run_as: Option<OsUser>,
    spawner: Spawner,
}

struct OsUser {
    uid: u32,
    gid: u32,
}

impl Launcher {
    /// `setpriv [--reuid postgres ...] --pdeathsig SIGINT -- program`, in `cwd` (root's
    /// working directory may be unreadable for `postgres`), without the caller's PG*
    /// variables (PGDATA, PGPORT... would silently change what the binaries do).
    fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut command = Command::new(&self.setpriv);
        if let Some(user) = &self.run_as {
            command
                .arg("--reuid")
                .arg(user.uid.to_string())
                .arg("--regid")
                .arg(user.gid.to_string())
                .arg("--clear-groups");
        }
        command
            .args(["--pdeathsig", "SIGINT", "--"])
            .arg(program)
            .current_dir(cwd)
            .stdin(Stdio::null());
        for (name, _) in env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("PG")) {
                command.env_remove(name);
            }
        }
        command
    }
}

/// The OS user to run the server as when we are root.
fn server_os_user() -> Result<Option<OsUser>, ThrowawayError> {
    if !geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Ok(Some(OsUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        Ok(None) => Err(ThrowawayError::NoPostgresUser),
        Err(errno) => Err(io_context("cannot look up the OS user postgres")(
            errno.into(),
        )),
    }
}

/// A directory holding both `initdb` and `postgres` (from the same installation).
struct ServerBinaries {
    bindir: PathBuf,
}

impl ServerBinaries {
    /// PATH first, then `pg_config --bindir`, then Debian's /usr/lib/postgresql/<ver>/bin,
    /// newest version first.
    fn find() -> Result<Self, ThrowawayError> {
        let mut searched = Vec::new();
        let mut check = |dir: PathBuf| {
            let found = executable(&dir.join("initdb")).is_some()
                && executable(&dir.join("postgres")).is_some();
            searched.push(dir.display().to_string());
            found.then_some(ServerBinaries { bindir: dir })
        };
        if let Some(path) = env::var_os("PATH") {
            for dir in env::split_paths(&path) {
                if let Some(found) = check(dir) {
                    return Ok(found);
                }
            }
        }
        if let Some(found) = pg_config_bindir().and_then(&mut check) {
            return Ok(found);
        }
        for dir in debian_bindirs() {
            if let Some(found) = check(dir) {
                return Ok(found);
            }
        }
        Err(ThrowawayError::NoServerBinaries {
            searched: searched.join(", "),
        })
    }

    fn initdb(&self) -> PathBuf {
        self.bindir.join("initdb")
    }

    fn postgres(&self) -> PathBuf {
        self.bindir.join("postgres")
    }
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (output.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// /usr/lib/postgresql/<version>/bin, newest version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).find_map(|dir| executable(&dir.join(name)))
}

fn executable(path: &Path) -> Option<PathBuf> {
    let meta = fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}

/// The thread every server binary is forked from (see the module docs): the parent-death
/// signal fires when this thread ends, so it lives exactly as long as the cluster.
struct Spawner {
    requests: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<JoinHandle<()>>,
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

impl Spawner {
    fn new() -> io::Result<Self> {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        let thread = thread::Builder::new()
            .name("throwaway-pg".to_owned())
            .spawn(move || {
                // Ends when the cluster drops the sender.
                for SpawnRequest { mut command, reply } in incoming {
                    let _ = reply.send(command.spawn());
                }
            })?;
        Ok(Spawner {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Spawns `command` on the spawner thread. The returned child can be waited for and
    /// signalled from any thread.
    fn spawn(&self, command: Command) -> io::Result<Child> {
        let gone = || io::Error::other("the throwaway cluster's spawner thread is gone");
        let (reply, result) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send(SpawnRequest { command, reply })
            .map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A `sh` that blocks reading a pipe only this process can write to. The write end closes
/// when the process exits, however it exits (even SIGKILL); the janitor then waits (30 s at
/// most) for the postmaster, which got its SIGINT at the same moment, and removes the
/// folder. It ignores SIGINT/SIGHUP: a Ctrl-C on the terminal reaches the whole process
/// group, and the janitor must be the one to survive it.
struct Janitor {
    child: Child,
    pipe: Option<ChildStdin>,
}

const JANITOR_SCRIPT: &str = r#"trap '' INT HUP
cat >/dev/null
i=0
while [ "$i" -lt 600 ] && pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; do
  sleep 0.05
  i=$((i + 1))
done
rm -rf -- "$1"
"#;

impl Janitor {
    fn spawn(folder: &Path) -> io::Result<Self> {
        // Spawned from the caller's thread on purpose: it has no parent-death signal.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(JANITOR_SCRIPT)
            .arg("df-reconciler-janitor")
            .arg(folder)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // std creates the pipe close-on-exec, so no other child inherits the write end.
        let pipe = child.stdin.take();
        Ok(Janitor { child, pipe })
    }

    /// The cluster cleaned up itself: let the janitor finish (nothing left to remove) and
    /// reap it.
    fn dismiss(mut self) {
        drop(self.pipe.take());
        match wait_with_deadline(&mut self.child, Duration::from_secs(2)) {
            Ok(Some(_)) => {}
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Removes folders of earlier processes that no longer exist (killed test runs whose
/// janitor died too), unless their postmaster still runs (it is shutting down; a later
/// sweep takes the folder).
fn sweep_stale_folders(temp_dir: &Path) {
    let Ok(entries) = fs::read_dir(temp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(owner) = folder_owner_pid(&entry.file_name()) else {
            continue;
        };
        let folder = entry.path();
        if owner == std::process::id()
            || process_alive(owner)
            || postmaster_pid_in(&folder.join("data")).is_some_and(process_alive)
        {
            continue;
        }
        match fs::remove_dir_all(&folder) {
            Ok(()) => {
                tracing::debug!(folder = %folder.display(), "removed a stale throwaway cluster")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(error = %e, folder = %folder.display(), "cannot remove a stale throwaway cluster")
            }
        }
    }
}

/// The pid in `df-reconciler-pg-<pid>-<n>`, or `None` for any other name.
fn folder_owner_pid(name: &OsStr) -> Option<u32> {
    let (pid, n) = name
        .to_str()?
        .strip_prefix(FOLDER_PREFIX)?
        .split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok().filter(|pid| *pid > 0)
}

fn process_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        // EPERM: it exists, it is just not ours to signal.
        Ok(raw) if raw > 0 => matches!(kill(Pid::from_raw(raw), None), Ok(()) | Err(Errno::EPERM)),
        _ => false,
    }
}

/// Line 1 of `postmaster.pid`.
fn postmaster_pid_in(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// pg_ctl's own readiness test: `postmaster.pid` names our pid on line 1 and says "ready"
/// on line 8 once the server accepts sessions (after crash recovery, if any).
fn postmaster_reports_ready(data_dir: &Path, pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let mut lines = text.lines();
    lines
        .next()
        .and_then(|line| line.trim().parse::<u32>().ok())
        == Some(pid)
        && lines.nth(6).is_some_and(|status| status.trim() == "ready")
}

static NEXT_FOLDER: AtomicU32 = AtomicU32::new(0);

fn create_folder(temp_dir: &Path) -> Result<PathBuf, ThrowawayError> {
    loop {
        let n = NEXT_FOLDER.fetch_add(1, Ordering::Relaxed);
        let folder = temp_dir.join(format!("{FOLDER_PREFIX}{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o755).create(&folder) {
            Ok(()) => return Ok(folder),
            // Left by an earlier process that had our pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_context(format!("cannot create {}", folder.display()))(e)),
        }
    }
}

/// A port that was free a moment ago. The listener is dropped before postgres binds, so
/// another process can take it in between; `launch` retries on a failed bind.
fn free_port() -> Result<u16, ThrowawayError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_context("cannot find a free port on 127.0.0.1"))
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The end of the log from `offset` on, at most `LOG_TAIL_BYTES`, starting at a line.
fn read_log_tail(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = offset.max(len.saturating_sub(LOG_TAIL_BYTES));
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if start > offset {
            if let Some(newline) = text.find('\n') {
                text.drain(..=newline);
            }
        }
        Ok(text)
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Whether a session starts: sends a protocol 3.0 startup packet (user and database
/// `postgres`, trust authentication) and reads until ReadyForQuery. Unlike a bare TCP
/// connect, this sees "the database system is starting up" and crash recovery.
fn probe_session(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .and_then(|()| stream.write_all(&startup_packet(SUPERUSER, "postgres")))
        .map_err(|e| format!("send startup packet: {e}"))?;
    loop {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .map_err(|e| format!("read: {e}"))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let body_len = len
            .checked_sub(4)
            .filter(|n| *n <= 64 * 1024)
            .ok_or_else(|| format!("malformed message length {len}"))?;
        let mut body = vec![0; body_len];
        stream
            .read_exact(&mut body)
            .map_err(|e| format!("read: {e}"))?;
        match header[0] {
            b'Z' => {
                // Terminate, so the server does not log an unexpected EOF.
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
                return Ok(());
            }
            b'E' => return Err(describe_error_response(&body)),
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(
                    "the server asks for a password; trust authentication expected".to_owned(),
                )
            }
            // AuthenticationOk, ParameterStatus, BackendKeyData, NoticeResponse.
            _ => {}
        }
    }
}

fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    const PROTOCOL_3_0: u32 = 3 << 16;
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// ErrorResponse fields are (type byte, NUL-terminated text); S is the severity, C the
/// SQLSTATE, M the message.
fn describe_error_response(body: &[u8]) -> String {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|byte| *byte == 0) {
        if let Some((kind, text)) = field.split_first() {
            let text = String::from_utf8_lossy(text).into_owned();
            match kind {
                b'S' => severity = text,
                b'C' => code = text,
                b'M' => message = text,
                _ => {}
            }
        }
    }
    format!("{severity}: {message} (SQLSTATE {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_carry_the_owner_pid() {
        assert_eq!(
            folder_owner_pid(OsStr::new("df-reconciler-pg-4242-0")),
            Some(4242)
        );
        assert_eq!(
            folder_owner_pid(OsStr::new("df-reconciler-pg-4242-17")),
            Some(4242)
        );
        assert_eq!(folder_owner_pid(OsStr::new("df-reconciler-pg-4242")), None);
        assert_eq!(folder_owner_pid(OsStr::new("df-reconciler-pg-x-1")), None);
        assert_eq!(folder_owner_pid(OsStr::new("df-reconciler-pg-0-1")), None);
        assert_eq!(folder_owner_pid(OsStr::new("other-4242-0")), None);
    }

    #[test]
    fn missing_binaries_tell_how_to_install_them() {
        let message = ThrowawayError::NoServerBinaries {
            searched: "/usr/bin".to_owned(),
        }
        .to_string();
        assert!(message.contains("initdb, postgres"), "{message}");
        assert!(message.contains("apt-get install postgresql"), "{message}");
    }

    #[test]
    fn stale_folders_of_dead_processes_are_swept_and_others_kept() {
        let temp = tempfile::tempdir().unwrap();
        // No process has pid i32::MAX (pid_max is at most 2^22).
        let dead = temp.path().join(format!("{FOLDER_PREFIX}{}-0", i32::MAX));
        let alive = temp
            .path()
            .join(format!("{FOLDER_PREFIX}{}-0", std::process::id()));
        let unrelated = temp.path().join("something-else");
        for dir in [&dead, &alive, &unrelated] {
            fs::create_dir_all(dir.join("data")).unwrap();
        }
        sweep_stale_folders(temp.path());
        assert!(!dead.exists());
        assert!(alive.exists());
        assert!(unrelated.exists());
    }

    /// Serves one connection of a fake server that answers the startup packet with
    /// `reply`, and returns what the probe made of it.
    fn probe_against(reply: Vec<u8>) -> Result<(), String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).unwrap();
            let mut startup = vec![0; u32::from_be_bytes(len) as usize - 4];
            stream.read_exact(&mut startup).unwrap();
            assert_eq!(&startup[..4], &(3u32 << 16).to_be_bytes());
            stream.write_all(&reply).unwrap();
        });
        let result = probe_session(port);
        server.join().unwrap();
        result
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn probe_accepts_ready_for_query() {
        let mut reply = message(b'R', &[0, 0, 0, 0]);
        reply.extend(message(b'S', b"server_version\x0015.0\x00"));
        reply.extend(message(b'K', &[0; 8]));
        reply.extend(message(b'Z', b"I"));
        assert_eq!(probe_against(reply), Ok(()));
    }

    #[test]
    fn probe_reports_a_server_still_starting() {
        let reply = message(
            b'E',
            b"SFATAL\x00C57P03\x00Mthe database system is starting up\x00\x00",
        );
        assert_eq!(
            probe_against(reply),
            Err("FATAL: the database system is starting up (SQLSTATE 57P03)".to_owned())
        );
    }
}
