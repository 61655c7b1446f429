//! Phase 2, a batch of orphan engine roots: select, lock their trees, delete them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use tokio_postgres::types::Timestamp;

use super::batch::Batch;
use super::candidates::{advance, limit, select_candidates, Progress};
use super::deletes::delete_rows;
use super::leases::delete_unleased;
use super::phase::Step;
use super::tally::BatchTally;
use super::trees::{lock_trees, RootRule};
use crate::audit::DeletedRoot;
use crate::error::Error;

/// Phase 2: the next batch of orphan engine roots.
pub(crate) async fn orphan_batch(
    batch: Batch<'_>,
    progress: &mut Option<Progress>,
    tally: &mut BatchTally,
) -> Result<Step, Error> {
    let Batch {
        tx,
        st,
        clock,
        batch_size,
        watermark,
        ..
    } = batch;
    let rows = select_candidates(
        tx,
        &st.orphan_candidates,
        &[
            &watermark,
            &limit(batch_size),
            &clock.orphan_cutoff,
            &clock.orphan_created_before,
        ],
        "selecting orphan engine roots",
    )
    .await?;
    let Some(next) = advance(&rows, progress) else {
        return Ok(Step::Exhausted);
    };
    let roots: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let aged_from: BTreeMap<String, Option<Timestamp<SystemTime>>> =
        rows.iter().map(|r| (r.get(0), r.get(2))).collect();
    let mut trees = lock_trees(tx, st, &roots, RootRule::Orphan, tally).await?;
    if !trees.is_empty() {
        let end_savepoint = delete_unleased(tx, st, &mut trees, tally).await?;
        let deleted = delete_rows(
            tx,
            st,
            end_savepoint,
            &[(&st.delete_engine, &trees.members())],
        )
        .await?;
        tally.rows.extend(deleted.rows);
        tally.deleted_last = trees.members();
        for (id, status) in &trees.root_statuses {
            tally.orphans.push(*status);
            tally.deleted_roots.push(DeletedRoot {
                instance_id: id.clone(),
                reason: "orphan",
                status: format!("{status:?}"),
                terminal_at: aged_from.get(id).copied().flatten(),
                rule: crate::rules::DEFAULT_RULE.to_owned(),
            });
        }
        tally.children += trees.children();
    }
    for (id, at) in &aged_from {
        if !trees.is_deletable(id) {
            tally.skipped_since(*at);
        }
    }
    Ok(Step::Continue { watermark: next })
}
