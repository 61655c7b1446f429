//! Phase 1, a batch of expired terminal df rows: select them from the df side, lock the
//! engine trees that may go (the same statement reads what the engine holds for each row,
//! which classifies it), lock the df rows of those trees, delete both stores' rows.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use tokio_postgres::types::Timestamp;

use super::batch::Batch;
use super::candidates::{advance, limit, select_candidates, Progress};
use super::deletes::{delete_rows, Rows};
use super::leases::delete_unleased;
use super::phase::Step;
use super::tally::BatchTally;
use super::trees::{lock_trees, RootRule};
use crate::audit::DeletedRoot;
use crate::db::Exec;
use crate::error::{DbContext, Error};
use crate::policy::{EngineStatus, TerminalStatus};

/// What the selection's look at the engine says of an expired df row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its engine record is not a root (hostile or corrupt data): kept.
    Inconsistent,
    /// Its engine root is not a terminal engine instance (Running, ContinuedAsNew between
    /// two generations, or a status we do not know): kept. Its descendants are read when
    /// the tree is locked.
    Unsettled,
    /// Goes on to locking.
    Lock,
}

pub(crate) fn classify(
    has_engine_record: bool,
    engine_is_root: bool,
    engine_status: Option<&str>,
) -> Verdict {
    if has_engine_record && !engine_is_root {
        Verdict::Inconsistent
    } else if has_engine_record && !engine_status.is_some_and(EngineStatus::is_terminal) {
        Verdict::Unsettled
    } else {
        Verdict::Lock
    }
}

/// Phase 1: the next batch of expired terminal df rows.
pub(crate) async fn expired_batch(
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
        rules: batch_rules,
    } = batch;
    let p = &clock.rules;
    let [cut_completed, cut_failed, cut_cancelled] = &p.cutoffs;
    let rows = select_candidates(
        tx,
        &st.expired_candidates,
        &[
            &p.labels,
            &p.roles,
            &watermark,
            &limit(batch_size),
            cut_completed,
            cut_failed,
            cut_cancelled,
            &p.edge_at,
            &p.edge_id,
        ],
        "selecting expired instances",
    )
    .await?;
    let Some(next) = advance(&rows, progress) else {
        return Ok(Step::Exhausted);
    };

    struct Candidate {
        status: TerminalStatus,
        window_expired: bool,
        rule: i32,
    }
    let terminal_at: BTreeMap<String, Option<Timestamp<SystemTime>>> =
        rows.iter().map(|r| (r.get(0), r.get(3))).collect();
    let candidates: BTreeMap<String, Candidate> = rows
        .iter()
        .filter_map(|row| {
            let status = TerminalStatus::parse(row.get::<_, &str>(1))?;
            Some((
                row.get(0),
                Candidate {
                    status,
                    window_expired: row.get(2),
                    rule: row.get(4),
                },
            ))
        })
        .collect();
    let ids: Vec<String> = candidates.keys().cloned().collect();
    // The trees first: the statement that locks them also says what the engine holds for
    // each df row (classify), so only rows whose tree may go are locked on the df side.
    let mut trees = lock_trees(tx, st, &ids, RootRule::Settled, tally).await?;
    let may_go: Vec<&String> = ids.iter().filter(|id| trees.is_deletable(id)).collect();
    // Locked df rows and their addresses. A tree whose df row another session holds (or
    // that stopped being terminal) stays, though locked until the batch ends.
    let locked: HashMap<String, String> = if may_go.is_empty() {
        HashMap::new()
    } else {
        tx.fetch_all(&st.lock_df_rows, &[&may_go])
            .await
            .context("locking expired df rows")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    tally.skipped_locked += trees.keep_locked(&locked);

    // Engine rows: every instance of the cleared trees. A df row without an engine record
    // takes only the queue items carrying its id: should the engine create its instance
    // meanwhile, that instance is left whole, to be reclaimed later as an orphan.
    if !trees.is_empty() {
        let end_savepoint = delete_unleased(tx, st, &mut trees, tally).await?;
        // df ids to delete: bare rows and rows whose whole tree was cleared.
        let df_rows: Rows = candidates
            .keys()
            .filter(|id| trees.is_deletable(id))
            .map(|id| (id.clone(), locked[id].clone()))
            .collect();
        let deleted = delete_rows(
            tx,
            st,
            end_savepoint,
            &[
                (&st.delete_df, &df_rows),
                (&st.delete_engine, &trees.members()),
            ],
        )
        .await?;
        tally.rows.extend(deleted.rows);
        tally.deleted_last = trees.members_and_bare_rows();
        for (id, _) in &df_rows {
            let c = &candidates[id];
            let rule = batch_rules.name(c.rule);
            tally
                .expired
                .push((c.status, c.window_expired, rule.to_owned()));
            tally.deleted_roots.push(DeletedRoot {
                instance_id: id.clone(),
                reason: if c.window_expired {
                    "expired"
                } else {
                    "capped"
                },
                status: c.status.as_str().to_owned(),
                terminal_at: terminal_at.get(id).copied().flatten(),
                rule: rule.to_owned(),
            });
        }
        tally.children += trees.children();
    }
    for (id, at) in &terminal_at {
        if !trees.is_deletable(id) {
            tally.skipped_since(*at);
        }
    }
    Ok(Step::Continue { watermark: next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_df_row_without_an_engine_record_goes_on_to_locking() {
        for status in [None, Some("Running"), Some("Completed")] {
            assert_eq!(classify(false, false, status), Verdict::Lock, "{status:?}");
        }
    }

    #[test]
    fn an_engine_record_that_is_no_root_is_inconsistent_whatever_its_status() {
        assert_eq!(
            classify(true, false, Some("Completed")),
            Verdict::Inconsistent
        );
        assert_eq!(
            classify(true, false, Some("Running")),
            Verdict::Inconsistent
        );
    }

    #[test]
    fn only_a_terminal_engine_root_goes_on_to_locking() {
        for terminal in ["Completed", "Failed"] {
            assert_eq!(classify(true, true, Some(terminal)), Verdict::Lock);
        }
        // A loop between generations is live, however long ago its df row was cancelled.
        // Unknown means keep: a status we do not know, or none at all.
        for unsettled in [
            Some("Running"),
            Some("ContinuedAsNew"),
            Some("Suspended"),
            Some("completed"),
            None,
        ] {
            assert_eq!(
                classify(true, true, unsettled),
                Verdict::Unsettled,
                "{unsettled:?}"
            );
        }
    }
}
