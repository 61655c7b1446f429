//! The release daemon binary as a subprocess: `df-reconciler once --json`, its wall time,
//! its report, and its peak resident set size.
//!
//! Peak RSS comes from `/usr/bin/time -f %M` (GNU time reads the child's rusage from
//! wait4, so it is exact and counts only the daemon). Without GNU time the benchmark polls
//! `VmHWM` in `/proc/<pid>/status` every 2 ms instead; the high-water mark is monotonic,
//! so only growth in the last 2 ms of the process could be missed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const GNU_TIME: &str = "/usr/bin/time";
const RSS_MARK: &str = "__bench_maxrss_kb=";

/// One `once --json` run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Spawn to exit, process start and connection included.
    pub wall: Duration,
    /// The pass's own `duration_ms`.
    pub pass_ms: u64,
    pub max_rss_kb: Option<u64>,
    /// How the RSS was read.
    pub rss_method: &'static str,
    pub rows_deleted: BTreeMap<String, u64>,
    pub instances_removed: u64,
    pub batches: u64,
    pub report: serde_json::Value,
}

impl Run {
    pub fn rows_total(&self) -> u64 {
        self.rows_deleted.values().sum()
    }
}

/// The daemon binary: `--daemon-bin`, else `df-reconciler` next to this executable
/// (`target/release/`), built first with the same cargo when run through `cargo run`.
pub fn locate(explicit: Option<PathBuf>, build: bool) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let here = std::env::current_exe().context("locating the benchmark executable")?;
    let dir = here
        .parent()
        .context("the benchmark executable has no folder")?;
    let bin = dir.join("df-reconciler");
    if build {
        if let Some(cargo) = std::env::var_os("CARGO") {
            let profile = if dir.ends_with("release") {
                vec!["--release"]
            } else {
                vec![]
            };
            eprintln!("building the daemon: cargo build {profile:?} -p df-reconciler");
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "df-reconciler",
                    "--bin",
                    "df-reconciler",
                ])
                .args(profile)
                .status()
                .context("running cargo build")?;
            if !status.success() {
                bail!("cargo build -p df-reconciler failed ({status})");
            }
        }
    }
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release -p df-reconciler` first, or pass --daemon-bin",
            bin.display()
        );
    }
    if !dir.ends_with("release") {
        eprintln!(
            "warning: {} is not a release build; figures will not be representative",
            bin.display()
        );
    }
    Ok(bin)
}

/// The daemon binary, and the `--set` overrides of `--daemon-set` that every run of it
/// gets after the measurement's own (so they win).
#[derive(Debug, Clone)]
pub struct Daemon {
    pub bin: PathBuf,
    pub sets: Vec<String>,
}

impl Daemon {
    /// Runs `bin once --json` against `dsn` with extra `--set` overrides; blocks (call it
    /// from `spawn_blocking`). Fails unless the pass completed.
    pub fn once(&self, dsn: &str, sets: &[String]) -> Result<Run> {
        self.once_with(dsn, sets, &[], true)
    }

    /// [`Daemon::once`] with extra arguments of `once` (`--no-drift`), accepting a pass
    /// stopped early (by `pass.max_duration`) when `require_complete` is false.
    pub fn once_with(
        &self,
        dsn: &str,
        sets: &[String],
        once_args: &[&str],
        require_complete: bool,
    ) -> Result<Run> {
        let bin = &self.bin;
        let gnu_time = Path::new(GNU_TIME).exists();
        let mut command = if gnu_time {
            let mut c = Command::new(GNU_TIME);
            c.arg("-f").arg(format!("{RSS_MARK}%M")).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        for set in sets.iter().chain(&self.sets) {
            command.arg("--set").arg(set);
        }
        command
            .args(["once", "--json"])
            .args(once_args)
            .env("DF_RECONCILER__DATABASE__URL", dsn)
            .env("DF_RECONCILER__HTTP__LISTEN", "")
            .env_remove("RUST_LOG")
            .env_remove("DF_RECONCILER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let poller = (!gnu_time).then(|| {
            let pid = child.id();
            std::thread::spawn(move || poll_hwm(pid))
        });
        let output = child.wait_with_output().context("waiting for the daemon")?;
        let wall = started.elapsed();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let (max_rss_kb, rss_method) = match poller {
            None => (
                stderr
                    .lines()
                    .rev()
                    .find_map(|l| l.trim().strip_prefix(RSS_MARK))
                    .and_then(|v| v.trim().parse().ok()),
                "GNU time (wait4 rusage)",
            ),
            Some(handle) => (
                handle.join().ok().flatten(),
                "/proc VmHWM polled every 2 ms",
            ),
        };
        if !output.status.success() {
            bail!(
                "df-reconciler once exited with {}:\n{}\n{}",
                output.status,
                stdout,
                stderr
            );
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .context("no JSON report on stdout")?;
        let report: serde_json::Value = serde_json::from_str(line).context("parsing the report")?;
        let rows_deleted = report["rows_deleted"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .filter(|(_, v)| *v > 0)
                    .collect()
            })
            .unwrap_or_default();
        let expired = &report["expired_removed"];
        let instances_removed = ["completed", "failed", "cancelled"]
            .iter()
            .map(|k| expired[*k].as_u64().unwrap_or(0))
            .sum::<u64>()
            + report["capped_removed"].as_u64().unwrap_or(0)
            + report["orphans_reclaimed"].as_u64().unwrap_or(0);
        if require_complete && report["complete"] != serde_json::Value::Bool(true) {
            bail!("the pass did not complete: {report}");
        }
        Ok(Run {
            wall,
            pass_ms: report["duration_ms"].as_u64().unwrap_or(0),
            max_rss_kb,
            rss_method,
            rows_deleted,
            instances_removed,
            batches: report["batches"].as_u64().unwrap_or(0),
            report,
        })
    }
}

/// The last `VmHWM` seen while the process lives.
fn poll_hwm(pid: u32) -> Option<u64> {
    let path = format!("/proc/{pid}/status");
    let mut last = None;
    while let Ok(text) = std::fs::read_to_string(&path) {
        match text
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            Some(kb) => last = Some(kb),
            // A zombie has no memory lines any more: it has exited.
            None => break,
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    last
}
