//! The integration tests: one binary, one throwaway PostgreSQL cluster shared by all tests
//! (see `harness`), one database per test.

mod bad_input;
mod classification;
mod cli;
mod fail_closed;
mod guarantees;
mod harness;
mod hostile;
mod model;
mod operations;
mod packaging;
mod process;
mod reliability;
mod smoke;
mod support;
mod tls;
