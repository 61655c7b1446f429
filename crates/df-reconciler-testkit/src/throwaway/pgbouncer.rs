//! A throwaway PgBouncer in transaction mode in front of a [`ThrowawayCluster`], from the
//! binary Debian's `pgbouncer` package installs: what many deployments (and managed
//! offerings) put between the daemon and PostgreSQL.
//!
//! [`ThrowawayCluster::start_pgbouncer`] writes a configuration into a folder of its own
//! (named like the clusters', so the same sweep removes it after a killed run), starts
//! `pgbouncer` in the foreground on a free port of 127.0.0.1 (as the `postgres` OS user
//! when we are root: it refuses to run as root), with the parent-death signal SIGTERM
//! (its immediate shutdown), and waits until a session through it answers. Dropping the
//! value stops it (SIGTERM) and removes the folder.
//!
//! Settings: `pool_mode = transaction` and a server pool of [`POOL_SIZE`] per database and
//! user (as in issue 16's report), `auth_type = trust` for the superuser `postgres` (the
//! cluster trusts loopback connections too), every database forwarded to the cluster.

use std::{
    env,
    fs::{self, File, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::launcher::{executable, find_on_path, server_os_user, Launcher, ServerBinaries};
use super::probe::{free_port, read_log_tail, simple_query, wait_with_deadline};
use super::reaper::{create_folder, sweep_stale_folders, Spawner};
use super::{io_context, ThrowawayCluster, ThrowawayError, HOST, SUPERUSER};

/// Server connections per (database, user) pair: small, so that clients share them.
pub const POOL_SIZE: u32 = 5;
/// Where Debian's package puts the binary (not on a non-root user's PATH).
const DEBIAN_BINARY: &str = "/usr/sbin/pgbouncer";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The PgBouncer binary, or one line saying it is missing (tests skip with it).
pub fn pgbouncer_available() -> Result<PathBuf, String> {
    find_on_path("pgbouncer")
        .or_else(|| executable(Path::new(DEBIAN_BINARY)))
        .ok_or_else(|| {
            format!(
                "PgBouncer is not installed (no pgbouncer on PATH nor {DEBIAN_BINARY}; \
                 `apt-get install pgbouncer`)"
            )
        })
}

/// A running PgBouncer in transaction mode; see the module docs.
pub struct ThrowawayPgBouncer {
    folder: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    log_path: PathBuf,
    port: u16,
    launcher: Launcher,
    child: Option<Child>,
}

impl ThrowawayCluster {
    /// Starts a PgBouncer in transaction mode in front of this cluster; see
    /// [`ThrowawayPgBouncer`]. Blocking.
    pub fn start_pgbouncer(&self) -> Result<ThrowawayPgBouncer, ThrowawayError> {
        let binary = pgbouncer_available().map_err(ThrowawayError::PgBouncer)?;
        let temp_dir = env::temp_dir();
        sweep_stale_folders(&temp_dir);
        let folder = create_folder(&temp_dir)?;
        let launcher = Launcher {
            // Unused: this launcher only ever starts `binary`.
            binaries: ServerBinaries {
                bindir: binary.parent().unwrap_or(Path::new("/")).to_path_buf(),
            },
            setpriv: self.launcher.setpriv.clone(),
            run_as: server_os_user()?,
            spawner: Spawner::new().map_err(io_context("cannot start the spawner thread"))?,
            death_signal: "SIGTERM",
        };
        let mut bouncer = ThrowawayPgBouncer {
            config: folder.join("pgbouncer.ini"),
            log_path: folder.join("pgbouncer.log"),
            folder,
            binary,
            port: free_port()?,
            launcher,
            child: None,
        };
        bouncer.write_config(self.port())?;
        bouncer.launch()?;
        tracing::info!(
            port = bouncer.port,
            server_port = self.port(),
            "throwaway PgBouncer ready"
        );
        Ok(bouncer)
    }
}

impl ThrowawayPgBouncer {
    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/dbname` through the pooler.
    pub fn dsn(&self, dbname: &str) -> String {
        format!("postgres://{SUPERUSER}@{HOST}:{}/{dbname}", self.port)
    }

    /// The last few KiB of PgBouncer's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        read_log_tail(&self.log_path, 0)
    }

    /// Stops PgBouncer at once (SIGTERM: every client and server connection is cut, open
    /// transactions are rolled back by the server), then starts it again on the same
    /// port. Blocking.
    pub fn restart(&mut self) -> Result<(), ThrowawayError> {
        self.stop()?;
        self.launch()
    }

    fn write_config(&self, server_port: u16) -> Result<(), ThrowawayError> {
        let userlist = self.folder.join("userlist.txt");
        fs::write(&userlist, format!("\"{SUPERUSER}\" \"\"\n"))
            .map_err(io_context(format!("cannot write {}", userlist.display())))?;
        let config = format!(
            "[databases]\n\
             * = host={HOST} port={server_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = {HOST}\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {userlist}\n\
             pool_mode = transaction\n\
             default_pool_size = {POOL_SIZE}\n\
             max_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\n\
             log_connections = 0\n\
             log_disconnections = 0\n",
            port = self.port,
            userlist = userlist.display(),
            log = self.log_path.display(),
        );
        fs::write(&self.config, config).map_err(io_context(format!(
            "cannot write {}",
            self.config.display()
        )))?;
        File::create(&self.log_path).map_err(io_context(format!(
            "cannot create {}",
            self.log_path.display()
        )))?;
        if let Some(user) = &self.launcher.run_as {
            for path in [&self.folder, &self.config, &userlist, &self.log_path] {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(
                    io_context(format!("cannot chown {} to postgres", path.display())),
                )?;
            }
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<(), ThrowawayError> {
        let stderr = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .map_err(io_context(format!(
                "cannot open {}",
                self.log_path.display()
            )))?;
        let mut command: Command = self.launcher.command(&self.binary, &self.folder);
        command
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = self
            .launcher
            .spawner
            .spawn(command)
            .map_err(io_context("cannot start pgbouncer"))?;
        self.child = Some(child);
        let began = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(io_context("cannot poll pgbouncer"))?
                {
                    self.child = None;
                    return Err(ThrowawayError::PgBouncer(format!(
                        "pgbouncer exited while starting ({status}); end of its log:\n{}",
                        self.log_tail()
                    )));
                }
            }
            let last_check = match simple_query(self.port, "postgres", "SELECT 1", PROBE_TIMEOUT) {
                Ok(_) => return Ok(()),
                Err(why) => why,
            };
            if began.elapsed() >= READY_TIMEOUT {
                let _ = self.stop();
                return Err(ThrowawayError::PgBouncer(format!(
                    "no session through pgbouncer on {HOST}:{} within {:?} (last check: \
                     {last_check}); end of its log:\n{}",
                    self.port,
                    began.elapsed(),
                    self.log_tail()
                )));
            }
            thread::sleep(READY_POLL);
        }
    }

    fn stop(&mut self) -> Result<(), ThrowawayError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child
            .try_wait()
            .map_err(io_context("cannot poll pgbouncer"))?
            .is_some()
        {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        if wait_with_deadline(&mut child, STOP_TIMEOUT)
            .map_err(io_context("cannot wait for pgbouncer"))?
            .is_none()
        {
            child.kill().map_err(io_context("cannot kill pgbouncer"))?;
            child
                .wait()
                .map_err(io_context("cannot wait for pgbouncer"))?;
        }
        Ok(())
    }
}

impl Drop for ThrowawayPgBouncer {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "cannot stop the throwaway PgBouncer");
        }
        let _ = fs::remove_dir_all(&self.folder);
    }
}
