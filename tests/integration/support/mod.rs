//! What the test modules share, one module per concern:
//! - [`harness`]: the PostgreSQL every test runs against (one shared throwaway cluster, a
//!   database per test, private clusters for tests that crash the server), and
//!   `wait_until`, the only way tests wait;
//! - [`process`]: the real binary run as operators run it (clean environment, children
//!   that never outlive the test, signals, exit deadlines, temporary config files, the
//!   HTTP endpoints and their metrics);
//! - [`seed`]: populations written with the `df_fixture` functions;
//! - [`db`]: reading back what a database holds (ids, counts, whole instances, violations
//!   of both stores' consistency);
//! - [`passes`]: configuring and running a pass in-process;
//! - [`role`]: the shipped role (`deploy/sql/reconciler-role.sql`) applied to a database.

pub mod db;
pub mod harness;
pub mod passes;
pub mod process;
pub mod role;
pub mod seed;
