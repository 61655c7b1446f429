//! The integration tests: one binary, one throwaway PostgreSQL cluster shared by all tests
//! (see `support::harness`), one database per test. What each module covers is listed in
//! docs/ARCHITECTURE.md ("Code map") and in each module's own documentation.

mod bad_input;
mod classification;
mod cli;
mod fail_closed;
mod fairness;
mod guarantees;
mod hostile;
mod model;
mod operations;
mod packaging;
mod pooler;
mod real_engine;
mod reliability;
mod smoke;
mod support;
mod tls;
