//! Ids of every shape (quotes, LIKE wildcards, Unicode, whitespace, child-like `::`
//! segments, 2000 characters, the empty string) in both stores: matched exactly, never by
//! pattern, across keyset batches.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::{bounded_pass, engine_set, rows_exactly, set, tree_of};
use crate::support::db::{df_ids, engine_ids, exec, ids, violations};
use crate::support::harness::TestDb;
use crate::support::passes::config_for;
use crate::support::seed::{orphan, workflow, DAY};

/// Engine ids with no child shape: old terminal orphans, each must be reclaimed exactly.
fn root_shaped_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "ABCDEF01",
        "ünïcødé-根-🦀",
        "it's \"quoted\"",
        "%",
        "_",
        "a%b_c",
        " spaced id ",
        "back\\slash",
        "new\nline\ttab",
        "a::b",
        "::::",
        "a::x1::b",
        "a::1",
        "a::١::b", // Arabic-Indic digit: not an ASCII digit, for Rust and SQL alike
        "SUB::3",
        "subway",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push(format!("long-{}", "0123456789abcdef".repeat(125)));
    ids
}

/// Child-shaped ids without a parent link: not roots, never deleted on their own.
const CHILD_SHAPED_IDS: [&str; 5] = ["sub::3", "x::sub::1", "a::12::b", "::1::", "q::7::"];

#[tokio::test]
async fn unusual_engine_ids_are_matched_exactly() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let roots = root_shaped_ids();
    for (i, id) in roots.iter().enumerate() {
        // Every third one with a child, whose composed id embeds the odd one.
        orphan(
            &c,
            id,
            "Failed",
            60.0 * DAY,
            60.0 * DAY,
            i32::from(i % 3 == 0),
        )
        .await;
    }
    for id in CHILD_SHAPED_IDS {
        orphan(&c, id, "Failed", 60.0 * DAY, 60.0 * DAY, 0).await;
    }
    // Bystanders a pattern match (LIKE '%', '_', case folding) would take along: young
    // orphans, and a live workflow differing only in case from an orphan.
    orphan(&c, "young-%-x", "Failed", 600.0, 300.0, 0).await;
    orphan(&c, "y", "Completed", 600.0, 300.0, 0).await;
    workflow(
        &c,
        "abcdef01",
        "running",
        Some("Running"),
        60.0 * DAY,
        None,
        1,
    )
    .await;
    let children: BTreeSet<String> = ids(
        &c,
        "SELECT instance_id FROM _duroxide.instances WHERE parent_instance_id IS NOT NULL",
    )
    .await
    .into_iter()
    .filter(|id| !id.starts_with("abcdef01"))
    .collect();
    assert_eq!(children.len(), 6);
    assert!(violations(&c).await.is_empty());

    let mut cfg = config_for(&db);
    cfg.pass.batch_size = 3; // keyset paging over odd ids, across several batches
    let report = bounded_pass(&cfg).await;

    for id in &roots {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id:?} reclaimed entirely");
    }
    for id in &children {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id:?} went with its root");
    }
    let mut survivors = set(&CHILD_SHAPED_IDS);
    survivors.extend(set(&["young-%-x", "y"]));
    survivors.extend(tree_of(&c, "abcdef01").await);
    assert_eq!(engine_set(&c).await, survivors);
    assert_eq!(df_ids(&c).await, vec!["abcdef01"]);
    for id in CHILD_SHAPED_IDS {
        assert_eq!(rows_exactly(&c, id).await, 9, "{id:?} whole: 1+1+6+1 rows");
    }
    assert_eq!(report.orphans_reclaimed, roots.len() as u64);
    assert_eq!(report.orphans_by_status.failed, roots.len() as u64);
    assert_eq!(report.engine_children_removed, children.len() as u64);
    assert_eq!(report.orphans_waiting, 2, "the two young ones");
    assert!(violations(&c).await.is_empty());
    // Idempotent on odd ids too.
    assert_eq!(bounded_pass(&cfg).await.instances_removed(), 0);
}

/// pg_durable's 8-hex format checks on df ids are NOT VALID: an install upgraded from a
/// version without them may still hold rows whose id is any 8 characters (varchar(8)).
/// Such a database is imitated by dropping the checks on df.instances.id and
/// df.nodes.instance_id, found by the column they check.
async fn allow_legacy_df_ids(c: &Client) {
    exec(
        c,
        "DO $$
         DECLARE r record;
         BEGIN
           FOR r IN
             SELECT DISTINCT c.conrelid::regclass AS tbl, c.conname
               FROM pg_constraint c
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
              WHERE c.contype = 'c'
                AND ((c.conrelid = 'df.instances'::regclass AND a.attname = 'id')
                  OR (c.conrelid = 'df.nodes'::regclass AND a.attname = 'instance_id'))
                AND pg_get_constraintdef(c.oid) LIKE '%~%'
           LOOP
             EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
           END LOOP;
         END $$",
    )
    .await;
}

#[tokio::test]
async fn unusual_df_ids_are_matched_exactly() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // Rows from before the id format checks: 8 characters of anything.
    allow_legacy_df_ids(&c).await;
    let expired = ["ABCDEF01", "a%b_c d ", "o'q\"x\\y ", "ü%_ 🦀;--", "a::1::b"];
    for id in expired {
        workflow(
            &c,
            id,
            "completed",
            Some("Completed"),
            60.0 * DAY,
            Some(60.0 * DAY),
            1,
        )
        .await;
    }
    // Young bystanders every pattern above would match.
    for id in ["abcdef01", "aXbYc d ", "o'q\"x\\yz", "üx_ 🦀;--"] {
        workflow(&c, id, "completed", Some("Completed"), DAY, Some(DAY), 1).await;
    }
    assert!(violations(&c).await.is_empty());

    let report = bounded_pass(&config_for(&db)).await;

    for id in &expired[..4] {
        assert_eq!(rows_exactly(&c, id).await, 0, "{id:?} went whole");
    }
    // A df row whose engine record has a child shape: the engine record is not a root,
    // so nothing of it may go (counted as inconsistent).
    assert!(rows_exactly(&c, "a::1::b").await > 0);
    assert_eq!(report.skipped_inconsistent, 1);
    let mut kept = vec!["a::1::b", "abcdef01", "aXbYc d ", "o'q\"x\\yz", "üx_ 🦀;--"];
    kept.sort_unstable();
    let mut after = df_ids(&c).await;
    after.sort_unstable();
    assert_eq!(after, kept);
    assert_eq!(report.expired_removed.completed, 4);
    assert_eq!(report.engine_children_removed, 4);
    assert!(violations(&c).await.is_empty());
}

#[tokio::test]
async fn an_empty_id_is_reclaimed_like_any_other() {
    let db = TestDb::new().await;
    let c = db.client().await;
    // An expired df row with id '' (varchar(8) allows it, on an install older than the
    // id format checks) and its engine tree.
    allow_legacy_df_ids(&c).await;
    workflow(&c, "", "cancelled", Some("Failed"), 60.0 * DAY, None, 1).await;
    let report = bounded_pass(&config_for(&db)).await;
    assert!(df_ids(&c).await.is_empty(), "the expired df row ''");
    assert!(engine_ids(&c).await.is_empty(), "its tree: '' and '::1::…'");
    assert_eq!(report.expired_removed.cancelled, 1);
    // An old orphan engine root with id ''.
    orphan(&c, "", "Failed", 60.0 * DAY, 60.0 * DAY, 1).await;
    let report = bounded_pass(&config_for(&db)).await;
    assert!(
        engine_ids(&c).await.is_empty(),
        "the orphan '' and its child"
    );
    assert_eq!(report.orphans_reclaimed, 1);
}
