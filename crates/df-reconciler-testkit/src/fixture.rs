//! The pg_durable control plane and the duroxide engine store as test fixtures.
//!
//! Three SQL scripts, compiled into the crate so that `demo`, the integration tests and the
//! benchmark need nothing from the build machine at run time. Each runs as one simple-query
//! batch (`batch_execute`), as a superuser, in this order:
//!
//! 1. [`SCHEMA_SQL`]: an imitation of both stores as a fresh `CREATE EXTENSION pg_durable`
//!    0.2.6 installs them on PostgreSQL 15: schema `df` (instances, nodes, the deferred
//!    foreign-key cycle, row-level security, column grants, `df.duroxide_schema()`) and
//!    schema `_duroxide` (every engine table, migrations 1-21, the readiness row, and
//!    `_duroxide.delete_instances_atomic`). Meant for an empty database, usually a template.
//! 2. [`SEED_FUNCTIONS_SQL`]: schema `df_fixture`, helpers writing every row a real
//!    instance has: `workflow`, `orphan_root`, `queue_only`, `lock_instance`, the set-based
//!    `backlog` for the benchmark, and `rename_engine_schema` for the legacy `duroxide` name.
//! 3. [`DEMO_SEED_SQL`]: the demo population, a few dozen instances covering every row of
//!    the classification table, with times relative to `now()`.
//!
//! None of this is part of pg_durable: only `demo` (on its throwaway cluster), the tests and
//! the benchmark run these scripts.

/// Both stores' schemas (`df` and `_duroxide`), for an empty database.
pub const SCHEMA_SQL: &str = include_str!("../sql/fixture/schema.sql");

/// The `df_fixture` seed helpers; run after [`SCHEMA_SQL`].
pub const SEED_FUNCTIONS_SQL: &str = include_str!("../sql/fixture/seed_functions.sql");

/// The demo population; run after [`SEED_FUNCTIONS_SQL`].
pub const DEMO_SEED_SQL: &str = include_str!("../sql/fixture/demo_seed.sql");
