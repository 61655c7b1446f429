//! df-reconciler's domain: everything the binary and the tests share.
//!
//! # Layout
//! - [`config`]: the operator's configuration (TOML, environment, flags) and its guards.
//! - [`policy`]: pure decisions (is this engine id a child? which retention window applies?).
//! - [`sql`]: every SQL statement, one module per store plus the cross-store selections.
//! - [`preflight`]: engine-schema discovery and the fail-closed checks run before a pass.
//! - [`pass`]: one reconciliation pass: keyset batches, locking, deletion, the report.
//! - [`report`]: [`report::PassReport`], the numbers of one pass.
//! - [`db`]: the connection pool and DSN handling (secrets never printed).
//! - [`daemon`]: the `run` loop: a pass every interval until shutdown.
//! - [`demo`]: the zero-setup tour behind `df-reconciler demo`.
//! - [`throwaway`]: a disposable PostgreSQL cluster for `demo` and the tests.
//! - [`fixture`]: the pg_durable + duroxide schemas and seed data used by `demo` and tests.

pub mod config;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod error;
pub mod fixture;
pub mod pass;
pub mod policy;
pub mod preflight;
pub mod report;
pub mod sql;
pub mod throwaway;
