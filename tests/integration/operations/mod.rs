//! Operating the daemon: HTTP endpoints and metrics, many replicas, the audit trail,
//! signals (SIGTERM mid-pass, SIGHUP reloads) and a server that goes away and comes back.
//! These run the real binary (`run`, `once`, `migrate`, `history`) as operators would.
//!
//! - [`http`]: /metrics, /healthz and /readyz, through a server restart;
//! - [`concurrency`]: replicas sharing a backlog, and passes pacing themselves while other
//!   sessions are at work;
//! - [`pacing`]: what a pass reads as load: the engine's fresh work, leases and lock
//!   waits, never its pollers or a backlog's old queue items;
//! - [`signals`]: SIGTERM mid-pass, SIGHUP reloads, and what systemd hears (sd-notify);
//! - [`audit_and_logs`]: the audit trail and `history`, JSON logs, drift counts per
//!   `pass.drift_interval`;
//! - [`readiness`]: a database reachable but not reconcilable yet (engine store not
//!   migrated, grants to come): `run` waits unready and starts once preflight passes.

mod audit_and_logs;
mod concurrency;
mod http;
mod pacing;
mod readiness;
mod signals;
