//! Churn under a running daemon: for a minute, clients start and finish mixed workflows
//! (simple, JOIN, RACE, a short LOOP that breaks, sleeps) on the real engine while the
//! daemon's `run` (the binary) passes every second with a 1 s window and orphan floor and a
//! hard cap of 20. Then, with the workload stopped and everything ended, one more pass.
//!
//! Invariants:
//! - every workflow started completes normally and its result is readable (df.result) until
//!   it is removed;
//! - no pass fails (the audit trail and /metrics);
//! - no live work is deleted (the guard triggers);
//! - nothing of a removed instance remains in any table, and no engine row is left whose
//!   root has no df row;
//! - the server log holds no engine error about a missing row for an instance logged after
//!   the daemon removed it;
//! - the final pass leaves at most hard_cap terminal rows and nothing orphaned.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{
    engine_or_skip, engine_rows_without_df_root, first_row, live_deletions, pass, result, start,
    status, with_rows_left,
};
use crate::support::db::{count, exec, ids, violations};
use crate::support::harness::{connect, wait_until};
use crate::support::process::{daemon, exit_within, free_port, metric_at, signal, Running};

/// How long the workload runs.
const CHURN: Duration = Duration::from_secs(60);
/// Concurrent clients, each starting one workflow and waiting for its end.
const CLIENTS: u32 = 6;
const HARD_CAP: i64 = 20;
/// The longest workflow (the loop: three iterations with a 1 s sleep) takes ~6 s on an
/// idle machine; far more under load.
const FINISH: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Simple,
    Join,
    Race,
    Loop,
    Sleep,
}

const KINDS: [Kind; 5] = [
    Kind::Simple,
    Kind::Join,
    Kind::Race,
    Kind::Loop,
    Kind::Sleep,
];

/// Whether a completed workflow's result is the one it must have.
type Expected = Box<dyn Fn(&Value) -> bool + Send>;

impl Kind {
    /// The workflow's graph for value `k` (unique per workflow) and the result it must
    /// complete with.
    fn workflow(self, k: u32) -> (String, Expected) {
        match self {
            Kind::Simple => (
                format!("'SELECT {k} AS v'"),
                Box::new(move |r| first_row(r, "v") == json!(k)),
            ),
            Kind::Join => (
                format!("df.seq(df.join('SELECT {k} AS a', 'SELECT 2 AS b'), 'SELECT {k} AS after')"),
                Box::new(move |r| first_row(r, "after") == json!(k)),
            ),
            Kind::Race => (
                format!("df.race('SELECT pg_sleep(0.1), {k} AS winner', df.sleep(20))"),
                Box::new(move |r| first_row(r, "winner") == json!(k)),
            ),
            // Three iterations (each continues as new), then a break with a value.
            Kind::Loop => (
                format!(
                    "df.loop(df.seq('INSERT INTO public.churn_ticks (k) VALUES ({k})',
                       df.seq(df.as('SELECT count(*) AS n FROM public.churn_ticks WHERE k = {k}', 'c'),
                              df.if('SELECT $c.n >= 3', df.break('{{\"done\": {k}}}'), df.sleep(1)))))"
                ),
                Box::new(move |r| *r == json!({ "done": k })),
            ),
            Kind::Sleep => (
                format!("df.seq(df.sleep(1), 'SELECT {k} AS woke')"),
                Box::new(move |r| first_row(r, "woke") == json!(k)),
            ),
        }
    }
}

/// What became of one workflow, as its client saw it.
#[derive(Debug)]
enum Fate {
    /// Completed with the expected result, read back.
    Completed,
    /// Gone (df.status NULL) before the client saw it end: checked against the audit.
    GoneUnseen,
    /// Anything else: a violation.
    Wrong(String),
}

/// Starts workflows one after the other until `stop`, each awaited to its end.
async fn client(dsn: String, n: u32, stop: Arc<AtomicBool>) -> Vec<(Kind, String, Fate)> {
    let c = connect(&dsn).await;
    let mut done = Vec::new();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let kind = KINDS[((i + n) as usize) % KINDS.len()];
        let k = 1_000_000 * (n + 1) + i;
        i += 1;
        let (graph, expected) = kind.workflow(k);
        let id = start(&c, &graph, &format!("churn-{kind:?}")).await;
        let began = Instant::now();
        let fate = loop {
            match status(&c, &id).await.as_deref() {
                Some("completed") => {
                    break match result(&c, &id).await {
                        Some(r) if expected(&r) => Fate::Completed,
                        Some(r) => Fate::Wrong(format!("completed with {r}")),
                        // Removed between the two reads.
                        None if status(&c, &id).await.is_none() => Fate::GoneUnseen,
                        None => Fate::Wrong("completed without a result".to_owned()),
                    };
                }
                Some(s @ ("failed" | "cancelled")) => break Fate::Wrong(format!("ended {s}")),
                Some(_) => {}
                None => break Fate::GoneUnseen,
            }
            if began.elapsed() > FINISH {
                break Fate::Wrong(format!("not ended after {FINISH:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        done.push((kind, id, fate));
    }
    done
}

/// The end of the daemon's log, for failure messages.
fn tail(file: &mut std::fs::File) -> String {
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(4000)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_under_a_running_daemon_keeps_every_invariant() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    exec(&c, "CREATE TABLE public.churn_ticks (k bigint NOT NULL)").await;

    let port = free_port();
    let mut daemon_log = tempfile::tempfile().expect("a temp file");
    let mut cmd = daemon(&engine.dsn);
    cmd.args(["run"])
        .env("DF_RECONCILER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("DF_RECONCILER__PASS__INTERVAL", "1s")
        .env("DF_RECONCILER__RETENTION__WINDOW", "1s")
        .env("DF_RECONCILER__RETENTION__ORPHAN_MIN_AGE", "1s")
        .env("DF_RECONCILER__RETENTION__ALLOW_SHORT_RETENTION", "true")
        .env("DF_RECONCILER__RETENTION__HARD_CAP", HARD_CAP.to_string())
        .env("DF_RECONCILER__AUDIT__AUTO_MIGRATE", "true")
        .env("DF_RECONCILER__AUDIT__RECORD_DELETIONS", "true")
        .stdout(Stdio::null())
        .stderr(daemon_log.try_clone().expect("the log file"));
    let mut daemon = Running::spawn(&mut cmd);
    wait_until(
        "the daemon's first pass",
        Duration::from_secs(60),
        || async {
            metric_at(
                port,
                "df_reconciler_passes_total{outcome=\"ok\",dry_run=\"false\"}",
            )
            .await
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;

    // The workload.
    let began = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(engine.dsn.clone(), n, stop.clone())))
        .collect();
    tokio::time::sleep(CHURN).await;
    stop.store(true, Ordering::Relaxed);
    let mut fates = Vec::new();
    for client in clients {
        fates.extend(client.await.expect("a client"));
    }
    let churned = began.elapsed();

    // Everything has ended: no live df row, no live engine instance.
    wait_until("every instance has ended", FINISH, || async {
        count(
            &c,
            "SELECT (SELECT count(*) FROM df.instances
                      WHERE status IS NULL OR status NOT IN ('completed', 'failed', 'cancelled'))
                  + (SELECT count(*) FROM _duroxide.instances i
                       JOIN _duroxide.executions e
                         ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id
                      WHERE e.status IN ('Running', 'ContinuedAsNew'))",
        )
        .await
            == 0
    })
    .await;
    // A few more of the daemon's passes over the quiet database.
    let passes_so_far = count(&c, "SELECT count(*) FROM df_reconciler.passes").await;
    wait_until("three more passes", Duration::from_secs(60), || async {
        count(&c, "SELECT count(*) FROM df_reconciler.passes").await >= passes_so_far + 3
    })
    .await;
    let failed_metric = metric_at(
        port,
        "df_reconciler_passes_total{outcome=\"failed\",dry_run=\"false\"}",
    )
    .await;
    assert!(
        daemon.0.try_wait().expect("the daemon's state").is_none(),
        "the daemon died:\n{}",
        tail(&mut daemon_log)
    );
    signal(&daemon.0, "TERM");
    let exit = exit_within(&mut daemon.0, Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit}:\n{}", tail(&mut daemon_log));

    // Figures.
    let outcomes: BTreeMap<String, i64> = c
        .query(
            "SELECT outcome, count(*) FROM df_reconciler.passes GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let removed = count(
        &c,
        "SELECT coalesce(sum(instances_removed), 0)::bigint FROM df_reconciler.passes",
    )
    .await;
    let children_removed = count(
        &c,
        "SELECT coalesce(sum((report->>'engine_children_removed')::bigint), 0)::bigint
           FROM df_reconciler.passes",
    )
    .await;
    let deleted_roots: BTreeSet<String> =
        ids(&c, "SELECT instance_id FROM df_reconciler.deletions")
            .await
            .into_iter()
            .collect();
    let mut started: BTreeMap<Kind, usize> = BTreeMap::new();
    for (kind, _, _) in &fates {
        *started.entry(*kind).or_default() += 1;
    }
    let unseen: Vec<&String> = fates
        .iter()
        .filter(|(_, _, f)| matches!(f, Fate::GoneUnseen))
        .map(|(_, id, _)| id)
        .collect();
    let wrong: Vec<String> = fates
        .iter()
        .filter_map(|(kind, id, f)| match f {
            Fate::Wrong(why) => Some(format!("{kind:?} {id}: {why}")),
            _ => None,
        })
        .collect();
    let missing_rows = engine.missing_row_lines();
    let errors = engine.errors_about_deleted(&c).await;
    let leftovers_before = engine_rows_without_df_root(&c).await;
    eprintln!(
        "real_engine: churn: {} workflows started in {churned:?} ({started:?}), {} seen \
         completed, {} removed before their client looked; passes {outcomes:?} (failed on \
         /metrics: {failed_metric:?}); {removed} instances removed ({} recorded deletions, \
         {children_removed} engine children); engine rows without a df root after the run: \
         {leftovers_before}; server log lines about missing rows: {} (after a deletion, about \
         the deleted instance: {})",
        fates.len(),
        fates
            .iter()
            .filter(|(_, _, f)| matches!(f, Fate::Completed))
            .count(),
        unseen.len(),
        deleted_roots.len(),
        missing_rows.len(),
        errors.len(),
    );
    for line in missing_rows.iter().take(20) {
        eprintln!("real_engine: churn: log: {line}");
    }

    assert!(
        fates.len() >= 20,
        "the workload barely ran: {}",
        fates.len()
    );
    assert!(
        wrong.is_empty(),
        "workflows that did not complete normally: {wrong:#?}"
    );
    for id in &unseen {
        assert!(
            deleted_roots.contains(*id),
            "{id} vanished without the daemon removing it"
        );
    }
    assert_eq!(
        outcomes.get("failed"),
        None,
        "failed passes:\n{}",
        tail(&mut daemon_log)
    );
    assert!(
        failed_metric.is_none_or(|n| n == 0.0),
        "/metrics counts failed passes: {failed_metric:?}"
    );
    assert!(removed > 0, "the daemon removed nothing");
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    assert_eq!(
        with_rows_left(&c, &deleted_roots).await,
        Vec::<String>::new(),
        "rows left of removed instances"
    );
    assert_eq!(leftovers_before, 0, "engine rows whose root has no df row");
    assert!(
        errors.is_empty(),
        "engine errors about instances the daemon had removed: {errors:#?}"
    );

    // One more pass with the workload stopped: only what must stay is left.
    let mut cfg = engine.short_config(Duration::from_secs(1));
    cfg.retention.hard_cap = HARD_CAP as u64;
    let report = pass(&cfg).await;
    let terminal = count(
        &c,
        "SELECT count(*) FROM df.instances WHERE status IN ('completed', 'failed', 'cancelled')",
    )
    .await;
    let live = count(
        &c,
        "SELECT count(*) FROM df.instances
          WHERE status IS NULL OR status NOT IN ('completed', 'failed', 'cancelled')",
    )
    .await;
    let leftovers = engine_rows_without_df_root(&c).await;
    eprintln!(
        "real_engine: churn: final pass removed {} ({} orphans); left: {terminal} terminal df \
         rows, {live} live, {leftovers} engine rows without a df root",
        report.instances_removed(),
        report.orphans_reclaimed
    );
    assert!(
        terminal <= HARD_CAP,
        "{terminal} terminal rows kept ({report})"
    );
    assert_eq!(live, 0);
    assert_eq!(leftovers, 0, "nothing orphaned ({report})");
    assert_eq!(report.orphans_reclaimed, 0, "{report}");
    assert_eq!(violations(&c).await, Vec::<String>::new());
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
}
