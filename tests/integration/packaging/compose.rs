//! compose.yaml: postgres, seed and reconciler wired together, and the seed and the
//! reconciler run for real against the test server the way compose runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{duration, load_config, output_text, repo, text, which, yaml, CONFIG_PATH, HTTP_PORT};
use crate::support::harness::superuser_client;
use crate::support::process::{binary, run};

/// A program next to the PostgreSQL server binaries (psql), as the harness finds those.
fn postgres_program(name: &str) -> PathBuf {
    let on_path = which(name).ok();
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
    let port = crate::support::harness::cluster().port();

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
