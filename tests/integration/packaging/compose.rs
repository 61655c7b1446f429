//! compose.yaml: pg_durable's public image (its engine running), the seed and the
//! reconciler wired together; and the seed and the reconciler run for real, the way compose
//! runs them, against PostgreSQL with the real pg_durable engine (skipped, with one line,
//! where the extension is not installed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use df_reconciler_testkit::{real_engine::DATABASE, real_extension_available, RealEngine};
use serde_json::Value;

use super::{
    duration, load_config, output_text, read, repo, text, which, yaml, CONFIG_PATH, HTTP_PORT,
};
use crate::support::db::{count, rows_of, violations};
use crate::support::harness::{connect, wait_until};
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

/// The image of pg_durable's public build, as pinned: `ghcr.io/microsoft/pg_durable:X.Y.Z-pg<major>`
/// (immutable tags; the floating `pg17` and `latest` move). Returns (version, major).
fn pinned_pg_durable_image(image: &str) -> (&str, &str) {
    let tag = image
        .strip_prefix("ghcr.io/microsoft/pg_durable:")
        .unwrap_or_else(|| panic!("{image} is pg_durable's public image"));
    let (version, major) = tag
        .split_once("-pg")
        .unwrap_or_else(|| panic!("{image}: an immutable X.Y.Z-pg<major> tag"));
    let numbers: Vec<&str> = version.split('.').collect();
    assert!(
        numbers.len() == 3
            && numbers
                .iter()
                .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())),
        "{image}: X.Y.Z before -pg"
    );
    assert!(
        !major.is_empty() && major.chars().all(|c| c.is_ascii_digit()),
        "{image}: a PostgreSQL major after -pg"
    );
    (version, major)
}

fn strings<'v>(value: &'v Value, what: &str) -> Vec<&'v str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} is a list: {value:#}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("{what}: strings only")))
        .collect()
}

/// The database a `postgres://user:password@host:port/database?query` DSN names.
fn dsn_database(dsn: &str) -> &str {
    let after_host = dsn
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no database in {dsn}"));
    after_host.split('?').next().unwrap()
}

#[tokio::test]
async fn compose_wires_postgres_seed_and_reconciler() {
    let compose = yaml("compose.yaml");
    let services = &compose["services"];

    // The real engine: pg_durable's public image, pinned; its in-database reconcile off.
    let postgres = &services["postgres"];
    let image = text(postgres, "/image");
    let (version, major) = pinned_pg_durable_image(image);
    assert!(
        ["17", "18"].contains(&major),
        "{image}: published for PostgreSQL 17 and 18 only"
    );
    let command = strings(&postgres["command"], "the postgres command");
    assert_eq!(
        command.first(),
        Some(&"postgres"),
        "{command:?}: the image's entrypoint passes the server's arguments on"
    );
    assert!(
        command
            .windows(2)
            .any(|w| w == ["-c", "pg_durable.reconcile_interval=0"]),
        "pg_durable's own reconcile is off: {command:?}"
    );
    assert!(
        postgres.pointer("/environment/POSTGRES_DB").is_none(),
        "the image ignores POSTGRES_DB (the extension lives in database postgres)"
    );
    let probe = strings(&postgres["healthcheck"]["test"], "the healthcheck");
    assert!(probe.contains(&"pg_isready"), "{probe:?}");
    assert!(
        probe.windows(2).any(|w| w == ["-h", "127.0.0.1"]),
        "TCP, not the init-time socket: {probe:?}"
    );
    assert!(
        probe.windows(2).any(|w| w == ["-d", "postgres"]),
        "{probe:?}"
    );
    let docs = read("docs/OPERATIONS.md");
    assert!(
        docs.contains(&format!("{version}-pg{major}")),
        "docs/OPERATIONS.md names the pinned image"
    );

    // The seed: waits for the engine, then the role and the workflows, from mounted files.
    let seed = &services["seed"];
    assert_eq!(
        text(seed, "/image"),
        image,
        "the seed's psql comes from the same image"
    );
    assert_eq!(
        text(seed, "/depends_on/postgres/condition"),
        "service_healthy"
    );
    assert_eq!(text(seed, "/environment/PGDATABASE"), "postgres");
    let wait: u64 = text(seed, "/environment/SEED_TIMEOUT")
        .parse()
        .expect("SEED_TIMEOUT in seconds");
    assert!((10..=600).contains(&wait), "a bounded wait: {wait}s");
    let seed_sh = read("deploy/compose/seed.sh");
    for needle in [
        "_worker_ready",
        "df.duroxide_schema()",
        "SEED_TIMEOUT",
        "seed.sql",
        "reconciler-role.sql",
    ] {
        assert!(seed_sh.contains(needle), "seed.sh uses {needle}");
    }
    assert!(
        !seed_sh.contains("--single-transaction"),
        "each df.start() commits before the seed waits on it"
    );
    let volumes = compose_volumes(seed);
    let mounted: Vec<&str> = volumes.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(
        mounted,
        [
            "deploy/compose/seed.sh",
            "deploy/compose/seed.sql",
            "deploy/sql/reconciler-role.sql"
        ],
        "the seed mounts its script, its SQL and the role, and no imitation of the stores"
    );
    let seed_dir = text(seed, "/environment/SEED_DIR");
    for (host, container, mode) in &volumes {
        assert!(repo().join(host).is_file(), "{host} exists");
        assert_eq!(mode, "ro", "{host} is mounted read-only");
        assert!(
            container.starts_with(&format!("{seed_dir}/")),
            "{container} is under SEED_DIR"
        );
    }
    assert_eq!(
        strings(&seed["entrypoint"], "the seed's entrypoint"),
        ["sh", &format!("{seed_dir}/seed.sh")]
    );

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
    let url = text(reconciler, "/environment/DF_RECONCILER__DATABASE__URL");
    assert!(
        url.starts_with("postgres://df_reconciler:") && url.contains("@postgres:5432/"),
        "as its role, to the postgres service: {url}"
    );
    assert_eq!(
        dsn_database(url),
        "postgres",
        "the database pg_durable serves in the image"
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

/// What a pass over the seeded demo deletes (deploy/compose/seed.sql: nine workflows aged
/// 40 days, one of them the orphan of a rolled-back df.start()); tests/compose/run.sh
/// expects the same numbers from the containers.
const EXPIRED_COMPLETED: i64 = 6;
const EXPIRED_FAILED: i64 = 1;
const EXPIRED_CANCELLED: i64 = 1;
const ORPHANS: i64 = 1;

/// A seeded demo workflow, as public.demo_workflows lists it.
struct Demo {
    label: String,
    id: String,
    outcome: String,
    aged: bool,
}

/// Runs the compose seed (its script with its mounts, the environment compose gives it)
/// against PostgreSQL with the real pg_durable engine running, twice (the second run must
/// keep the data), then the reconciler the way compose runs it: its config file, the DSN
/// of its role. Skipped, with one line, where pg_durable is not installed.
#[tokio::test]
async fn compose_seed_runs_and_the_reconciler_cleans_up_as_its_role() {
    if let Err(why) = real_extension_available() {
        eprintln!("compose seed: skipped: {why}");
        return;
    }
    let engine = match tokio::task::spawn_blocking(RealEngine::start).await {
        Ok(Ok(engine)) => engine,
        Ok(Err(e)) => panic!("cannot start PostgreSQL with pg_durable's engine: {e}"),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let port = engine.cluster().port();
    let su = connect(&engine.dsn()).await;

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
    let entrypoint = strings(&seed["entrypoint"], "the seed's entrypoint");
    let script = entrypoint[1].strip_prefix(&format!("{seed_dir}/")).unwrap();
    let psql_dir = postgres_program("psql").parent().unwrap().to_owned();
    let path = std::env::join_paths(
        std::iter::once(psql_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut df_rows_after_first = 0;
    for (round, expected) in [(1, "seed: seed.sql"), (2, "keeping the data")] {
        let mut cmd = Command::new(entrypoint[0]);
        // Only what compose sets: none of the caller's libpq settings.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.arg(mounts.path().join(script))
            .env("PATH", &path)
            .env("SEED_DIR", mounts.path())
            .env("SEED_TIMEOUT", text(seed, "/environment/SEED_TIMEOUT"))
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", DATABASE)
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
        assert!(
            stdout.contains("seed: engine ready"),
            "seed run {round}: {stdout}"
        );
        assert!(stdout.contains(expected), "seed run {round}: {stdout}");
        assert!(stdout.contains("seed: done"), "seed run {round}: {stdout}");
        let df_rows = count(&su, "SELECT count(*) FROM df.instances").await;
        if round == 1 {
            df_rows_after_first = df_rows;
        } else {
            assert_eq!(
                df_rows, df_rows_after_first,
                "the second run started nothing"
            );
        }
    }

    // What the seed made: real workflows, in both stores.
    let demos: Vec<Demo> = su
        .query(
            "SELECT label, instance_id, outcome, aged FROM public.demo_workflows ORDER BY label",
            &[],
        )
        .await
        .expect("public.demo_workflows")
        .iter()
        .map(|r| Demo {
            label: r.get(0),
            id: r.get(1),
            outcome: r.get(2),
            aged: r.get(3),
        })
        .collect();
    let aged = |outcome: &str| {
        demos
            .iter()
            .filter(|d| d.aged && d.outcome == outcome)
            .count() as i64
    };
    assert_eq!(
        [
            aged("completed"),
            aged("failed"),
            aged("cancelled"),
            aged("orphan")
        ],
        [
            EXPIRED_COMPLETED,
            EXPIRED_FAILED,
            EXPIRED_CANCELLED,
            ORPHANS
        ],
        "the demo the numbers below count"
    );
    for live in ["demo-heartbeat-loop", "demo-approval"] {
        assert!(
            demos
                .iter()
                .any(|d| d.label == live && d.outcome == "running" && !d.aged),
            "{live} is seeded, live"
        );
    }
    assert!(
        demos.iter().any(|d| !d.aged && d.outcome == "completed"),
        "young finished ones are seeded too"
    );
    let children = count(
        &su,
        "SELECT count(*) FROM _duroxide.instances c JOIN public.demo_workflows d
           ON c.parent_instance_id = d.instance_id WHERE d.label IN ('demo-join', 'demo-race')",
    )
    .await;
    assert_eq!(
        children, 4,
        "the JOIN and the RACE ran as two engine children each"
    );
    let before: Vec<(String, i64)> = {
        let mut rows = Vec::new();
        for d in &demos {
            rows.push((d.label.clone(), rows_of(&su, &d.id).await));
        }
        rows
    };
    for (label, rows) in &before {
        assert!(*rows > 0, "{label} has rows before the pass");
    }

    let reconciler = |args: &[&str]| {
        let mut cmd = binary();
        cmd.args(args)
            .env(
                "DF_RECONCILER_CONFIG",
                repo().join("deploy/compose/config.toml"),
            )
            .env("DF_RECONCILER__DATABASE__URL", compose_dsn(port, DATABASE));
        cmd
    };
    let out = run(reconciler(&["check"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok: df_reconciler@"),
        "as its role: {stdout}"
    );
    assert!(stdout.contains("engine schema \"_duroxide\""), "{stdout}");

    let json = |out: Output| -> Value {
        assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("one JSON report")
    };
    let dry = json(run(reconciler(&["once", "--dry-run", "--json"])).await);
    let real = json(run(reconciler(&["once", "--json"])).await);
    let again = json(run(reconciler(&["once", "--json"])).await);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(real["dry_run"], false);
    for report in [&dry, &real] {
        assert_eq!(
            report["expired_removed"]["completed"], EXPIRED_COMPLETED,
            "{report:#}"
        );
        assert_eq!(
            report["expired_removed"]["failed"], EXPIRED_FAILED,
            "{report:#}"
        );
        assert_eq!(
            report["expired_removed"]["cancelled"], EXPIRED_CANCELLED,
            "{report:#}"
        );
        assert_eq!(report["orphans_reclaimed"], ORPHANS, "{report:#}");
        assert_eq!(report["engine_children_removed"], children, "{report:#}");
        assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    }
    assert_eq!(
        dry["rows_deleted"], real["rows_deleted"],
        "a dry run counts what a pass deletes"
    );
    assert_eq!(again["expired_removed"]["completed"], 0, "{again:#}");
    assert_eq!(again["orphans_reclaimed"], 0, "{again:#}");
    assert_eq!(again["errors"], serde_json::json!([]), "{again:#}");

    // Both stores afterwards: every aged instance gone with all its rows (engine children
    // and the orphan included), the young and the live ones whole and as they were.
    for (d, (_, rows_before)) in demos.iter().zip(&before) {
        let rows = rows_of(&su, &d.id).await;
        if d.aged {
            assert_eq!(rows, 0, "{} ({}) is gone from both stores", d.label, d.id);
            continue;
        }
        assert!(rows > 0, "{} ({}) is kept", d.label, d.id);
        let status: String = su
            .query_one("SELECT status FROM df.instances WHERE id = $1", &[&d.id])
            .await
            .unwrap_or_else(|e| panic!("{}: its df row: {e}", d.label))
            .get(0);
        assert_eq!(status, d.outcome, "{} is as it was", d.label);
        if d.outcome == "completed" {
            assert_eq!(rows, *rows_before, "{}: not a row less", d.label);
        }
    }
    for live in ["demo-heartbeat-loop", "demo-approval"] {
        let engine_status: String = su
            .query_one(
                "SELECT ex.status FROM public.demo_workflows d
                   JOIN _duroxide.instances ei ON ei.instance_id = d.instance_id
                   JOIN _duroxide.executions ex ON ex.instance_id = ei.instance_id
                                               AND ex.execution_id = ei.current_execution_id
                  WHERE d.label = $1",
                &[&live],
            )
            .await
            .unwrap_or_else(|e| panic!("{live}: its engine record: {e}"))
            .get(0);
        assert_eq!(engine_status, "Running", "{live} still runs in the engine");
    }
    assert_eq!(violations(&su).await, Vec::<String>::new());
    // The loop goes on beating after the passes.
    let beats = count(&su, "SELECT count(*) FROM public.demo_heartbeats").await;
    wait_until(
        "the heartbeat loop to beat again",
        Duration::from_secs(60),
        || {
            let su = &su;
            async move { count(su, "SELECT count(*) FROM public.demo_heartbeats").await > beats }
        },
    )
    .await;
}
