//! Running the real binary as operators do: a clean environment, children that never
//! outlive the test, signals, exit deadlines, and a tiny HTTP client for the endpoints.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The df-reconciler binary, with none of the test process's DF_RECONCILER variables (nor
/// RUST_LOG) that could configure it.
pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_df-reconciler"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DF_RECONCILER") || key == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// [`binary`] pointed at `dsn`, with no HTTP endpoint and no start-up jitter.
pub fn daemon(dsn: &str) -> Command {
    let mut cmd = binary();
    cmd.env("DF_RECONCILER__DATABASE__URL", dsn)
        .env("DF_RECONCILER__HTTP__LISTEN", "")
        .env("DF_RECONCILER__PASS__JITTER", "0s");
    cmd
}

/// Discards the child's output (for long-running daemons nobody reads).
pub fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdout(Stdio::null()).stderr(Stdio::null())
}

/// A temporary `.toml` file holding `text`, removed when dropped: a configuration for
/// `--config` or `DF_RECONCILER_CONFIG`.
pub fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

/// Runs to completion off the async runtime.
pub async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Kills the child when the test ends, however it ends.
pub struct Running(pub Child);

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        Running(cmd.spawn().expect("the daemon starts"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name}");
}

/// Waits for the child to exit within `limit`; kills it and panics otherwise.
pub async fn exit_within(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free port on the loopback (bound and released; the daemon binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 GET: (status code, body). None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// [`http_get`] off the async runtime.
pub async fn get(port: u16, path: &'static str) -> Option<(u16, String)> {
    tokio::task::spawn_blocking(move || http_get(port, path))
        .await
        .unwrap()
}

/// The value of one sample of the daemon's /metrics on `port`; None when nothing answers
/// or the sample is not there.
pub async fn metric_at(port: u16, name_and_labels: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics").await?;
    metric(&body, name_and_labels)
}

/// The value of one sample line of an OpenMetrics body.
pub fn metric(body: &str, name_and_labels: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `cmd` (e.g. [`daemon`]) running `run` with audit.record_deletions on, until its first
/// real pass ended (ok or failed, at most 60 s), then SIGTERM. Returns how it went:
/// `["run"]: first pass ok, exit status: 0` when all went well.
pub async fn first_pass_of_run(mut cmd: Command) -> String {
    let port = free_port();
    let stderr = tempfile::NamedTempFile::new().expect("a file for the daemon's log");
    cmd.arg("run")
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DF_RECONCILER__AUDIT__RECORD_DELETIONS", "true")
        .stdout(Stdio::null())
        .stderr(stderr.reopen().expect("the daemon's log file"));
    let mut daemon = Running::spawn(&mut cmd);
    let began = Instant::now();
    let mut outcome = "no pass within 60s".to_owned();
    while began.elapsed() < Duration::from_secs(60) {
        let mut ended = None;
        for result in ["ok", "failed"] {
            let metric =
                format!("df_reconciler_passes_total{{outcome=\"{result}\",dry_run=\"false\"}}");
            if metric_at(port, &metric).await.unwrap_or(0.0) >= 1.0 {
                ended = Some(result);
            }
        }
        if let Some(result) = ended {
            outcome = format!("first pass {result}");
            break;
        }
        if daemon.0.try_wait().unwrap().is_some() {
            outcome = "exited before its first pass".to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if daemon.0.try_wait().unwrap().is_none() {
        signal(&daemon.0, "TERM");
    }
    let status = exit_within(&mut daemon.0, Duration::from_secs(30)).await;
    if outcome == "first pass ok" && status.success() {
        return format!("[\"run\"]: {outcome}, {status}");
    }
    let log = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    format!(
        "[\"run\"]: {outcome}, {status}; its log ends:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}
