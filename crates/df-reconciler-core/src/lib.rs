//! df-reconciler's domain: everything the binary and the tests share.
//!
//! # Layout
//! - [`config`]: the operator's configuration (TOML, environment, flags) and its guards.
//! - [`policy`]: pure decisions (is this engine id a child? which retention window applies?).
//! - [`rules`]: `[[retention.rules]]`: which instances a rule covers, its effective policy.
//! - [`sql`]: every SQL statement, one module per store plus the cross-store selections.
//! - [`preflight`]: engine-schema discovery and the fail-closed checks run before a pass.
//! - [`pass`]: one reconciliation pass: keyset batches, locking, deletion, the report.
//! - [`report`]: [`report::PassReport`], the numbers of one pass.
//! - [`db`]: all database access: the connection pool, libpq DSN parsing, and libpq's
//!   `sslmode` on rustls (secrets never printed).
//! - [`daemon`]: the `run` loop: leadership, backoff, reload, a pass every interval.
//! - [`readiness`]: a database reachable but not reconcilable yet: what `run` says while
//!   it waits for it.
//! - [`locks`]: every advisory-lock key (batch fence, leader, migration).
//! - [`metrics`]: the Prometheus registry, fed from pass reports.
//! - [`http`]: /metrics, /healthz, /readyz.
//! - [`lifecycle`]: systemd notifications (READY, WATCHDOG, STATUS, STOPPING).
//! - [`audit`]: the daemon's own schema: passes and deletions, and its migrations.
//!
//! The test machinery (throwaway clusters, the imitation of both stores) lives in the
//! `df-reconciler-testkit` crate; this library ships none of it.

#![warn(unreachable_pub)]

pub mod audit;
pub mod config;
pub mod daemon;
pub mod db;
pub mod error;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod locks;
pub mod metrics;
pub mod pass;
pub mod policy;
pub mod preflight;
pub mod readiness;
pub mod report;
pub mod rules;
pub mod sql;
