//! One test per row of the classification table in the specification (reconcile.md), plus
//! the terminal_at and hard-cap rules. Each test seeds a small population with the
//! `df_fixture` functions, runs a pass, and asserts on the database state.
//!
//! - [`df_rows`]: instances with a df row: expired, settled or not, with or without an
//!   engine record; terminal ones within their window; live ones;
//! - [`orphans`]: engine roots without a df row (old, young, running), engine children,
//!   queue items nobody owns;
//! - [`explain`]: `explain`'s verdict for every row is what the pass then does;
//! - [`leases`]: dispatcher leases and what a lease puts back;
//! - [`age_and_cap`]: where terminal_at comes from, per-status windows, the hard cap;
//! - [`generations`]: old generations of the instances that stay, pruned;
//! - [`rules`]: `[[retention.rules]]`: first match wins, own caps, roles, bound globs;
//! - [`trees`]: an ended root whose descendants still run keeps its whole tree (df rows'
//!   and orphans') until every member has ended.

mod age_and_cap;
mod df_rows;
mod explain;
mod generations;
mod leases;
mod orphans;
mod rules;
mod trees;
