//! What ships beside the binary, checked without a Docker engine: the Dockerfile and its
//! build context, compose.yaml and its seed (run for real against the test server), the
//! systemd units, the Kubernetes manifests, every shipped configuration, the
//! least-privileged role (applied, then used for a real pass), and the configuration
//! reference in docs/CONFIGURATION.md, which must list exactly the keys of `Config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use df_reconciler_core::config::{Config, SecretString};
use df_reconciler_core::error::{exit_code, Error};
use serde_json::Value;

use crate::classification::{orphan, workflow};
use crate::harness::{superuser_client, TestDb};
use crate::process::{binary, run};
use crate::support::{count, df_ids, engine_ids, pass, rows_of, try_pass};

const DAY: f64 = 86_400.0;
/// The port of /metrics, /healthz and /readyz everywhere it is published.
const HTTP_PORT: u64 = 9187;
/// Where every packaging puts the configuration file.
const CONFIG_PATH: &str = "/etc/df-reconciler/config.toml";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A YAML file as JSON values (every key of ours is a string).
fn yaml(relative: &str) -> Value {
    serde_norway::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn text<'v>(value: &'v Value, pointer: &str) -> &'v str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

fn files_under(dir: &Path, suffix: &str, found: &mut Vec<PathBuf>) {
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

fn output_text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `df-reconciler check --offline --config FILE` must accept the file.
async fn assert_check_offline(file: &Path) {
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

fn load_config(file: &Path) -> Config {
    Config::load_from(Some(file), Vec::new(), &[])
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// A program next to the PostgreSQL server binaries (psql), as the harness finds those.
fn postgres_program(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    let from_pg_config = || {
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        let dir = String::from_utf8(out.stdout).ok()?;
        Some(Path::new(dir.trim()).join(name)).filter(|p| p.is_file())
    };
    let from_debian = || {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin").join(name)))
            .filter(|p| p.is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    on_path
        .or_else(from_pg_config)
        .or_else(from_debian)
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH, in `pg_config --bindir` or /usr/lib/postgresql/*/bin (apt-get install postgresql-client)")
        })
}

fn duration(value: &str) -> Duration {
    humantime_parse(value).unwrap_or_else(|| panic!("not a duration: {value}"))
}

/// `90s`, `2h`, `5min`: the systemd and TOML durations of the shipped files.
fn humantime_parse(value: &str) -> Option<Duration> {
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

// ---------------------------------------------------------------------------------------
// Shipped configurations
// ---------------------------------------------------------------------------------------

/// The TOML inside the Kubernetes ConfigMap.
fn configmap_toml() -> String {
    text(
        &yaml("deploy/kubernetes/configmap.yaml"),
        "/data/config.toml",
    )
    .to_owned()
}

#[tokio::test]
async fn every_shipped_configuration_passes_check_offline() {
    let mut files = Vec::new();
    files_under(&repo().join("deploy"), ".toml", &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    for expected in [
        "deploy/compose/config.toml",
        "deploy/docker/config.toml",
        "deploy/systemd/config.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for file in &files {
        assert_check_offline(file).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let configmap = dir.path().join("configmap.toml");
    std::fs::write(&configmap, configmap_toml()).unwrap();
    assert_check_offline(&configmap).await;

    // Inside a container the endpoints must be reachable from outside; on a host, not.
    for (file, listen) in [
        (repo().join("deploy/docker/config.toml"), "0.0.0.0:9187"),
        (repo().join("deploy/compose/config.toml"), "0.0.0.0:9187"),
        (configmap.clone(), "0.0.0.0:9187"),
        (repo().join("deploy/systemd/config.toml"), "127.0.0.1:9187"),
    ] {
        assert_eq!(load_config(&file).http.listen, listen, "{}", file.display());
    }
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
/// The README's first command, `cargo run --release -- demo`, must mean the daemon: with the
/// benchmark a second binary of the workspace, a plain `cargo run` refuses to choose unless
/// the workspace's default members are the daemon's package alone.
#[test]
fn the_readme_cargo_run_means_the_daemon() {
    assert!(read("README.md").contains("\ncargo run --release -- demo\n"));
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", output_text(&out));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let defaults = meta["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members");
    let packages = meta["packages"].as_array().expect("packages");
    let default_packages: Vec<&Value> = packages
        .iter()
        .filter(|p| defaults.contains(&p["id"]))
        .collect();
    let names: Vec<&str> = default_packages.iter().map(|p| text(p, "/name")).collect();
    assert_eq!(names, ["df-reconciler"]);
    let binaries: Vec<&str> = default_packages[0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&Value::from("bin")))
        })
        .map(|t| text(t, "/name"))
        .collect();
    assert_eq!(binaries, ["df-reconciler"]);
}

fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((op.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The `.dockerignore` allowlist: `*`, then `!path` for everything the build may see.
fn docker_context_allows(path: &str) -> bool {
    let ignore = read(".dockerignore");
    let mut lines = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    assert_eq!(
        lines.next(),
        Some("*"),
        ".dockerignore starts by excluding everything"
    );
    assert!(
        lines.all(|l| l.starts_with('!')),
        ".dockerignore is an allowlist: `*`, then `!path` lines"
    );
    ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .any(|allowed| path == allowed || path.starts_with(&format!("{allowed}/")))
}

#[tokio::test]
async fn dockerfile_builds_locked_and_runs_unprivileged_with_the_contract() {
    let steps = dockerfile();
    let all = |op: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let froms = all("FROM");
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        froms[0].starts_with("rust:") && froms[0].contains("-bookworm AS build"),
        "{froms:?}"
    );
    assert_eq!(froms[1], "gcr.io/distroless/cc-debian12:nonroot");
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the build is --locked"
    );
    assert_eq!(all("ENTRYPOINT"), [r#"["/usr/local/bin/df-reconciler"]"#]);
    assert_eq!(all("CMD"), [r#"["run"]"#]);
    assert_eq!(all("STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(all("EXPOSE"), [HTTP_PORT.to_string()]);
    assert_eq!(all("ENV"), [format!("DF_RECONCILER_CONFIG={CONFIG_PATH}")]);
    let user = all("USER");
    let uid: u32 = user[0]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric user");
    assert_ne!(uid, 0, "never root");
    // The runtime stage ships the binary where ENTRYPOINT looks, and a configuration at
    // DF_RECONCILER_CONFIG (the file must exist: a missing --config file is an error).
    let copies = all("COPY");
    assert!(copies
        .iter()
        .any(|c| c.starts_with("--from=build") && c.ends_with(" /usr/local/bin/df-reconciler")));
    assert!(copies
        .iter()
        .any(|c| *c == format!("deploy/docker/config.toml {CONFIG_PATH}")));

    // Everything the build stage copies is in the build context, and so is every file the
    // sources embed (include_str!/include_bytes!), or the image would not build.
    for copy in copies.iter().filter(|c| !c.starts_with("--")) {
        let sources: Vec<&str> = copy.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: missing");
            assert!(
                docker_context_allows(source),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }
    let mut sources = Vec::new();
    files_under(&repo().join("crates"), ".rs", &mut sources);
    let mut embedded = 0;
    for file in sources {
        let code = std::fs::read_to_string(&file).unwrap();
        for macro_call in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in code.match_indices(macro_call) {
                let literal = &code[at + macro_call.len()..];
                let literal = &literal[..literal.find('"').unwrap()];
                let target = file
                    .parent()
                    .unwrap()
                    .join(literal)
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{}: {literal}: {e}", file.display()));
                let relative = target.strip_prefix(repo()).unwrap().display().to_string();
                assert!(
                    docker_context_allows(&relative),
                    "{} embeds {relative}, which .dockerignore keeps out of the build",
                    file.display()
                );
                embedded += 1;
            }
        }
    }
    assert!(embedded >= 3, "the fixture SQL at least");

    // The context alone resolves with --locked (what `cargo build --locked` does first).
    let context = tempfile::tempdir().unwrap();
    for entry in ["Cargo.toml", "Cargo.lock", "crates", "migrations"] {
        assert!(docker_context_allows(entry));
        copy_tree(&repo().join(entry), &context.path().join(entry));
    }
    // The resolve covers every platform, but only the packages of this host's target can
    // be counted on in cargo's cache (a fresh cargo home downloaded only those), so the
    // package download is limited to this host: the lock file is still checked whole.
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host_target().await])
        .current_dir(context.path());
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", output_text(&out));
}

/// The target triple cargo builds for on this host (`rustc -vV`'s `host:` line).
async fn host_target() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("-vV");
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else if from.exists() {
        std::fs::copy(from, to).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// compose.yaml
// ---------------------------------------------------------------------------------------

/// `host:container[:mode]` volumes of a compose service, as (host path, container path, mode).
fn compose_volumes(service: &Value) -> Vec<(String, String, String)> {
    service["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| {
            let parts: Vec<&str> = v
                .as_str()
                .expect("short volume syntax")
                .split(':')
                .collect();
            (
                parts[0].trim_start_matches("./").to_owned(),
                parts[1].to_owned(),
                parts.get(2).copied().unwrap_or("rw").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn compose_wires_postgres_seed_and_reconciler() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];

    let postgres = &services["postgres"];
    assert!(text(postgres, "/image").starts_with("postgres:15"));
    let probe: Vec<&str> = postgres["healthcheck"]["test"]
        .as_array()
        .expect("healthcheck")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(probe.contains(&"pg_isready"), "{probe:?}");
    assert!(
        probe.windows(2).any(|w| w == ["-h", "127.0.0.1"]),
        "TCP, not the init-time socket: {probe:?}"
    );

    let seed = &services["seed"];
    assert_eq!(
        text(seed, "/depends_on/postgres/condition"),
        "service_healthy"
    );
    let volumes = compose_volumes(seed);
    for fixture in ["schema.sql", "seed_functions.sql", "demo_seed.sql"] {
        let host = format!("crates/df-reconciler-testkit/sql/fixture/{fixture}");
        assert!(
            volumes.iter().any(|(h, _, _)| *h == host),
            "the seed mounts {host}"
        );
    }
    for (host, _, mode) in &volumes {
        assert!(repo().join(host).is_file(), "{host} exists");
        assert_eq!(mode, "ro", "{host} is mounted read-only");
    }

    let reconciler = &services["reconciler"];
    assert_eq!(text(reconciler, "/build/context"), ".");
    assert!(repo().join(text(reconciler, "/build/dockerfile")).is_file());
    assert_eq!(
        text(reconciler, "/depends_on/postgres/condition"),
        "service_healthy"
    );
    assert_eq!(
        text(reconciler, "/depends_on/seed/condition"),
        "service_completed_successfully"
    );
    assert_eq!(
        compose_volumes(reconciler),
        [(
            "deploy/compose/config.toml".to_owned(),
            CONFIG_PATH.to_owned(),
            "ro".to_owned()
        )]
    );
    assert_eq!(
        text(reconciler, "/environment/DF_RECONCILER_CONFIG"),
        CONFIG_PATH
    );
    assert!(
        text(reconciler, "/environment/DF_RECONCILER__DATABASE__URL")
            .contains("@postgres:5432/app")
    );
    assert_eq!(text(reconciler, "/stop_signal"), "SIGTERM");
    let ports = reconciler["ports"].as_array().expect("ports");
    assert!(ports.iter().any(|p| p
        .as_str()
        .unwrap()
        .ends_with(&format!("{HTTP_PORT}:{HTTP_PORT}"))));
    let grace = duration(text(reconciler, "/stop_grace_period"));
    let statement_timeout = load_config(&repo().join("deploy/compose/config.toml"))
        .pass
        .statement_timeout;
    assert!(
        grace > statement_timeout,
        "the grace period outlasts a batch"
    );
}

/// The compose DSN, pointed at `dbname` on the test server.
fn compose_dsn(port: u16, dbname: &str) -> String {
    let compose = yaml("compose.yaml");
    let dsn = text(
        &compose,
        "/services/reconciler/environment/DF_RECONCILER__DATABASE__URL",
    );
    let (user_info, rest) = dsn
        .strip_prefix("postgres://")
        .unwrap()
        .split_once('@')
        .unwrap();
    let query = rest
        .split_once('?')
        .map_or(String::new(), |(_, q)| format!("?{q}"));
    format!("postgres://{user_info}@127.0.0.1:{port}/{dbname}{query}")
}

/// Runs the compose seed (its script with its mounts) against a fresh database of the
/// test server, twice (the second run must keep the data), then the reconciler the way
/// compose runs it: its config file, the DSN of its role.
#[tokio::test]
async fn compose_seed_runs_and_the_reconciler_cleans_up_as_its_role() {
    const DB: &str = "packaging_compose";
    let admin = superuser_client("postgres").await;
    admin
        .batch_execute(&format!("CREATE DATABASE {DB}"))
        .await
        .unwrap();
    let port = crate::harness::cluster().port();

    // The seed container's /seed, laid out from compose.yaml's mounts.
    let compose = yaml("compose.yaml");
    let seed = &compose["services"]["seed"];
    let mounts = tempfile::tempdir().unwrap();
    let seed_dir = text(seed, "/environment/SEED_DIR");
    for (host, container, _) in compose_volumes(seed) {
        let inside = container
            .strip_prefix(&format!("{seed_dir}/"))
            .unwrap_or_else(|| panic!("{container} is under SEED_DIR {seed_dir}"));
        std::fs::copy(repo().join(&host), mounts.path().join(inside)).unwrap();
    }
    let entrypoint: Vec<&str> = seed["entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let script = entrypoint[1].strip_prefix(&format!("{seed_dir}/")).unwrap();
    let psql_dir = postgres_program("psql").parent().unwrap().to_owned();
    let path = std::env::join_paths(
        std::iter::once(psql_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    for (round, expected) in [(1, "seed: demo_seed.sql"), (2, "keeping the data")] {
        let mut cmd = Command::new(entrypoint[0]);
        cmd.arg(mounts.path().join(script))
            .env("PATH", &path)
            .env("SEED_DIR", mounts.path())
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", DB)
            .env(
                "RECONCILER_PASSWORD",
                text(seed, "/environment/RECONCILER_PASSWORD"),
            );
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "seed run {round}: {}",
            output_text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(expected), "seed run {round}: {stdout}");
        assert!(stdout.contains("seed: done"), "seed run {round}: {stdout}");
    }

    let reconciler = |args: &[&str]| {
        let mut cmd = binary();
        cmd.args(args)
            .env(
                "DF_RECONCILER_CONFIG",
                repo().join("deploy/compose/config.toml"),
            )
            .env("DF_RECONCILER__DATABASE__URL", compose_dsn(port, DB));
        cmd
    };
    let out = run(reconciler(&["check"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok:"));

    let json = |out: Output| -> Value {
        assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("one JSON report")
    };
    let dry = json(run(reconciler(&["once", "--dry-run", "--json"])).await);
    let real = json(run(reconciler(&["once", "--json"])).await);
    let again = json(run(reconciler(&["once", "--json"])).await);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(real["dry_run"], false);
    // The demo population (demo_seed.sql): 9 expired df instances, 5 old orphans; the same
    // numbers tests/compose/run.sh expects from the containers.
    for report in [&dry, &real] {
        assert_eq!(report["expired_removed"]["completed"], 4, "{report:#}");
        assert_eq!(report["expired_removed"]["failed"], 2, "{report:#}");
        assert_eq!(report["expired_removed"]["cancelled"], 3, "{report:#}");
        assert_eq!(report["orphans_reclaimed"], 5, "{report:#}");
        assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    }
    assert_eq!(
        dry["rows_deleted"], real["rows_deleted"],
        "a dry run counts what a pass deletes"
    );
    assert_eq!(again["expired_removed"]["completed"], 0, "{again:#}");
    assert_eq!(again["orphans_reclaimed"], 0, "{again:#}");
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

/// A unit file as section -> key -> values (a key may repeat).
fn unit(relative: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(relative).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{relative}: {line}"));
        sections
            .entry(section.clone())
            .or_default()
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    sections
}

/// Every hardening directive of both services, with its value.
const HARDENING: &[(&str, &str)] = &[
    ("DynamicUser", "yes"),
    ("UMask", "0077"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("NoNewPrivileges", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
];

#[tokio::test]
async fn systemd_units_are_hardened_and_wired() {
    let statement_timeout = load_config(&repo().join("deploy/systemd/config.toml"))
        .pass
        .statement_timeout;
    for (file, exec, kind) in [
        ("deploy/systemd/df-reconciler.service", " run", "notify"),
        (
            "deploy/systemd/df-reconciler-once.service",
            " once --json",
            "oneshot",
        ),
    ] {
        let service = &unit(file)["Service"];
        let one = |key: &str| -> &str {
            let values = service
                .get(key)
                .unwrap_or_else(|| panic!("{file}: no {key}"));
            values.last().unwrap()
        };
        assert_eq!(one("Type"), kind, "{file}");
        assert_eq!(
            one("ExecStart"),
            format!("/usr/local/bin/df-reconciler{exec}"),
            "{file}"
        );
        assert_eq!(
            one("LoadCredential"),
            "dsn:/etc/df-reconciler/dsn",
            "{file}"
        );
        let env = &service["Environment"];
        assert!(
            env.contains(&"DF_RECONCILER__DATABASE__URL_FILE=%d/dsn".to_owned()),
            "{file}"
        );
        assert!(
            env.contains(&format!("DF_RECONCILER_CONFIG={CONFIG_PATH}")),
            "{file}"
        );
        assert_eq!(one("KillSignal"), "SIGTERM", "{file}");
        assert!(
            duration(one("TimeoutStopSec")) > statement_timeout * 2,
            "{file}: stopping outlasts a batch"
        );
        for (key, value) in HARDENING {
            assert!(
                service
                    .get(*key)
                    .is_some_and(|values| values.iter().any(|v| v == value)),
                "{file}: {key}={value}"
            );
        }
    }
    let daemon = &unit("deploy/systemd/df-reconciler.service")["Service"];
    assert_eq!(daemon["Restart"], ["on-failure"]);
    assert!(daemon.contains_key("WatchdogSec"));
    assert_eq!(daemon["ExecReload"], ["/bin/kill -HUP $MAINPID"]);
    let timer = unit("deploy/systemd/df-reconciler-once.timer");
    assert_eq!(timer["Timer"]["Unit"], ["df-reconciler-once.service"]);
    assert!(timer["Timer"].contains_key("OnCalendar"));
    assert_eq!(timer["Install"]["WantedBy"], ["timers.target"]);

    // Where systemd's own tools exist, they verify the units too (with this build's binary
    // standing in for /usr/local/bin/df-reconciler).
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("note: systemd-analyze not found; the systemd-analyze verify/security checks were skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in [
        "df-reconciler.service",
        "df-reconciler-once.service",
        "df-reconciler-once.timer",
    ] {
        let content = read(&format!("deploy/systemd/{name}")).replace(
            "/usr/local/bin/df-reconciler",
            env!("CARGO_BIN_EXE_df-reconciler"),
        );
        std::fs::write(dir.path().join(name), content).unwrap();
        units.push(dir.path().join(name));
    }
    let mut cmd = Command::new(&analyze);
    cmd.args(["verify", "--man=no"]).args(&units);
    let out = run(cmd).await;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        output_text(&out)
    );
    for service in &units[..2] {
        let mut cmd = Command::new(&analyze);
        // In tenths: an overall exposure of at most 2.0 out of 10.
        cmd.args(["security", "--offline=yes", "--threshold=20"])
            .arg(service);
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "exposure above 2 of 10: {}",
            output_text(&out)
        );
    }
}

fn which(program: &str) -> Result<PathBuf, ()> {
    let paths = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}

// ---------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------

/// Checks a pod template: security context, configuration and DSN mounts; returns the
/// container.
fn check_pod(what: &str, pod: &Value, toml: &Config) -> Value {
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(
        text(spec, "/securityContext/seccompProfile/type"),
        "RuntimeDefault",
        "{what}"
    );
    assert_eq!(spec["automountServiceAccountToken"], false, "{what}");
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{what}");
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{what}"
    );
    assert_eq!(text(sc, "/seccompProfile/type"), "RuntimeDefault", "{what}");
    assert!(c["resources"]["requests"].is_object(), "{what}: resources");
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "{what}: memory limit"
    );

    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (text(e, "/name"), text(e, "/value")))
        .collect();
    assert_eq!(env["DF_RECONCILER_CONFIG"], CONFIG_PATH, "{what}");
    assert!(
        !env.keys().any(|k| k.contains("DATABASE__URL")),
        "{what}: the DSN comes from the mounted secret, not the environment"
    );
    // Mounts: the ConfigMap's config.toml at CONFIG_PATH, the Secret's dsn at url_file.
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (text(v, "/name"), v))
        .collect();
    let mounted_at = |source: &str, name: &str| -> String {
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                let volume = volumes[text(m, "/name")];
                volume.pointer(source).and_then(Value::as_str) == Some(name)
            })
            .unwrap_or_else(|| panic!("{what}: no mount of {source} = {name}"));
        assert_eq!(mount["readOnly"], true, "{what}");
        text(mount, "/mountPath").to_owned()
    };
    assert_eq!(
        format!(
            "{}/config.toml",
            mounted_at("/configMap/name", "df-reconciler-config")
        ),
        CONFIG_PATH,
        "{what}"
    );
    let url_file = toml.database.url_file.as_ref().expect("database.url_file");
    assert_eq!(
        Path::new(&mounted_at("/secret/secretName", "df-reconciler-dsn")).join("dsn"),
        *url_file,
        "{what}"
    );
    assert!(
        spec["terminationGracePeriodSeconds"].as_u64().unwrap()
            > 2 * toml.pass.statement_timeout.as_secs(),
        "{what}: the grace period outlasts a batch"
    );
    c.clone()
}

#[tokio::test]
async fn kubernetes_manifests_agree_with_the_image_and_the_config() {
    let dir = repo().join("deploy/kubernetes");
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut files = Vec::new();
    files_under(&dir, ".yaml", &mut files);
    let on_disk: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    let alternatives = BTreeSet::from(["cronjob.yaml".to_owned()]);
    assert_eq!(
        on_disk,
        &resources | &alternatives,
        "every manifest is listed (the CronJob is the documented alternative)"
    );
    assert!(read("deploy/kubernetes/kustomization.yaml").contains("cronjob.yaml"));

    let dir_config = tempfile::tempdir().unwrap();
    let config_file = dir_config.path().join("config.toml");
    std::fs::write(&config_file, configmap_toml()).unwrap();
    let toml = load_config(&config_file);
    assert_eq!(toml.http.listen, format!("0.0.0.0:{HTTP_PORT}"));

    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(text(&deployment, "/kind"), "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].clone();
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], labels);
    let c = check_pod("deployment", pod, &toml);
    assert_eq!(c["args"], serde_json::json!(["run"]));
    let port_name = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == HTTP_PORT)
        .map(|p| text(p, "/name").to_owned())
        .expect("container port 9187");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(text(get, "/path"), path);
        assert!(
            get["port"] == HTTP_PORT || get["port"] == port_name.as_str(),
            "{probe} on {HTTP_PORT}"
        );
    }

    let service = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(service["spec"]["selector"], labels);
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], HTTP_PORT);
    assert!(port["targetPort"] == HTTP_PORT || port["targetPort"] == port_name.as_str());
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], HTTP_PORT.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let cronjob = yaml("deploy/kubernetes/cronjob.yaml");
    assert_eq!(text(&cronjob, "/spec/concurrencyPolicy"), "Forbid");
    let job_pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"];
    let c = check_pod("cronjob", job_pod, &toml);
    assert_eq!(c["args"][0], "once");
    assert_eq!(text(job_pod, "/spec/restartPolicy"), "Never");

    let secret = yaml("deploy/kubernetes/secret.yaml");
    assert!(secret["stringData"]["dsn"].is_string());
    let account = yaml("deploy/kubernetes/serviceaccount.yaml");
    assert_eq!(account["automountServiceAccountToken"], false);
    assert_eq!(
        text(pod, "/spec/serviceAccountName"),
        text(&account, "/metadata/name")
    );

    // Where kubectl exists, kustomize must build the whole thing.
    let Ok(kubectl) = which("kubectl") else {
        eprintln!("note: kubectl not found; `kubectl kustomize` was skipped");
        return;
    };
    let mut cmd = Command::new(kubectl);
    cmd.arg("kustomize").arg(&dir);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        output_text(&out)
    );
    let built = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Deployment",
        "Service",
    ] {
        assert!(
            built.contains(&format!("kind: {kind}\n")),
            "{kind} in the build"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The least-privileged role
// ---------------------------------------------------------------------------------------

/// deploy/sql/reconciler-role.sql as plain SQL: the psql meta-commands (the variable
/// defaults) dropped and the variables substituted, as psql would.
fn role_sql(role: &str, engine_schema: &str) -> String {
    let mut sql: String = read("deploy/sql/reconciler-role.sql")
        .lines()
        .filter(|line| !line.trim_start().starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    for (name, value) in [
        ("role", role),
        ("control_schema", "df"),
        ("engine_schema", engine_schema),
        ("audit_schema", "df_reconciler"),
    ] {
        sql = sql
            .replace(&format!(":\"{name}\""), &format!("\"{value}\""))
            .replace(&format!(":'{name}'"), &format!("'{value}'"));
    }
    assert!(
        !sql.contains(":\"") && !sql.contains(":'"),
        "a psql variable the test does not know:\n{sql}"
    );
    sql
}

/// Applies the role SQL for a role unique to `db` (roles are cluster-wide) and returns the
/// role's name and a configuration connecting as it.
async fn apply_role_sql(db: &TestDb, engine_schema: &str) -> (String, Config) {
    let role = format!("{}_rec", db.name);
    db.client()
        .await
        .batch_execute(&role_sql(&role, engine_schema))
        .await
        .unwrap_or_else(|e| panic!("reconciler-role.sql: {e:?}"));
    let mut cfg = Config::default();
    cfg.database.url = Some(SecretString::new(db.dsn.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}@"),
        1,
    )));
    (role, cfg)
}

async fn seed_mix(db: &TestDb) {
    let c = db.client().await;
    // Expired with a child: goes. Young: stays. Running: stays. Old orphan: goes.
    workflow(
        &c,
        "50000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    workflow(&c, "50000002", "failed", Some("Failed"), DAY, Some(DAY), 0).await;
    workflow(
        &c,
        "50000003",
        "running",
        Some("Running"),
        90.0 * DAY,
        None,
        1,
    )
    .await;
    orphan(&c, "50000004", "Failed", 60.0 * DAY, 60.0 * DAY, 1).await;
}

#[tokio::test]
async fn the_role_sql_grants_what_a_pass_needs_and_no_more() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    let (role, cfg) = apply_role_sql(&db, "_duroxide").await;
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT rolcanlogin, rolbypassrls, rolsuper, rolcreatedb, rolcreaterole,
                    pg_has_role(oid, 'pg_read_all_stats', 'MEMBER')
             FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap();
    let flags: [bool; 6] = std::array::from_fn(|i| row.get(i));
    assert_eq!(flags, [true, true, false, false, false, true], "{role}");

    let report = pass(&cfg, false).await;
    assert_eq!(report.instances_removed(), 2, "{report}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(df_ids(&c).await, ["50000002", "50000003"]);
    assert_eq!(rows_of(&c, "50000001").await, 0);
    assert_eq!(rows_of(&c, "50000004").await, 0);
    let engine = engine_ids(&c).await;
    assert!(
        engine
            .iter()
            .all(|id| id.starts_with("50000002") || id.starts_with("50000003")),
        "{engine:?}"
    );

    // No more than that: as the role, anything outside the grants is refused.
    let as_role = crate::harness::connect(cfg.database.url.as_ref().unwrap().expose()).await;
    for statement in [
        "DELETE FROM _duroxide.sessions",
        "DELETE FROM _duroxide._duroxide_migrations",
        // (pg_durable itself grants PUBLIC UPDATE on status and updated_at; not ours.)
        "UPDATE df.instances SET completed_at = now()",
        "UPDATE _duroxide.executions SET status = 'Failed'",
        "INSERT INTO df.vars (role, name) VALUES ('postgres', 'x')",
        "CREATE TABLE df.intruder (x int)",
        "DROP TABLE _duroxide.history",
    ] {
        let err = as_role.batch_execute(statement).await.expect_err(statement);
        let code = err.code().map(|c| c.code().to_owned());
        assert!(
            matches!(code.as_deref(), Some("42501") | Some("42P01")),
            "{statement}: {err:?}"
        );
    }
    // Its own schema, for the audit trail, it may create tables in.
    as_role
        .batch_execute("CREATE TABLE df_reconciler.probe (x int); DROP TABLE df_reconciler.probe")
        .await
        .unwrap();
}

#[tokio::test]
async fn the_role_sql_serves_the_legacy_engine_schema_and_bypassrls_is_required() {
    let db = TestDb::new().await;
    seed_mix(&db).await;
    let c = db.client().await;
    c.batch_execute("SELECT df_fixture.rename_engine_schema('duroxide')")
        .await
        .unwrap();
    let (role, cfg) = apply_role_sql(&db, "duroxide").await;
    c.batch_execute(&format!("ALTER ROLE \"{role}\" NOBYPASSRLS"))
        .await
        .unwrap();
    let rows =
        "SELECT (SELECT count(*) FROM df.instances) + (SELECT count(*) FROM duroxide.instances)";
    let before = count(&c, rows).await;

    let failed = try_pass(&cfg, false).await.expect_err("refused");
    match &failed.error {
        // The only problem is row-level security: every grant is there for `duroxide`.
        Error::Refused(problems) => assert!(
            !problems.is_empty() && problems.iter().all(|p| p.contains("row-level security")),
            "{problems:?}"
        ),
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(failed.error.exit_code(), exit_code::REFUSED);
    assert_eq!(count(&c, rows).await, before, "nothing deleted");

    // Given BYPASSRLS again, the same role reconciles the legacy schema.
    c.batch_execute(&format!("ALTER ROLE \"{role}\" BYPASSRLS"))
        .await
        .unwrap();
    let report = pass(&cfg, false).await;
    assert_eq!(report.instances_removed(), 2, "{report}");
    assert!(report.rows_deleted.contains_key("duroxide.instances"));
}

// ---------------------------------------------------------------------------------------
// docs/CONFIGURATION.md
// ---------------------------------------------------------------------------------------

/// `section.key` paths of a serialized configuration (None options serialize as null and
/// count as keys).
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(inner, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_of_config() {
    let mut in_code = BTreeSet::new();
    key_paths(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut in_code,
    );
    assert!(in_code.contains("database.url") && in_code.contains("tls.ca_file"));
    // Rows of the reference tables: | `section.key` | type | default | meaning |
    let doc = read("docs/CONFIGURATION.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .filter(|key| key.contains('.'))
        .collect();
    let missing: Vec<&String> = in_code.difference(&documented).collect();
    let stale: Vec<&String> = documented.difference(&in_code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/CONFIGURATION.md is out of date.\nundocumented keys: {missing:?}\ndocumented keys that do not exist: {stale:?}"
    );
}
