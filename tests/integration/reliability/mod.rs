//! Reliability: crashes (server and daemon), cut and black-holed connections through an
//! in-test TCP proxy, and a live engine-like workload running against the reconciler.
//! Invariant throughout: no instance is ever half-deleted, nothing live, unsettled, leased
//! or possibly-still-owned is deleted, and the next pass finishes the work.
//!
//! `DF_RECONCILER_LONG_TESTS=1` stretches the workload and load scenarios (see
//! docs/RELIABILITY.md); the default run keeps them short.
//!
//! - [`crashes`]: the server or the daemon dies mid-pass;
//! - [`network`]: cut and black-holed connections through an in-test TCP proxy;
//! - [`live_engine`]: an engine-like workload (starts, completions, leases) running against
//!   an aggressive reconciler, guarded by triggers;
//! - [`sustained_load`]: memory and connections of `run` under a steady stream of work.

mod crashes;
mod live_engine;
mod network;
mod sustained_load;

/// Scales the long-running scenarios: 1 by default, more with DF_RECONCILER_LONG_TESTS.
pub(super) fn scale() -> u64 {
    match std::env::var("DF_RECONCILER_LONG_TESTS").ok().as_deref() {
        Some("1") | Some("true") => 20,
        _ => 1,
    }
}
