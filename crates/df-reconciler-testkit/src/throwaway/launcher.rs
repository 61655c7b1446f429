//! Which server binaries start the cluster, as which OS user.

use std::{
    env, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::unistd::{geteuid, User};

use super::reaper::Spawner;
use super::{io_context, ThrowawayError, SUPERUSER};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PortChoice {
    Fresh,
    Keep,
}

/// How server binaries are started: which ones, as whom, from which thread.
pub(super) struct Launcher {
    pub(super) binaries: ServerBinaries,
    pub(super) setpriv: PathBuf,
    /// Set when running as root: the `postgres` OS user.
    pub(super) run_as: Option<OsUser>,
    pub(super) spawner: Spawner,
    /// The parent-death signal: `SIGINT` (fast shutdown) or `SIGQUIT` (immediate).
    pub(super) death_signal: &'static str,
}

pub(super) struct OsUser {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

impl Launcher {
    /// `setpriv [--reuid postgres ...] --pdeathsig SIGINT -- program` (SIGQUIT for an
    /// immediate shutdown), in `cwd` (root's working directory may be unreadable for
    /// `postgres`), without the caller's PG* variables (PGDATA, PGPORT... would silently
    /// change what the binaries do).
    pub(super) fn command(&self, program: &Path, cwd: &Path) -> Command {
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
            .args(["--pdeathsig", self.death_signal, "--"])
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
pub(super) fn server_os_user() -> Result<Option<OsUser>, ThrowawayError> {
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
pub(super) struct ServerBinaries {
    pub(super) bindir: PathBuf,
}

impl ServerBinaries {
    /// PATH first, then `pg_config --bindir`, then Debian's `/usr/lib/postgresql/<ver>/bin`,
    /// newest version first.
    pub(super) fn find() -> Result<Self, ThrowawayError> {
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

    pub(super) fn initdb(&self) -> PathBuf {
        self.bindir.join("initdb")
    }

    pub(super) fn postgres(&self) -> PathBuf {
        self.bindir.join("postgres")
    }
}

pub(super) fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (output.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `/usr/lib/postgresql/<version>/bin`, newest version first.
pub(super) fn debian_bindirs() -> Vec<PathBuf> {
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

pub(super) fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).find_map(|dir| executable(&dir.join(name)))
}

pub(super) fn executable(path: &Path) -> Option<PathBuf> {
    let meta = fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}
