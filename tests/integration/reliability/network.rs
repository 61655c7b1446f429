//! The network between the daemon and the server fails: an in-test TCP proxy black-holes
//! or cuts the connections of a running daemon, which notices, keeps running, leaves no
//! transaction open and resumes once the path returns.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::support::db::{count, violations};
use crate::support::harness::{wait_until, TestDb};
use crate::support::passes::remaining;
use crate::support::process::{daemon, free_port, metric_at, quiet, Running};
use crate::support::seed::backlog;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Forward,
    /// Accepts and reads, never delivers: a dead path that does not close.
    BlackHole,
    /// Closes every connection and refuses new ones.
    Cut,
}

/// An in-test TCP proxy in front of the server.
struct Proxy {
    port: u16,
    path: watch::Sender<Path>,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (path, watcher) = watch::channel(Path::Forward);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                if *watcher.borrow() == Path::Cut {
                    continue; // dropped: closed at once
                }
                let watcher = watcher.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, watcher.clone()) => {}
                        _ = pump(sr, cw, watcher) => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Proxy { port, path, stop }
    }

    fn set(&self, path: Path) {
        self.path.send_replace(path);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies one direction while the path forwards; holds data while black-holed; returns
/// (closing both halves) when cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut path: watch::Receiver<Path>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = path.changed() => {
                if *path.borrow() == Path::Cut { return; }
                continue;
            }
        };
        loop {
            let now = *path.borrow_and_update();
            match now {
                Path::Forward => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    break;
                }
                Path::Cut => return,
                Path::BlackHole => {
                    if path.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Failed passes so far, as the daemon's /metrics on `port` counts them (0 when it does not
/// answer).
async fn failed_passes(port: u16) -> f64 {
    metric_at(
        port,
        "df_reconciler_passes_total{outcome=\"failed\",dry_run=\"false\"}",
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_black_holed_connections_are_noticed_and_recovered_from() {
    let db = TestDb::new().await;
    let c = db.client().await;
    backlog(&c, 4000).await;
    let proxy = Proxy::start(db.port()).await;
    let via_proxy = db
        .dsn
        .replace(&format!(":{}/", db.port()), &format!(":{}/", proxy.port));
    let http = free_port();
    let mut run = daemon(&via_proxy);
    run.arg("run")
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("DF_RECONCILER__PASS__INTERVAL", "1s")
        .env("DF_RECONCILER__PASS__BATCH_SIZE", "20")
        .env("DF_RECONCILER__PASS__STATEMENT_TIMEOUT", "1s")
        .env("DF_RECONCILER__PASS__RETRY_BACKOFF_MAX", "1s")
        .env("DF_RECONCILER__DATABASE__CONNECT_TIMEOUT", "2s")
        .env("DF_RECONCILER__PASS__LEADER_ELECTION", "false");
    let mut child = Running::spawn(quiet(&mut run));
    let total = count(&c, "SELECT count(*) FROM df.instances").await;
    wait_until("passes are deleting", Duration::from_secs(60), || async {
        count(&c, "SELECT count(*) FROM df.instances").await < total - 200
    })
    .await;

    for (fault, notice_within) in [(Path::BlackHole, 30), (Path::Cut, 15)] {
        let failures_before = failed_passes(http).await;
        let at = Instant::now();
        proxy.set(fault);
        wait_until(
            &format!("a failed pass is reported under {fault:?}"),
            Duration::from_secs(notice_within),
            || async { failed_passes(http).await > failures_before },
        )
        .await;
        eprintln!("{fault:?} noticed after {:?}", at.elapsed());
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the daemon keeps running"
        );
        // Locks of an abandoned batch do not outlive it on the server.
        wait_until(
            "no reconciler transaction left open",
            Duration::from_secs(20),
            || async {
                count(
                    &c,
                    "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'df-reconciler' AND datname = current_database()
                    AND xact_start IS NOT NULL",
                )
                .await
                    == 0
            },
        )
        .await;
        assert!(
            violations(&c).await.is_empty(),
            "{:?}",
            violations(&c).await
        );
        let before = count(&c, "SELECT count(*) FROM df.instances").await;
        proxy.set(Path::Forward);
        wait_until(
            "passes resume once the path returns",
            Duration::from_secs(60),
            || async { count(&c, "SELECT count(*) FROM df.instances").await < before },
        )
        .await;
    }
    wait_until(
        "the backlog is cleared",
        Duration::from_secs(120),
        || async { remaining(&db).await == 0 },
    )
    .await;
    assert!(violations(&c).await.is_empty());
    drop(child);
}
