//! The "Environment" header of a run: the machine, the server and its settings, the
//! benchmark's parameters, and the load average.

use anyhow::Result;

use crate::server::{self, Server};
use crate::stats::thousands;
use crate::Args;

/// The server settings the header lists.
const SETTINGS: [&str; 9] = [
    "shared_buffers",
    "work_mem",
    "maintenance_work_mem",
    "effective_cache_size",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "jit",
    "max_wal_size",
];

/// The Markdown header, ending with a blank line.
pub async fn describe(server: &Server, args: &Args) -> Result<String> {
    let client = server.connect(server::BASE_DB).await?;
    let version: String = client.query_one("SELECT version()", &[]).await?.get(0);
    let mut settings = Vec::new();
    for name in SETTINGS {
        let v: String = client.query_one(&format!("SHOW {name}"), &[]).await?.get(0);
        settings.push(format!("{name}={v}"));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    Ok(format!(
        "## Environment\n\n- cores: {cores} ({cpu}), memory {mem}\n- {version}\n- server: {}\n- N = {}{}, repeat = {}, load average at start: {}\n",
        settings.join(", "),
        thousands(args.n.into()),
        if args.big { " (+ 1,000,000 with --big)" } else { "" },
        args.repeat,
        loadavg()
    ))
}

/// The 1, 5 and 15 minute load averages, "?" without /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
