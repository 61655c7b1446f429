//! What makes sure a server never outlives the process that started it: one spawner
//! thread for every fork, a janitor shell per cluster, and a sweep of stale folders.

use std::{
    ffi::OsStr,
    fs, io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use nix::{errno::Errno, sys::signal::kill, unistd::Pid};

use super::probe::wait_with_deadline;
use super::{io_context, ThrowawayError, FOLDER_PREFIX};

/// The thread every server binary is forked from (see the module docs): the parent-death
/// signal fires when this thread ends, so it lives exactly as long as the cluster.
pub(super) struct Spawner {
    pub(super) requests: Option<mpsc::Sender<SpawnRequest>>,
    pub(super) thread: Option<JoinHandle<()>>,
}

pub(super) struct SpawnRequest {
    pub(super) command: Command,
    pub(super) reply: mpsc::Sender<io::Result<Child>>,
}

impl Spawner {
    pub(super) fn new() -> io::Result<Self> {
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
    pub(super) fn spawn(&self, command: Command) -> io::Result<Child> {
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
pub(super) struct Janitor {
    pub(super) child: Child,
    pub(super) pipe: Option<ChildStdin>,
}

pub(super) const JANITOR_SCRIPT: &str = r#"trap '' INT HUP
cat >/dev/null
i=0
while [ "$i" -lt 600 ] && pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; do
  sleep 0.05
  i=$((i + 1))
done
rm -rf -- "$1"
"#;

impl Janitor {
    pub(super) fn spawn(folder: &Path) -> io::Result<Self> {
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
    pub(super) fn dismiss(mut self) {
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
pub(super) fn sweep_stale_folders(temp_dir: &Path) {
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
pub(super) fn folder_owner_pid(name: &OsStr) -> Option<u32> {
    let (pid, n) = name
        .to_str()?
        .strip_prefix(FOLDER_PREFIX)?
        .split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok().filter(|pid| *pid > 0)
}

pub(super) fn process_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        // EPERM: it exists, it is just not ours to signal.
        Ok(raw) if raw > 0 => matches!(kill(Pid::from_raw(raw), None), Ok(()) | Err(Errno::EPERM)),
        _ => false,
    }
}

/// The processes whose parent is `pid` (from `/proc/<pid>/stat`), e.g. a postmaster's
/// backends and background workers.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| parent_pid(*candidate) == Some(pid))
        .collect()
}

/// Field 4 of `/proc/<pid>/stat`, after the parenthesised command (which may hold
/// spaces and parentheses).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_command = &stat[stat.rfind(')')? + 1..];
    after_command.split_whitespace().nth(1)?.parse().ok()
}

/// Line 1 of `postmaster.pid`.
pub(super) fn postmaster_pid_in(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// pg_ctl's own readiness test: `postmaster.pid` names our pid on line 1 and says "ready"
/// on line 8 once the server accepts sessions (after crash recovery, if any).
pub(super) fn postmaster_reports_ready(data_dir: &Path, pid: u32) -> bool {
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

pub(super) static NEXT_FOLDER: AtomicU32 = AtomicU32::new(0);

pub(super) fn create_folder(temp_dir: &Path) -> Result<PathBuf, ThrowawayError> {
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
    fn children_are_found_by_their_parent() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let found = children_of(std::process::id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
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
}
