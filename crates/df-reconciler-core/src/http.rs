//! The HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz` (the process and its
//! scheduler loop are alive; never touches the database), `/readyz` (configuration valid,
//! database reconcilable as far as `run` last looked, database reachable within a bound,
//! passes not failing for longer than allowed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How long /readyz waits for the database.
const READY_DB_TIMEOUT: Duration = Duration::from_secs(2);
/// /healthz fails when the scheduler loop has not ticked for this long.
pub(crate) const LOOP_STALL_LIMIT: Duration = Duration::from_secs(120);

/// What the endpoints report on; updated by the daemon loop.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the scheduler loop's last tick.
    last_tick_ms: AtomicU64,
    /// Milliseconds since `started` of the first failure of the current failing streak;
    /// 0 when the last pass succeeded.
    failing_since_ms: AtomicU64,
    config_valid: AtomicBool,
    /// Why the database cannot be reconciled yet (preflight's problems, one line), while
    /// `run` waits for it; None once preflight passed.
    not_reconcilable: std::sync::Mutex<Option<String>>,
    pub pool: RwLock<Option<Pool>>,
    pub ready_max_failing: RwLock<Duration>,
}

impl Health {
    pub fn new(ready_max_failing: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            config_valid: AtomicBool::new(true),
            not_reconcilable: std::sync::Mutex::new(None),
            pool: RwLock::new(None),
            ready_max_failing: RwLock::new(ready_max_failing),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    pub fn tick(&self) {
        self.last_tick_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn pass_succeeded(&self) {
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    pub fn pass_failed(&self) {
        let now = self.now_ms();
        let _ =
            self.failing_since_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Records why the database cannot be reconciled (None: it can). Returns whether that
    /// changed, so the caller logs each change once.
    pub fn set_not_reconcilable(&self, reason: Option<String>) -> bool {
        let mut current = self
            .not_reconcilable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = *current != reason;
        *current = reason;
        changed
    }

    fn not_reconcilable(&self) -> Option<String> {
        self.not_reconcilable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_config_valid(&self, valid: bool) {
        self.config_valid.store(valid, Ordering::Relaxed);
    }

    fn loop_alive(&self) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        last != 0 && self.now_ms().saturating_sub(last) < LOOP_STALL_LIMIT.as_millis() as u64
    }

    async fn failing_too_long(&self) -> Option<Duration> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let failing = Duration::from_millis(self.now_ms().saturating_sub(since));
        (failing > *self.ready_max_failing.read().await).then_some(failing)
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Serves until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds the configured address; the error names it.
pub(crate) async fn bind(addr: &str) -> Result<tokio::net::TcpListener, String> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|e| format!("http.listen {addr:?}: {e}"))?;
    tokio::net::TcpListener::bind(parsed)
        .await
        .map_err(|e| format!("cannot listen on http.listen {addr}: {e}"))
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.health.loop_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "scheduler loop stalled\n").into_response()
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let h = &state.health;
    if !h.config_valid.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "configuration invalid\n").into_response();
    }
    if let Some(reason) = h.not_reconcilable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database not reconcilable yet: {reason}\n"),
        )
            .into_response();
    }
    if let Some(failing) = h.failing_too_long().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "passes failing for {}\n",
                humantime::format_duration(failing)
            ),
        )
            .into_response();
    }
    let pool = h.pool.read().await.clone();
    let Some(pool) = pool else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    let probe = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| crate::error::describe_pg_error(&e))?;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(READY_DB_TIMEOUT, probe).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database did not answer within 2s\n",
        )
            .into_response(),
    }
}
