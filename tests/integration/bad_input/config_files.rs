//! Configuration files the daemon cannot use: unknown keys and sections (named, a DSN
//! under a misspelled key never echoed), and files that are directories, not UTF-8 or not
//! TOML.

use std::collections::BTreeSet;

use df_reconciler_core::error::exit_code::USAGE;

use super::{all_keys, env_name, reconciler, run, run_all, SECRET};
use crate::support::process::toml_file;

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
