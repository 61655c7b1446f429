//! The integration tests: one binary, one throwaway PostgreSQL cluster shared by all tests
//! (see `harness`), one database per test.

mod harness;
mod smoke;
