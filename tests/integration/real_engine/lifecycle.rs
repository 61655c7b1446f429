//! Workflows that run to their end: a simple one, a JOIN (two child sub-orchestrations)
//! and a RACE (whose loser is cancelled after the race returns) expire from both stores
//! as whole trees; a young one stays; waiters on a signal and on a sleep are kept while
//! live and then complete normally.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{
    age, engine_or_skip, first_row, live_deletions, pass, result, start, status, tree, wait_ended,
    wait_status, with_rows_left,
};
use crate::support::db::rows_of;

const DAY: f64 = 86_400.0;
/// A workflow of a few steps completes in 1-3 s on an idle 2-core machine.
const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn simple_workflows_expire_from_both_stores_and_young_ones_stay() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    let old = start(&c, "'SELECT 1 AS one'", "old").await;
    let young = start(&c, "'SELECT 2 AS two'", "young").await;
    wait_ended(&c, &old, "completed", FINISH).await;
    wait_ended(&c, &young, "completed", FINISH).await;
    // Live while the pass runs.
    let live = start(&c, "df.seq(df.sleep(3), 'SELECT 3 AS three')", "live").await;
    wait_status(&c, &live, "running", FINISH).await;
    age(&c, &old, 2.0 * DAY).await;
    let young_rows = rows_of(&c, &young).await;

    let mut cfg = engine.config();
    cfg.retention.window = Duration::from_secs(86_400);
    let report = pass(&cfg).await;

    assert_eq!(report.expired_removed.completed, 1, "{report}");
    assert_eq!(rows_of(&c, &old).await, 0, "nothing of {old} in any table");
    assert_eq!(status(&c, &old).await, None);
    assert_eq!(rows_of(&c, &young).await, young_rows, "{young} untouched");
    assert_eq!(
        result(&c, &young).await.map(|r| first_row(&r, "two")),
        Some(json!(2))
    );
    wait_status(&c, &live, "completed", FINISH).await;
    assert_eq!(
        result(&c, &live).await.map(|r| first_row(&r, "three")),
        Some(json!(3)),
        "the live one completed normally"
    );
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    assert_eq!(pass(&cfg).await.instances_removed(), 0, "idempotent");
    let errors = engine.errors_about_deleted(&c).await;
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn an_aged_join_goes_with_its_whole_engine_tree() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    let graph = "df.seq(df.join('SELECT 1 AS a', 'SELECT 2 AS b'), 'SELECT 3 AS after_join')";
    let old = start(&c, graph, "join-old").await;
    let young = start(&c, graph, "join-young").await;
    wait_ended(&c, &old, "completed", FINISH).await;
    wait_ended(&c, &young, "completed", FINISH).await;
    for id in [&old, &young] {
        let members = tree(&c, id).await;
        assert_eq!(
            members.len(),
            3,
            "a root and two JOIN children: {members:?}"
        );
        assert!(
            members[1..]
                .iter()
                .all(|(child, _)| child.starts_with(&format!("{id}::1::"))),
            "{members:?}"
        );
    }
    let live = start(&c, &format!("df.seq(df.sleep(2), {graph})"), "join-live").await;
    age(&c, &old, 2.0 * DAY).await;
    let young_rows = rows_of(&c, &young).await;

    let mut cfg = engine.config();
    cfg.retention.window = Duration::from_secs(86_400);
    let report = pass(&cfg).await;

    assert_eq!(report.expired_removed.completed, 1, "{report}");
    assert_eq!(report.engine_children_removed, 2, "{report}");
    assert_eq!(
        rows_of(&c, &old).await,
        0,
        "nothing of {old} or its children in any table"
    );
    assert_eq!(rows_of(&c, &young).await, young_rows);
    assert_eq!(tree(&c, &young).await.len(), 3);
    wait_status(&c, &live, "completed", FINISH).await;
    assert_eq!(
        result(&c, &live).await.map(|r| first_row(&r, "after_join")),
        Some(json!(3))
    );
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    let errors = engine.errors_about_deleted(&c).await;
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Races whose loser (a 30 s sleep) is cancelled after the winner returns, under passes
/// run back to back with a zero window: each tree may go only once every member ended,
/// and must then go whole. A second race, kept by the default window until every member
/// ended and it was aged, goes whole too.
#[tokio::test]
async fn a_race_never_leaves_its_loser_behind() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    let graph = "df.race('SELECT pg_sleep(0.2), ''fast'' AS winner', df.sleep(30))";
    let raced: BTreeSet<String> = {
        let mut ids = BTreeSet::new();
        for n in 0..3 {
            ids.insert(start(&c, graph, &format!("race-{n}")).await);
        }
        ids
    };

    let cfg = engine.short_config(Duration::ZERO);
    let began = Instant::now();
    let mut passes = 0;
    loop {
        let report = pass(&cfg).await;
        passes += 1;
        let gone: Vec<&String> = {
            let mut gone = Vec::new();
            for id in &raced {
                if status(&c, id).await.is_none() {
                    gone.push(id);
                }
            }
            gone
        };
        for id in &gone {
            assert_eq!(
                rows_of(&c, id).await,
                0,
                "{id}: its df row went, so must every engine row of its tree ({report})"
            );
        }
        assert_eq!(live_deletions(&c).await, Vec::<String>::new());
        if gone.len() == raced.len() {
            break;
        }
        assert!(
            began.elapsed() < FINISH,
            "the races were not all removed after {passes} passes: {:?}",
            {
                let mut states = Vec::new();
                for id in &raced {
                    states.push((status(&c, id).await, tree(&c, id).await));
                }
                states
            }
        );
    }
    eprintln!(
        "real_engine: races removed whole under {passes} back-to-back passes in {:?}",
        began.elapsed()
    );

    let kept = start(&c, graph, "race-kept").await;
    wait_ended(&c, &kept, "completed", FINISH).await;
    let members = tree(&c, &kept).await;
    assert_eq!(
        members.len(),
        3,
        "the root, the winner, the loser: {members:?}"
    );
    assert!(
        members.iter().any(|(_, s)| s == "Failed"),
        "the loser was cancelled: {members:?}"
    );
    assert_eq!(
        result(&c, &kept).await.map(|r| first_row(&r, "winner")),
        Some(json!("fast"))
    );
    // The default window keeps it; aged past it, the whole tree goes.
    let report = pass(&engine.config()).await;
    assert_eq!(report.instances_removed(), 0, "{report}");
    age(&c, &kept, 31.0 * DAY).await;
    let report = pass(&engine.config()).await;
    assert_eq!(report.expired_removed.completed, 1, "{report}");
    assert_eq!(report.engine_children_removed, 2, "{report}");
    let all: BTreeSet<String> = raced.iter().chain([&kept]).cloned().collect();
    assert_eq!(with_rows_left(&c, &all).await, Vec::<String>::new());
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    let errors = engine.errors_about_deleted(&c).await;
    assert!(errors.is_empty(), "{errors:#?}");
}

#[tokio::test]
async fn signal_and_sleep_waiters_are_kept_while_live_then_complete() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    let waiter = start(
        &c,
        "df.seq(df.as(df.wait_for_signal('approval', 300), 'sig'),
                'SELECT ($sig::jsonb->''data''->>''approved'')::boolean AS approved')",
        "signal-waiter",
    )
    .await;
    let sleeper = start(
        &c,
        "df.seq(df.sleep(12), 'SELECT ''woke'' AS msg')",
        "sleeper",
    )
    .await;
    let sleeping = Instant::now();
    wait_status(&c, &waiter, "running", FINISH).await;
    wait_status(&c, &sleeper, "running", FINISH).await;
    // Something the passes do remove, so that they visibly work.
    let done = start(&c, "'SELECT 1'", "done").await;
    wait_ended(&c, &done, "completed", FINISH).await;

    // The shortest retention and no terminal row retained at all: nothing live may go.
    // Passes for 3 s, well within the sleeper's 12 s sleep.
    let mut cfg = engine.short_config(Duration::ZERO);
    cfg.retention.hard_cap = 0;
    let mut removed = 0;
    let mut passes = 0;
    let began = Instant::now();
    while passes == 0
        || (began.elapsed() < Duration::from_secs(3) && sleeping.elapsed() < Duration::from_secs(9))
    {
        let report = pass(&cfg).await;
        passes += 1;
        removed += report.instances_removed();
        for id in [&waiter, &sleeper] {
            assert_eq!(status(&c, id).await.as_deref(), Some("running"), "{report}");
            assert_eq!(tree(&c, id).await.len(), 1, "{id} kept whole ({report})");
        }
    }
    assert!(passes > 0);
    assert_eq!(removed, 1, "only the completed one");
    assert_eq!(rows_of(&c, &done).await, 0);

    // Woken: the sleeper completes normally.
    wait_status(&c, &sleeper, "completed", FINISH).await;
    assert_eq!(
        result(&c, &sleeper).await.map(|r| first_row(&r, "msg")),
        Some(json!("woke"))
    );
    // Signalled: the waiter completes normally with the signal's data.
    let ok: String = c
        .query_one(
            "SELECT df.signal($1, 'approval', '{\"approved\": true}')",
            &[&waiter],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, "OK");
    wait_status(&c, &waiter, "completed", FINISH).await;
    assert_eq!(
        result(&c, &waiter).await.map(|r| first_row(&r, "approved")),
        Some(json!(true))
    );
    eprintln!("real_engine: waiters kept through {passes} passes");

    // Ended, they go like any other.
    wait_ended(&c, &waiter, "completed", FINISH).await;
    wait_ended(&c, &sleeper, "completed", FINISH).await;
    let report = pass(&cfg).await;
    assert_eq!(report.instances_removed(), 2, "{report}");
    let both: BTreeSet<String> = [waiter, sleeper].into_iter().collect();
    assert_eq!(with_rows_left(&c, &both).await, Vec::<String>::new());
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
    let errors = engine.errors_about_deleted(&c).await;
    assert!(errors.is_empty(), "{errors:#?}");
}
