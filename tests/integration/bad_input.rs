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

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use df_reconciler_core::config::Config;
use df_reconciler_core::error::exit_code::{FAILED, OK, REFUSED, USAGE};
use tokio_postgres::Client;

use crate::classification::{orphan, workflow};
use crate::harness::{self, wait_until, TestDb};
use crate::support::count;

const DAY: f64 = 86_400.0;

/// The password every DSN of these tests carries; it must never be printed.
const SECRET: &str = "pw-Zq8-never-printed";

/// What one run of the binary printed, and how it ended.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Lines the binary prints for its final error (log lines are not counted).
    fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("df-reconciler: ") || l.starts_with("error: "))
            .collect()
    }

    fn expect(&self, code: i32) -> &Self {
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
    fn usage_error(&self, needles: &[&str]) -> &Self {
        self.expect(USAGE).one_error(needles)
    }

    /// What is wrong with this run as a usage error naming `needle`, if anything.
    fn usage_problem(&self, needle: &str) -> Option<String> {
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

    fn one_error(&self, needles: &[&str]) -> &Self {
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

    fn mentions(&self, needle: &str) -> &Self {
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
fn reconciler(args: &[&str]) -> Command {
    let mut cmd = crate::process::binary();
    cmd.env("DF_RECONCILER__HTTP__LISTEN", "")
        .env("NO_COLOR", "1")
        .args(args);
    cmd
}

async fn run(what: impl Into<String>, mut cmd: Command) -> Run {
    let what = what.into();
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .unwrap();
    Run {
        what,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs many invocations at once (each is a short-lived process).
async fn run_all(cases: Vec<(String, Command)>) -> Vec<Run> {
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

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn secret_dsn(db: &TestDb) -> String {
    db.dsn.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{SECRET}@"),
        1,
    )
}

/// Deletable rows (an expired workflow with a child, an old orphan), so that a run that
/// should do nothing visibly did nothing.
async fn seed_deletable(c: &Client) {
    workflow(
        c,
        "70000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    orphan(c, "70000002", "Failed", 60.0 * DAY, 60.0 * DAY, 0).await;
}

/// Row counts of the tables every seeded instance has rows in, in both stores.
async fn snapshot(c: &Client) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "df.instances",
        "df.nodes",
        "_duroxide.instances",
        "_duroxide.executions",
        "_duroxide.history",
        "_duroxide.kv_store",
    ] {
        counts.push(count(c, &format!("SELECT count(*) FROM {table}")).await);
    }
    counts
}

// ---------------------------------------------------------------------------------------
// The configuration, offline
// ---------------------------------------------------------------------------------------

/// Per key: wrong values as (TOML literal, the same through the environment when a string
/// can express it), and one good TOML value.
type KeyCases = (
    &'static str,
    &'static [(&'static str, Option<&'static str>)],
    &'static str,
);

const LONG_NAME: &str = "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"";

const KEYS: &[KeyCases] = &[
    // A malformed DSN or an unreadable url_file / ca_file is only found when the
    // connection is set up: see the tests below, which run `once` and `check`.
    (
        "database.url",
        &[("[1]", None), ("{ host = \"h\" }", None)],
        "\"postgres://u@h/db\"",
    ),
    (
        "database.url_file",
        &[("[1]", None), ("{ a = 1 }", None)],
        "\"/run/secrets/dsn\"",
    ),
    (
        "database.pool_size",
        &[
            ("\"many\"", Some("many")),
            ("0", Some("0")),
            ("-1", Some("-1")),
            ("-1.0", None),
        ],
        "3",
    ),
    (
        "database.connect_timeout",
        &[
            ("30", Some("30")),
            ("\"soon\"", Some("soon")),
            ("\"\"", Some("")),
            ("true", Some("true")),
        ],
        "\"5s\"",
    ),
    (
        "database.application_name",
        &[("[1]", None), ("{ a = 1 }", None)],
        "\"reconciler-a\"",
    ),
    (
        "tls.ca_file",
        &[("[1]", None), ("{ a = 1 }", None)],
        "\"/etc/ssl/ca.pem\"",
    ),
    (
        "schemas.control",
        &[("\"\"", Some("")), (LONG_NAME, None), ("[1]", None)],
        "\"ctl\"",
    ),
    (
        "schemas.engine",
        &[("\"\"", Some("")), (LONG_NAME, None), ("{ a = 1 }", None)],
        "\"eng\"",
    ),
    (
        "retention.window",
        &[
            ("\"30m\"", Some("30m")),
            ("\"30 parsecs\"", Some("30 parsecs")),
            ("30", Some("30")),
            ("\"\"", Some("")),
        ],
        "\"7d\"",
    ),
    (
        "retention.completed",
        &[
            ("\"10s\"", Some("10s")),
            ("\"never\"", Some("never")),
            ("[1]", None),
        ],
        "\"7d\"",
    ),
    (
        "retention.failed",
        &[
            ("\"59m\"", Some("59m")),
            ("\"-1d\"", Some("-1d")),
            ("1", Some("1")),
        ],
        "\"90d\"",
    ),
    (
        "retention.cancelled",
        &[
            ("\"0s\"", Some("0s")),
            ("\"1 fortnight\"", Some("1 fortnight")),
        ],
        "\"1d\"",
    ),
    (
        "retention.hard_cap",
        &[
            ("\"many\"", Some("many")),
            ("-1", Some("-1")),
            ("[1]", None),
        ],
        "0",
    ),
    (
        "retention.orphan_min_age",
        &[("\"5m\"", Some("5m")), ("\"x\"", Some("x"))],
        "\"2h\"",
    ),
    (
        "retention.allow_short_retention",
        &[
            ("\"maybe\"", Some("maybe")),
            ("[true]", None),
            ("\"\"", None),
        ],
        "true",
    ),
    (
        "pass.interval",
        &[("\"often\"", Some("often")), ("10", Some("10"))],
        "\"10m\"",
    ),
    (
        "pass.batch_size",
        &[
            ("0", Some("0")),
            ("-3", Some("-3")),
            ("4294967296", Some("4294967296")),
            ("\"x\"", Some("x")),
        ],
        "10",
    ),
    (
        "pass.statement_timeout",
        &[("\"0s\"", Some("0s")), ("\"x\"", Some("x"))],
        "\"5s\"",
    ),
    (
        "pass.lock_timeout",
        &[("\"0s\"", Some("0s")), ("\"x\"", Some("x"))],
        "\"1s\"",
    ),
    (
        "pass.max_duration",
        &[("\"x\"", Some("x")), ("\"\"", Some(""))],
        "\"10m\"",
    ),
    (
        "pass.jitter",
        &[("\"-1s\"", Some("-1s")), ("\"x\"", Some("x"))],
        "\"0s\"",
    ),
    (
        "pass.busy_duty_percent",
        &[("0", Some("0")), ("101", Some("101")), ("0.5", Some("0.5"))],
        "100",
    ),
    (
        "pass.drift_interval",
        &[("\"-1s\"", Some("-1s")), ("\"soon\"", Some("soon"))],
        "\"0s\"",
    ),
    (
        "pass.retry_backoff_max",
        &[("\"x\"", Some("x")), ("5", Some("5"))],
        "\"1m\"",
    ),
    (
        "pass.leader_election",
        &[("\"maybe\"", Some("maybe")), ("[1]", None)],
        "false",
    ),
    (
        "http.listen",
        &[
            ("\"nowhere\"", Some("nowhere")),
            ("\"127.0.0.1:99999\"", Some("127.0.0.1:99999")),
            ("[1]", None),
        ],
        "\"127.0.0.1:0\"",
    ),
    (
        "http.ready_max_failing",
        &[("true", Some("true")), ("\"x\"", Some("x"))],
        "\"1m\"",
    ),
    (
        "log.format",
        &[("\"xml\"", Some("xml")), ("5", Some("5"))],
        "\"json\"",
    ),
    (
        "audit.schema",
        &[("\"\"", Some("")), (LONG_NAME, None)],
        "\"audit_a\"",
    ),
    (
        "audit.auto_migrate",
        &[("\"maybe\"", Some("maybe")), ("{ a = 1 }", None)],
        "true",
    ),
    (
        "audit.record_deletions",
        &[("\"maybe\"", Some("maybe"))],
        "true",
    ),
    (
        "audit.retention",
        &[("\"1 fortnight\"", Some("1 fortnight")), ("[1]", None)],
        "\"7d\"",
    ),
];

/// Every `section.key` of the configuration, from the serialized defaults: a key added
/// to the daemon without cases here fails the test.
fn all_keys() -> BTreeSet<String> {
    let value = serde_json::to_value(Config::default()).expect("the config serializes");
    let mut keys = BTreeSet::new();
    for (section, table) in value.as_object().expect("sections") {
        for key in table.as_object().expect("keys").keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

/// A TOML file setting `key` (`section.key`) to `literal`, next to a DSN with a password.
fn toml_setting(key: &str, literal: &str) -> String {
    let (section, name) = key.split_once('.').unwrap();
    let dsn = format!("url = \"postgres://u:{SECRET}@h/db\"\n");
    match (section, name) {
        ("database", "url") => format!("[database]\nurl = {literal}\n"),
        ("database", _) => format!("[database]\n{dsn}{name} = {literal}\n"),
        _ => format!("[database]\n{dsn}[{section}]\n{name} = {literal}\n"),
    }
}

fn env_name(key: &str) -> String {
    format!("DF_RECONCILER__{}", key.replace('.', "__").to_uppercase())
}

#[tokio::test]
async fn every_key_with_a_wrong_type_or_value_is_named_in_file_and_environment() {
    let covered: BTreeSet<String> = KEYS.iter().map(|(k, _, _)| k.to_string()).collect();
    assert_eq!(
        covered,
        all_keys(),
        "every configuration key has bad-input cases"
    );

    let mut files = Vec::new();
    let mut cases = Vec::new();
    let mut named = Vec::new();
    for (key, bad, _) in KEYS {
        for (literal, env) in *bad {
            let file = toml_file(&toml_setting(key, literal));
            let mut cmd = reconciler(&["check", "--offline", "--config"]);
            cmd.arg(file.path());
            if *key == "http.listen" {
                cmd.env_remove("DF_RECONCILER__HTTP__LISTEN"); // it would win over the file
            }
            cases.push((format!("file: {key} = {literal}"), cmd));
            named.push(*key);
            files.push(file);
            if let Some(value) = env {
                let mut cmd = reconciler(&["check", "--offline"]);
                cmd.env(env_name(key), value).env(
                    "DF_RECONCILER__DATABASE__URL",
                    format!("postgres://u:{SECRET}@h/db"),
                );
                cases.push((format!("env: {}={value:?}", env_name(key)), cmd));
                named.push(*key);
            }
        }
    }
    let n = cases.len();
    let runs = run_all(cases).await;
    let problems: Vec<String> = runs
        .iter()
        .zip(&named)
        .filter_map(|(r, key)| r.usage_problem(key).map(|p| format!("{}: {p}", r.what)))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(n > 100, "{n} cases");

    // The good values, all in one file, pass: the key names above are real.
    let mut sections: std::collections::BTreeMap<&str, String> = Default::default();
    for (key, _, good) in KEYS {
        let (section, name) = key.split_once('.').unwrap();
        if *key == "database.url_file" {
            continue; // url and url_file are exclusive; checked online
        }
        sections
            .entry(section)
            .or_default()
            .push_str(&format!("{name} = {good}\n"));
    }
    let text: String = sections
        .iter()
        .map(|(section, body)| format!("[{section}]\n{body}"))
        .collect();
    let file = toml_file(&text);
    let mut cmd = reconciler(&["check", "--offline", "--config"]);
    cmd.arg(file.path())
        .env_remove("DF_RECONCILER__HTTP__LISTEN");
    run("every good value", cmd)
        .await
        .expect(OK)
        .mentions("configuration OK");
}

/// config-rs converts between scalar types on its own: a float is rounded into an
/// integer key (a negative one saturates to 0) and any non-zero number is `true` for a
/// boolean key. `retention.hard_cap = -1.0` ("no cap"?) becomes 0, "keep no terminal
/// instance": the next pass deletes every settled terminal instance, young ones too.
#[tokio::test]
async fn numbers_and_booleans_are_not_coerced_across_types() {
    let mut cases = Vec::new();
    let mut files = Vec::new();
    for (key, literal) in [
        ("retention.hard_cap", "-1.0"),
        ("retention.hard_cap", "0.4"),
        ("pass.batch_size", "2.5"),
        ("database.pool_size", "1.5"),
        ("retention.allow_short_retention", "2"),
        ("pass.leader_election", "0"),
        ("audit.record_deletions", "1.0"),
    ] {
        let file = toml_file(&toml_setting(key, literal));
        let mut cmd = reconciler(&["check", "--offline", "--config"]);
        cmd.arg(file.path());
        files.push(file);
        cases.push((format!("{key} = {literal}"), cmd));
    }
    let runs = run_all(cases).await;
    let problems: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let key = r.what.split(' ').next().unwrap();
            r.usage_problem(key).map(|p| format!("{}: {p}", r.what))
        })
        .collect();

    // What it costs: young terminal instances deleted by a "negative" cap.
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "71000001",
        "completed",
        Some("Completed"),
        DAY,
        Some(DAY),
        0,
    )
    .await;
    let mut once = reconciler(&["once", "--json"]);
    once.env("DF_RECONCILER__DATABASE__URL", &db.dsn)
        .env("DF_RECONCILER__RETENTION__HARD_CAP", "-1.0");
    let r = run("once with hard_cap -1.0", once).await;
    let survived = count(&c, "SELECT count(*) FROM df.instances").await;
    assert!(
        problems.is_empty() && r.code == Some(USAGE) && survived == 1,
        "{}\nonce with HARD_CAP=-1.0: exit {:?}, young instances left: {survived}",
        problems.join("\n"),
        r.code
    );
}

#[tokio::test]
async fn unknown_keys_in_every_section_are_named() {
    let sections: BTreeSet<String> = all_keys()
        .iter()
        .map(|k| k.split_once('.').unwrap().0.to_owned())
        .collect();
    assert_eq!(sections.len(), 8);
    let mut files = Vec::new();
    let mut cases = Vec::new();
    let mut needles: Vec<Vec<String>> = Vec::new();
    for section in &sections {
        let file = toml_file(&format!("[{section}]\nno_such_key = 1\n"));
        let mut cmd = reconciler(&["check", "--offline", "--config"]);
        cmd.arg(file.path());
        files.push(file);
        cases.push((format!("file: [{section}] no_such_key"), cmd));
        needles.push(vec!["no_such_key".into(), format!("`{section}`")]);
        let mut cmd = reconciler(&["check", "--offline"]);
        cmd.env(env_name(&format!("{section}.no_such_key")), "1");
        cases.push((format!("env: {section}.no_such_key"), cmd));
        needles.push(vec!["no_such_key".into(), format!("`{section}`")]);
    }
    for (what, text, env) in [
        (
            "unknown section",
            "[no_such_section]\nkey = 1\n",
            "DF_RECONCILER__NO_SUCH_SECTION__KEY",
        ),
        (
            "unknown top-level key",
            "no_such_section = 1\n",
            "DF_RECONCILER__NO_SUCH_SECTION",
        ),
    ] {
        let file = toml_file(text);
        let mut cmd = reconciler(&["check", "--offline", "--config"]);
        cmd.arg(file.path());
        files.push(file);
        cases.push((format!("file: {what}"), cmd));
        needles.push(vec!["no_such_section".into()]);
        let mut cmd = reconciler(&["check", "--offline"]);
        cmd.env(env, "1");
        cases.push((format!("env: {what}"), cmd));
        needles.push(vec!["no_such_section".into()]);
    }
    // A DSN under a misspelled key: named, never echoed.
    let file = toml_file(&format!(
        "[database]\nuri = \"postgres://u:{SECRET}@h/db\"\n"
    ));
    let mut cmd = reconciler(&["check", "--offline", "--config"]);
    cmd.arg(file.path());
    files.push(file);
    cases.push(("file: database.uri = <dsn>".into(), cmd));
    needles.push(vec!["uri".into(), "`database`".into()]);
    let mut cmd = reconciler(&["check", "--offline"]);
    cmd.env(
        "DF_RECONCILER__DATABASE__URI",
        format!("postgres://u:{SECRET}@h/db"),
    );
    cases.push(("env: DATABASE__URI=<dsn>".into(), cmd));
    needles.push(vec!["uri".into(), "`database`".into()]);
    // A section given a scalar.
    let mut cmd = reconciler(&["check", "--offline"]);
    cmd.env("DF_RECONCILER__PASS", "1");
    cases.push(("env: DF_RECONCILER__PASS=1".into(), cmd));
    needles.push(vec!["`pass`".into()]);

    for (r, needles) in run_all(cases).await.iter().zip(&needles) {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        r.usage_error(&needles);
    }
}

/// Tests run as root, which reads any file whatever its mode, so `chmod 000` cannot make
/// a file unreadable here: a directory, bytes that are not UTF-8 and text that is not
/// TOML stand in for it.
#[tokio::test]
async fn unreadable_configuration_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let not_utf8 = toml_file("");
    std::fs::write(not_utf8.path(), b"\xff\xfe[pass]\nbatch_size = 1\n").unwrap();
    let not_toml = toml_file("[pass\nbatch_size = 1\n");
    let wrong_shape = toml_file("pass = 5\n");
    let dir_path = dir.path().to_str().unwrap().to_owned();
    let mut cases = Vec::new();
    let mut needles = Vec::new();
    for (what, path, needle) in [
        ("a directory", dir_path.as_str(), dir_path.as_str()),
        (
            "not UTF-8",
            not_utf8.path().to_str().unwrap(),
            "TOML parse error",
        ),
        (
            "not TOML",
            not_toml.path().to_str().unwrap(),
            "TOML parse error",
        ),
        (
            "a section that is a number",
            wrong_shape.path().to_str().unwrap(),
            "`pass`",
        ),
    ] {
        let mut cmd = reconciler(&["check", "--offline", "--config", path]);
        cmd.env(
            "DF_RECONCILER__DATABASE__URL",
            format!("postgres://u:{SECRET}@h/db"),
        );
        cases.push((format!("--config {what}"), cmd));
        needles.push(needle);
        let mut cmd = reconciler(&["once"]);
        cmd.env("DF_RECONCILER_CONFIG", path).env(
            "DF_RECONCILER__DATABASE__URL",
            format!("postgres://u:{SECRET}@h/db"),
        );
        cases.push((format!("DF_RECONCILER_CONFIG {what}"), cmd));
        needles.push(needle);
    }
    cases.push((
        "--config \"\"".into(),
        reconciler(&["check", "--config", ""]),
    ));
    needles.push("--config");
    for (r, needle) in run_all(cases).await.iter().zip(needles) {
        r.usage_error(&[needle]);
    }
    // The file is named too, for every parse error.
    let mut cmd = reconciler(&["check", "--offline", "--config"]);
    cmd.arg(not_toml.path());
    let r = run("not TOML", cmd).await;
    r.expect(USAGE)
        .mentions(not_toml.path().file_name().unwrap().to_str().unwrap());
}

#[tokio::test]
async fn a_directory_given_as_the_configuration_file_is_called_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = reconciler(&["check", "--offline", "--config"]);
    cmd.arg(dir.path());
    let r = run("--config <dir>", cmd).await;
    r.usage_error(&["directory"]);
}

#[tokio::test]
async fn usage_errors_exit_2_with_one_message() {
    let mut cases = Vec::new();
    let mut needles = Vec::new();
    for (args, needle) in [
        (&["frobnicate"][..], "frobnicate"),
        (&["once", "--dry-rum"][..], "--dry-rum"),
        (&["--log-format", "xml", "check", "--offline"][..], "xml"),
        (&["history", "--limit", "many"][..], "many"),
        (&["check", "--offline", "--set", "nodot=1"][..], "nodot=1"),
        (
            &["check", "--offline", "--set", "pass.batch_size"][..],
            "pass.batch_size",
        ),
        (
            &["check", "--offline", "--set", "pass.batch_size=abc"][..],
            "pass.batch_size",
        ),
        (
            &["check", "--offline", "--set", "no_such.key=1"][..],
            "no_such",
        ),
    ] {
        cases.push((
            format!("df-reconciler {}", args.join(" ")),
            reconciler(args),
        ));
        needles.push(needle);
    }
    for (r, needle) in run_all(cases).await.iter().zip(needles) {
        r.usage_error(&[needle]);
    }
}

// ---------------------------------------------------------------------------------------
// Where the daemon connects
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unusable_url_file_and_database_settings_are_named() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&c).await;
    let before = snapshot(&c).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dsn");
    let good = dir.path().join("dsn");
    std::fs::write(&good, format!("{}\n", secret_dsn(&db))).unwrap();
    let malformed = dir.path().join("malformed");
    std::fs::write(
        &malformed,
        format!("host=127.0.0.1 port=x password={SECRET}\n"),
    )
    .unwrap();

    let mut cases = Vec::new();
    let mut needles: Vec<Vec<String>> = Vec::new();
    for command in [
        &["once", "--json"][..],
        &["check"][..],
        &["migrate"][..],
        &["history"][..],
    ] {
        let name = command[0];
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &missing);
        cases.push((format!("{name}: url_file missing"), cmd));
        needles.push(vec![
            "database.url_file".into(),
            missing.display().to_string(),
            "No such file".into(),
        ]);

        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", dir.path());
        cases.push((format!("{name}: url_file is a directory"), cmd));
        needles.push(vec!["database.url_file".into(), "directory".into()]);

        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &malformed);
        cases.push((format!("{name}: url_file holds a malformed DSN"), cmd));
        needles.push(vec![
            "not a valid PostgreSQL connection string".into(),
            "port".into(),
        ]);

        // Both set: the real database is right there, and still nothing may happen.
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &good)
            .env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db));
        cases.push((format!("{name}: url and url_file"), cmd));
        needles.push(vec!["database.url".into(), "database.url_file".into()]);

        cases.push((
            format!("{name}: no database configured"),
            reconciler(command),
        ));
        needles.push(vec!["database.url".into()]);

        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db))
            .env("DF_RECONCILER__TLS__CA_FILE", dir.path().join("no-ca.pem"));
        cases.push((format!("{name}: tls.ca_file missing"), cmd));
        needles.push(vec!["tls.ca_file".into(), "no-ca.pem".into()]);
    }
    for (r, needles) in run_all(cases).await.iter().zip(&needles) {
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        r.usage_error(&needles);
    }
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    // The good file works: the cases above failed for their own reason only.
    let mut cmd = reconciler(&["once", "--dry-run", "--json"]);
    cmd.env("DF_RECONCILER__DATABASE__URL_FILE", &good);
    let r = run("once --dry-run with the good url_file", cmd).await;
    r.expect(OK);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["expired_removed"]["completed"], 1);
}

#[tokio::test]
async fn an_empty_dsn_is_a_configuration_error() {
    let empty = toml_file("");
    let mut cmd = reconciler(&["once"]);
    cmd.env("DF_RECONCILER__DATABASE__URL_FILE", empty.path());
    run("once with an empty url_file", cmd)
        .await
        .usage_error(&["database.url_file"]);
    let mut cmd = reconciler(&["once"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", "");
    run("once with an empty url", cmd)
        .await
        .usage_error(&["database.url"]);
}

#[tokio::test]
async fn malformed_dsns_are_named_without_the_password() {
    let mut cases = Vec::new();
    let mut needles = Vec::new();
    for (dsn, needle) in [
        (
            format!("postgres://u:{SECRET}@127.0.0.1:notaport/db"),
            "port",
        ),
        (format!("postgres://u:{SECRET}@127.0.0.1:99999/db"), "port"),
        (format!("postgres://u:{SECRET}@[::1/db"), "host"),
        (
            format!("postgres://u:{SECRET}@127.0.0.1/db?sslmode=bogus"),
            "sslmode",
        ),
        (
            format!("postgres://u:{SECRET}@127.0.0.1/db?no_such_option=1"),
            "no_such_option",
        ),
        (format!("host=127.0.0.1 password='{SECRET}"), "unterminated"),
        (
            format!("host=127.0.0.1 no_such_option=1 password={SECRET}"),
            "no_such_option",
        ),
        (
            format!("host=127.0.0.1 connect_timeout=soon password={SECRET}"),
            "connect_timeout",
        ),
        (
            format!("mysql://u:{SECRET}@127.0.0.1/db"),
            "connection string",
        ),
    ] {
        for command in ["once", "check"] {
            let mut cmd = reconciler(&[command]);
            cmd.env("DF_RECONCILER__DATABASE__URL", &dsn);
            cases.push((format!("{command} {}", dsn.replace(SECRET, "***")), cmd));
            needles.push(needle);
        }
    }
    for (r, needle) in run_all(cases).await.iter().zip(needles) {
        r.usage_error(&["database.url", needle]);
    }
}

/// A port on the loopback where nothing listens (bound once by us, then released).
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_missing_database_or_a_dead_port_is_a_run_time_failure_naming_the_target() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&c).await;
    let before = snapshot(&c).await;
    let missing_db = format!("{}_missing", db.name);
    let missing_dsn = secret_dsn(&db).replace(&format!("/{}", db.name), &format!("/{missing_db}"));
    let port = dead_port();
    let dead_dsn = format!("postgres://postgres:{SECRET}@127.0.0.1:{port}/{}", db.name);
    let mut cases = Vec::new();
    let mut needles: Vec<Vec<String>> = Vec::new();
    for command in [
        &["once", "--json"][..],
        &["check"][..],
        &["migrate"][..],
        &["history"][..],
    ] {
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", &missing_dsn);
        cases.push((format!("{}: missing database", command[0]), cmd));
        needles.push(vec![format!("\"{missing_db}\" does not exist")]);
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", &dead_dsn)
            .env("DF_RECONCILER__DATABASE__CONNECT_TIMEOUT", "2s");
        cases.push((format!("{}: nothing listens", command[0]), cmd));
        needles.push(vec![format!("127.0.0.1:{port}"), "refused".into()]);
    }
    for (r, needles) in run_all(cases).await.iter().zip(&needles) {
        r.expect(FAILED);
        for needle in needles {
            r.mentions(needle);
        }
        if r.what.starts_with("check") {
            assert_eq!(
                r.stdout
                    .lines()
                    .filter(|l| l.starts_with("problem: "))
                    .count(),
                1,
                "{}",
                r.all()
            );
        } else {
            r.one_error(&[&needles[0]]);
        }
    }
    assert_eq!(snapshot(&c).await, before, "nothing deleted");
}

#[tokio::test]
async fn a_wrong_password_is_refused_by_the_server_and_never_printed() {
    // The shared cluster trusts everyone: this test needs password authentication.
    let cluster = harness::private_cluster().await;
    let db = TestDb::new_in(&cluster).await;
    let c = db.client().await;
    seed_deletable(&c).await;
    let before = snapshot(&c).await;
    let role = "pw_reconciler";
    let right = "right-Zq8-password";
    exec(
        &c,
        &format!(
            "CREATE ROLE {role} LOGIN BYPASSRLS PASSWORD '{right}';
             GRANT USAGE ON SCHEMA df, _duroxide TO {role};
             GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA df, _duroxide TO {role};
             GRANT UPDATE (id) ON df.instances TO {role};
             GRANT UPDATE (instance_id) ON _duroxide.instances TO {role};
             GRANT pg_read_all_stats TO {role};"
        ),
    )
    .await;
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    exec(&c, "SELECT pg_reload_conf()").await;
    let dsn = |password: &str| {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/{}",
            cluster.port(),
            db.name
        )
    };
    let without_password = format!("postgres://{role}@127.0.0.1:{}/{}", cluster.port(), db.name);
    wait_until(
        "the server asks for passwords",
        Duration::from_secs(10),
        || {
            let dsn = without_password.clone();
            async move {
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                    .await
                    .is_err()
            }
        },
    )
    .await;

    let mut cases = Vec::new();
    for command in [&["once", "--json"][..], &["check"][..], &["migrate"][..]] {
        let mut cmd = reconciler(command);
        cmd.env("DF_RECONCILER__DATABASE__URL", dsn(SECRET));
        cases.push((format!("{}: wrong password", command[0]), cmd));
    }
    let dsn_file = toml_file(&dsn(SECRET));
    let mut cmd = reconciler(&["once"]);
    cmd.env("DF_RECONCILER__DATABASE__URL_FILE", dsn_file.path());
    cases.push(("once: wrong password from url_file".into(), cmd));
    for r in run_all(cases).await {
        r.expect(FAILED).mentions(&format!(
            "password authentication failed for user \"{role}\""
        ));
        if !r.what.starts_with("check") {
            r.one_error(&["password authentication failed"]);
        }
    }
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    // The right password: the same role reconciles (and its password is not printed).
    let mut cmd = reconciler(&["once", "--json"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", dsn(right));
    let r = run("once: right password", cmd).await;
    assert_eq!(r.code, Some(OK), "{}", r.all());
    assert!(!r.all().contains(right), "{}", r.all());
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["expired_removed"]["completed"], 1);
    assert_eq!(report["orphans_reclaimed"], 1);
}

async fn exec(c: &Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// The DSN of `db` for `role` (trust authentication; the password is there to prove it is
/// never printed).
fn dsn_as(db: &TestDb, role: &str) -> String {
    db.dsn.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}:{SECRET}@"),
        1,
    )
}

/// Runs every case, expecting exit 3, its needle in the output, one error line for `once`
/// (with a JSON report that deleted nothing) and nothing but problem lines for `check`.
async fn expect_refusals(cases: Vec<(String, Command)>, needles: &[String]) {
    for (r, needle) in run_all(cases).await.iter().zip(needles) {
        r.expect(REFUSED).mentions(needle);
        if r.what.starts_with("once") {
            r.one_error(&["refusing to reconcile", needle]);
            let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("a JSON report");
            assert_eq!(report["rows_deleted"], serde_json::json!({}), "{}", r.what);
        } else {
            assert!(
                r.stdout.lines().all(|l| l.starts_with("problem: ")),
                "{}",
                r.stdout
            );
        }
    }
}

/// Collects (description, command) cases and their needles.
#[derive(Default)]
struct Cases {
    cases: Vec<(String, Command)>,
    needles: Vec<String>,
}

impl Cases {
    fn add(&mut self, what: &str, command: &[&str], env: &[(&str, String)], needle: &str) {
        let mut cmd = reconciler(command);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.cases
            .push((format!("{} {what}", command.join(" ")), cmd));
        self.needles.push(needle.to_owned());
    }
}

const URL: &str = "DF_RECONCILER__DATABASE__URL";

#[tokio::test]
async fn unsafe_roles_and_databases_are_refused_with_exit_3_and_nothing_deleted() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&c).await;
    let before = snapshot(&c).await;
    let rls = format!("{}_rls", db.name);
    let reader = format!("{}_reader", db.name);
    let no_delete = format!("{}_nodelete", db.name);
    exec(
        &c,
        &format!(
            "CREATE ROLE {rls} LOGIN NOBYPASSRLS;
             CREATE ROLE {reader} LOGIN BYPASSRLS;
             CREATE ROLE {no_delete} LOGIN BYPASSRLS;
             GRANT USAGE ON SCHEMA df, _duroxide TO {rls}, {reader}, {no_delete};
             GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA df, _duroxide TO {rls};
             GRANT UPDATE (id) ON df.instances TO {rls}, {no_delete};
             GRANT UPDATE (instance_id) ON _duroxide.instances TO {rls}, {no_delete};
             GRANT SELECT ON ALL TABLES IN SCHEMA df, _duroxide TO {no_delete};
             GRANT SELECT ON ALL TABLES IN SCHEMA df TO {reader};
             GRANT SELECT ON _duroxide.instances, _duroxide.executions,
                             _duroxide._duroxide_migrations TO {reader};"
        ),
    )
    .await;

    let mut cases = Cases::default();
    for command in [&["once", "--json"][..], &["check"][..]] {
        cases.add(
            "as a role subject to row-level security",
            command,
            &[(URL, dsn_as(&db, &rls))],
            "role is subject to row-level security on df.instances",
        );
        cases.add(
            "as a role that may read but not delete",
            command,
            &[(URL, dsn_as(&db, &no_delete))],
            "role lacks DELETE on _duroxide.kv_delta",
        );
        cases.add(
            "with a control schema that does not exist",
            command,
            &[
                (URL, secret_dsn(&db)),
                ("DF_RECONCILER__SCHEMAS__CONTROL", "pg_durable_x".into()),
            ],
            "control schema \"pg_durable_x\" does not exist",
        );
        cases.add(
            "with an engine schema that does not exist",
            command,
            &[
                (URL, secret_dsn(&db)),
                ("DF_RECONCILER__SCHEMAS__ENGINE", "duroxide_x".into()),
            ],
            "engine schema \"duroxide_x\" does not exist",
        );
    }
    cases.add(
        "as a role that may not read every table",
        &["once", "--dry-run", "--json"],
        &[(URL, dsn_as(&db, &reader))],
        "role lacks SELECT on _duroxide.history",
    );
    expect_refusals(cases.cases, &cases.needles).await;
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    // A table the engine must have is gone: refused before anything is read.
    exec(&c, "DROP TABLE _duroxide.worker_queue").await;
    let mut cases = Cases::default();
    cases.add(
        "without _duroxide.worker_queue",
        &["once", "--json"],
        &[(URL, secret_dsn(&db))],
        "table _duroxide.worker_queue does not exist",
    );
    expect_refusals(cases.cases, &cases.needles).await;
    assert_eq!(snapshot(&c).await, before, "nothing deleted");
}

/// Preflight asks `has_table_privilege('"_duroxide"."history"', ...)`, which raises
/// "permission denied for schema" without USAGE; and it reads `_duroxide_migrations`,
/// which the README's list of privileges does not name, raising "permission denied for
/// table". Both end as a database error (exit 1). A role without USAGE must be refused by
/// name (exit 3); for the migrations table a refusal or a warning naming it will do.
#[tokio::test]
async fn a_role_missing_a_schema_usage_or_the_migrations_grant_is_told_so() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&c).await;
    let before = snapshot(&c).await;
    let bare = format!("{}_bare", db.name);
    let readme = format!("{}_readme", db.name);
    // `readme` holds exactly what README's "The database role" lists.
    exec(
        &c,
        &format!(
            "CREATE ROLE {bare} LOGIN;
             CREATE ROLE {readme} LOGIN BYPASSRLS;
             GRANT USAGE ON SCHEMA df, _duroxide TO {readme};
             GRANT SELECT, DELETE ON df.instances, df.nodes, _duroxide.instances,
                   _duroxide.executions, _duroxide.history, _duroxide.orchestrator_queue,
                   _duroxide.worker_queue, _duroxide.instance_locks, _duroxide.kv_store,
                   _duroxide.kv_delta TO {readme};
             GRANT UPDATE (id) ON df.instances TO {readme};
             GRANT UPDATE (instance_id) ON _duroxide.instances TO {readme};
             GRANT pg_read_all_stats TO {readme};"
        ),
    )
    .await;
    let mut cases = Cases::default();
    for command in [&["once", "--json"][..], &["check"][..]] {
        cases.add(
            "as a role without any privilege",
            command,
            &[(URL, dsn_as(&db, &bare))],
            "USAGE on schema _duroxide",
        );
    }
    expect_refusals(cases.cases, &cases.needles).await;
    assert_eq!(snapshot(&c).await, before, "nothing deleted");

    for command in [&["check"][..], &["once", "--json"][..]] {
        let mut cmd = reconciler(command);
        cmd.env(URL, dsn_as(&db, &readme));
        let r = run(format!("{} as the README's role", command[0]), cmd).await;
        assert!(
            matches!(r.code, Some(OK) | Some(REFUSED)),
            "{}: exit {:?}\n{}",
            r.what,
            r.code,
            r.all()
        );
        r.expect(r.code.unwrap()).mentions("_duroxide_migrations");
        if r.code == Some(REFUSED) {
            assert_eq!(snapshot(&c).await, before, "nothing deleted");
        }
    }
}

#[tokio::test]
async fn an_unknown_engine_migration_is_a_warning_and_the_pass_still_works() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&c).await;
    exec(
        &c,
        "INSERT INTO _duroxide._duroxide_migrations (version, name) VALUES (99, '0099_future')",
    )
    .await;
    let mut cmd = reconciler(&["check"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db));
    let r = run("check", cmd).await;
    r.expect(OK)
        .mentions("warning: engine migration version 99 is newer")
        .mentions("engine migration 99");
    assert!(r.error_lines().is_empty(), "{}", r.stderr);

    let mut cmd = reconciler(&["once", "--json"]);
    cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db));
    let r = run("once", cmd).await;
    r.expect(OK);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("version 99")),
        "{warnings:?}"
    );
    assert_eq!(report["expired_removed"]["completed"], 1);
    assert_eq!(report["orphans_reclaimed"], 1);
    assert_eq!(count(&c, "SELECT count(*) FROM df.instances").await, 0);
}

/// Durations the daemon cannot use pass `check --offline` today and fail later, on every
/// pass: a timeout PostgreSQL or the kernel rejects (> 2^31-1 ms), a window reaching
/// before 4713 BC, an interval that overflows `Instant`. Each should be a configuration
/// error naming its key.
#[tokio::test]
async fn durations_the_daemon_cannot_use_are_configuration_errors() {
    let db = TestDb::new().await;
    let c = db.client().await;
    seed_deletable(&c).await;
    let before = snapshot(&c).await;
    let mut cases = Vec::new();
    let mut keys = Vec::new();
    for (key, value, command) in [
        ("pass.statement_timeout", "25d", "once"), // tcp_user_timeout: EINVAL at connect
        ("pass.lock_timeout", "25d", "once"),      // SET LOCAL lock_timeout rejected
        ("retention.window", "10000y", "once"),    // cutoff before 4713 BC
        ("retention.orphan_min_age", "10000y", "once"),
        ("pass.max_duration", "500000000000y", "once"), // Instant overflow: panic
        ("pass.interval", "500000000000y", "run"),      // Instant overflow: panic
    ] {
        let mut cmd = reconciler(&[command]);
        cmd.env("DF_RECONCILER__DATABASE__URL", secret_dsn(&db))
            .env("DF_RECONCILER__PASS__JITTER", "0s")
            .env(env_name(key), value);
        cases.push((format!("{command} with {key} = {value}"), cmd));
        keys.push(key);
        let mut cmd = reconciler(&["check", "--offline"]);
        cmd.env(env_name(key), value);
        cases.push((format!("check --offline with {key} = {value}"), cmd));
        keys.push(key);
    }
    let problems: Vec<String> = run_all(cases)
        .await
        .iter()
        .zip(keys)
        .filter_map(|(r, key)| r.usage_problem(key).map(|p| format!("{}: {p}", r.what)))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(snapshot(&c).await, before, "nothing deleted");
}
