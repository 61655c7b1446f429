//! Seeding a population in one transaction, and checking one real pass (and a second,
//! idempotent one) against the model: survivors in both stores and the report's counts.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio_postgres::Client;

use super::population::{Ago, EngineStatus, Population};
use super::rules::{expected_survivors, model, root_of, Fate};
use crate::support::db::{df_ids, engine_ids};
use crate::support::harness::TestDb;
use crate::support::passes::{config_for, pass};

// ---------------------------------------------------------------------------------------
// Seeding and checking
// ---------------------------------------------------------------------------------------

/// Seeds the population in ONE transaction, so every row shares the same `now()`.
pub(super) async fn seed(c: &Client, p: &Population) {
    c.batch_execute("BEGIN").await.expect("BEGIN");
    for (id, w) in &p.workflows {
        c.execute(
            "SELECT df_fixture.workflow($1, $2, $3, now() - make_interval(secs => $4),
                    now() - make_interval(secs => $5), $6, child_status => $7)",
            &[
                id,
                &w.df.sql(),
                &w.engine.map(EngineStatus::sql),
                &w.created.secs(),
                &w.finished.map(Ago::secs),
                &w.children,
                &w.child.map(EngineStatus::sql),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("seeding workflow {id} {w:?}: {e:?}"));
    }
    for (id, o) in &p.orphans {
        c.execute(
            "SELECT df_fixture.orphan_root($1, $2, now() - make_interval(secs => $3),
                    now() - make_interval(secs => $4), $5, child_status => $6)",
            &[
                id,
                &o.engine.sql(),
                &o.created.secs(),
                &o.finished.map(Ago::secs),
                &o.children,
                &o.child.map(EngineStatus::sql),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("seeding orphan {id} {o:?}: {e:?}"));
    }
    c.batch_execute("COMMIT").await.expect("COMMIT");
}

/// Seeds `p` into a fresh database, runs one pass and compares with the model; then a second
/// pass must remove nothing.
pub(super) async fn check(p: &Population) -> Result<(), TestCaseError> {
    let fates = model(p);
    let db = TestDb::new().await;
    let c = db.client().await;
    seed(&c, p).await;

    // The fixture wrote what the model assumes: one df row per workflow, and a tree of
    // 1 + children engine instances per root with an engine record.
    let seeded_engine = engine_ids(&c).await;
    let mut tree_sizes: BTreeMap<&str, i32> = BTreeMap::new();
    for id in &seeded_engine {
        *tree_sizes.entry(root_of(id)).or_default() += 1;
    }
    let planned_sizes: BTreeMap<&str, i32> = p
        .workflows
        .iter()
        .filter(|(_, w)| w.engine.is_some())
        .map(|(id, w)| (id.as_str(), 1 + w.children))
        .chain(
            p.orphans
                .iter()
                .map(|(id, o)| (id.as_str(), 1 + o.children)),
        )
        .collect();
    prop_assert_eq!(&tree_sizes, &planned_sizes, "seeded engine trees");
    let seeded_df = df_ids(&c).await;
    prop_assert_eq!(
        seeded_df,
        p.workflows.keys().cloned().collect::<Vec<_>>(),
        "seeded df rows"
    );

    let mut cfg = config_for(&db);
    p.retention.apply(&mut cfg);
    let report = pass(&cfg, false).await;

    let (want_df, want_engine) = expected_survivors(p, &fates, &seeded_engine);
    let mut got_engine = engine_ids(&c).await;
    got_engine.sort();
    let got_df = df_ids(&c).await;
    prop_assert_eq!(
        &got_df,
        &want_df,
        "surviving df ids\nmodel fates: {:#?}\nreport: {}",
        fates,
        report
    );
    prop_assert_eq!(
        &got_engine,
        &want_engine,
        "surviving engine ids\nmodel fates: {:#?}\nreport: {}",
        fates,
        report
    );

    // The report counts the same removals.
    let deleted_roots = fates.values().filter(|f| f.deleted()).count() as u64;
    let reclaimed = fates
        .values()
        .filter(|f| **f == Fate::OrphanReclaimed)
        .count() as u64;
    let children_removed = (seeded_engine.len() - want_engine.len()) as u64
        - fates
            .iter()
            .filter(|(id, f)| f.deleted() && planned_sizes.contains_key(id.as_str()))
            .count() as u64;
    prop_assert!(
        report.complete && report.errors.is_empty(),
        "pass incomplete: {}",
        report
    );
    prop_assert_eq!(
        report.instances_removed(),
        deleted_roots,
        "report: {}",
        report
    );
    prop_assert_eq!(report.orphans_reclaimed, reclaimed, "report: {}", report);
    // Every expired row whose tree has not ended is counted, once.
    let unsettled = fates.values().filter(|f| **f == Fate::Unsettled).count() as u64;
    prop_assert_eq!(
        report.skipped_unsettled,
        unsettled,
        "model fates: {:#?}\nreport: {}",
        fates,
        report
    );
    prop_assert_eq!(
        report.engine_children_removed,
        children_removed,
        "report: {}",
        report
    );

    // Idempotence: the survivors are a fixed point.
    let again = pass(&cfg, false).await;
    prop_assert_eq!(
        again.instances_removed(),
        0,
        "second pass removed more: {}",
        again
    );
    prop_assert_eq!(df_ids(&c).await, got_df, "second pass, df ids");
    let mut engine_again = engine_ids(&c).await;
    engine_again.sort();
    prop_assert_eq!(engine_again, got_engine, "second pass, engine ids");
    Ok(())
}
