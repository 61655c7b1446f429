//! What ships beside the binary, checked without a Docker engine: the Dockerfile and its
//! build context, compose.yaml and its seed (run for real on PostgreSQL with the real
//! pg_durable engine, skipped without it), the systemd units, the Kubernetes manifests,
//! every shipped configuration, the least-privileged role (applied, then used for a real
//! pass), and the configuration reference in docs/CONFIGURATION.md, which must list
//! exactly the keys of `Config`.
//!
//! - [`configuration`]: every shipped configuration passes `check --offline` and listens
//!   where it should; docs/CONFIGURATION.md lists exactly the keys of `Config`;
//! - [`cargo`]: the README's `cargo run` means the daemon;
//! - [`docker`]: the Dockerfile and its build context;
//! - [`compose`]: compose.yaml, and its seed and reconciler run on the real pg_durable
//!   engine (skipped without it);
//! - [`systemd`]: the units' hardening and wiring (and `systemd-analyze` where present);
//! - [`kubernetes`]: the manifests agree with the image and the configuration;
//! - [`role_sql`]: the least-privileged role, applied and then used for real passes.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use df_reconciler_core::config::Config;
use serde_json::Value;

use crate::support::process::{binary, run};

mod cargo;
mod compose;
mod configuration;
mod docker;
mod kubernetes;
pub(crate) mod role_sql;
mod systemd;

/// The port of /metrics, /healthz and /readyz everywhere it is published.
pub(super) const HTTP_PORT: u64 = 9187;
/// Where every packaging puts the configuration file.
pub(super) const CONFIG_PATH: &str = "/etc/df-reconciler/config.toml";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The repository root.
pub(super) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

pub(super) fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A YAML file as JSON values (every key of ours is a string).
pub(super) fn yaml(relative: &str) -> Value {
    serde_norway::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

pub(super) fn text<'v>(value: &'v Value, pointer: &str) -> &'v str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

pub(super) fn files_under(dir: &Path, suffix: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, suffix, found);
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found.sort();
}

pub(super) fn output_text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `df-reconciler check --offline --config FILE` must accept the file.
pub(super) async fn assert_check_offline(file: &Path) {
    let mut cmd = binary();
    cmd.args(["check", "--offline", "--config"]).arg(file);
    let out = run(cmd).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: {}",
        file.display(),
        output_text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

pub(super) fn load_config(file: &Path) -> Config {
    Config::load_from(Some(file), Vec::new(), &[])
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

pub(super) fn duration(value: &str) -> Duration {
    humantime_parse(value).unwrap_or_else(|| panic!("not a duration: {value}"))
}

/// `90s`, `2h`, `5min`: the systemd and TOML durations of the shipped files.
pub(super) fn humantime_parse(value: &str) -> Option<Duration> {
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    let unit = match &value[digits.len()..] {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n * unit))
}

/// The TOML inside the Kubernetes ConfigMap.
pub(super) fn configmap_toml() -> String {
    text(
        &yaml("deploy/kubernetes/configmap.yaml"),
        "/data/config.toml",
    )
    .to_owned()
}

/// `program` as found on PATH.
pub(super) fn which(program: &str) -> Result<PathBuf, ()> {
    let paths = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}
