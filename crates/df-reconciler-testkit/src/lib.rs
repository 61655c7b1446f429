//! df-reconciler's test machinery: what `demo`, the integration tests and the benchmark
//! need, and the daemon's library does not ship.
//!
//! # Layout
//! - [`throwaway`]: a disposable PostgreSQL cluster that never outlives its process, and
//!   a PgBouncer in transaction mode to put in front of it.
//! - [`fixture`]: an imitation of pg_durable's two stores (`df` and `_duroxide`), seed
//!   helpers writing every row a real instance has, and the demo population.
//! - [`real_engine`]: the real pg_durable extension, when installed, as a test tier: a
//!   throwaway cluster with its background worker (the engine) running.

pub mod fixture;
pub mod real_engine;
pub mod throwaway;

pub use real_engine::{real_extension_available, RealEngine, RealEngineError};
pub use throwaway::{
    pgbouncer_available, ClusterOptions, ThrowawayCluster, ThrowawayError, ThrowawayPgBouncer,
};
