//! Bad input to the real binary: every configuration key with a wrong type or value (in
//! the file and in the environment), unknown keys, unreadable files, DSNs that cannot
//! work, roles and databases the daemon must refuse. Each case expects ONE clear error
//! naming its cause, the documented exit code (0 ok, 1 runtime failure, 2 bad usage or
//! configuration, 3 refused), no password in any output, and, where a database is
//! involved, every seeded row still there afterwards.
//!
//! Cases already covered elsewhere are not repeated: a missing config file and the
//! precedence of file, environment and `--set` (cli.rs), nothing listening for `once`
//! (cli.rs, fail_closed.rs), missing tables for `check` and `run` (cli.rs), the library's
//! refusals (fail_closed.rs).
//!
//! - [`config_values`]: every key with wrong types and values, in the file and the
//!   environment; no coercion across types; durations the daemon cannot use;
//! - [`config_files`]: unknown keys and sections, unreadable configuration files;
//! - [`usage`]: command lines that are usage errors;
//! - [`dsn`]: where the daemon connects: url_file, malformed DSNs, a missing database, a
//!   dead port, a wrong password;
//! - [`refusals`]: roles, schemas and tables the daemon must refuse (exit 3), and an
//!   unknown engine migration, which only warns.

use std::collections::BTreeSet;
use std::process::Command;

use df_reconciler_core::config::Config;
use df_reconciler_core::error::exit_code::USAGE;
use tokio_postgres::Client;

use crate::support::db::table_counts;
use crate::support::harness::TestDb;
use crate::support::process;

mod config_files;
mod config_values;
mod dsn;
mod refusals;
mod usage;

/// The password every DSN of these tests carries; it must never be printed.
pub(super) const SECRET: &str = "pw-Zq8-never-printed";

/// What one run of the binary printed, and how it ended.
pub(super) struct Run {
    pub(super) what: String,
    pub(super) code: Option<i32>,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Run {
    pub(super) fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Lines the binary prints for its final error (log lines are not counted).
    pub(super) fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("df-reconciler: ") || l.starts_with("error: "))
            .collect()
    }

    pub(super) fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "{}: exit code\n--- stdout\n{}--- stderr\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        assert!(
            !self.all().contains(SECRET),
            "{}: the password was printed:\n{}",
            self.what,
            self.all()
        );
        self
    }

    /// Exit 2 with exactly one error line, naming every needle.
    pub(super) fn usage_error(&self, needles: &[&str]) -> &Self {
        self.expect(USAGE).one_error(needles)
    }

    /// What is wrong with this run as a usage error naming `needle`, if anything.
    pub(super) fn usage_problem(&self, needle: &str) -> Option<String> {
        let lines = self.error_lines();
        if self.code != Some(USAGE) {
            Some(format!("exit {:?}, {}", self.code, self.all().trim()))
        } else if self.all().contains(SECRET) {
            Some(format!("printed the password: {}", self.all()))
        } else if lines.len() != 1 || !lines[0].contains(needle) {
            Some(format!("error lines {lines:?} do not name {needle:?}"))
        } else {
            None
        }
    }

    pub(super) fn one_error(&self, needles: &[&str]) -> &Self {
        let lines = self.error_lines();
        assert_eq!(
            lines.len(),
            1,
            "{}: one error, got:\n{}",
            self.what,
            self.stderr
        );
        for needle in needles {
            assert!(
                lines[0].contains(needle),
                "{}: the error should name {needle:?}: {}",
                self.what,
                lines[0]
            );
        }
        self
    }

    pub(super) fn mentions(&self, needle: &str) -> &Self {
        assert!(
            self.all().contains(needle),
            "{}: expected {needle:?} in\n{}",
            self.what,
            self.all()
        );
        self
    }
}

/// The binary with nothing inherited from the test's environment that could configure it,
/// no HTTP listener, and plain logs.
pub(super) fn reconciler(args: &[&str]) -> Command {
    let mut cmd = process::binary();
    cmd.env("DF_RECONCILER__HTTP__LISTEN", "")
        .env("NO_COLOR", "1")
        .args(args);
    cmd
}

/// Runs `cmd` to completion (off the async runtime), described as `what`.
pub(super) async fn run(what: impl Into<String>, cmd: Command) -> Run {
    let what = what.into();
    let out = process::run(cmd).await;
    Run {
        what,
        code: out.status.code(),
        stdout: process::text(&out.stdout),
        stderr: process::text(&out.stderr),
    }
}

/// Runs many invocations at once (each is a short-lived process).
pub(super) async fn run_all(cases: Vec<(String, Command)>) -> Vec<Run> {
    let mut handles = Vec::new();
    for (what, cmd) in cases {
        handles.push(tokio::spawn(run(what, cmd)));
    }
    let mut runs = Vec::new();
    for h in handles {
        runs.push(h.await.unwrap());
    }
    runs
}

pub(super) fn secret_dsn(db: &TestDb) -> String {
    db.dsn.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{SECRET}@"),
        1,
    )
}

/// Row counts of the tables every seeded instance has rows in, in both stores.
pub(super) async fn snapshot(c: &Client) -> Vec<i64> {
    table_counts(
        c,
        &[
            "df.instances",
            "df.nodes",
            "_duroxide.instances",
            "_duroxide.executions",
            "_duroxide.history",
            "_duroxide.kv_store",
        ],
    )
    .await
}

/// Every `section.key` of the configuration, from the serialized defaults: a key added
/// to the daemon without cases here fails the test.
pub(super) fn all_keys() -> BTreeSet<String> {
    let value = serde_json::to_value(Config::default()).expect("the config serializes");
    let mut keys = BTreeSet::new();
    for (section, table) in value.as_object().expect("sections") {
        for key in table.as_object().expect("keys").keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

pub(super) fn env_name(key: &str) -> String {
    format!("DF_RECONCILER__{}", key.replace('.', "__").to_uppercase())
}
