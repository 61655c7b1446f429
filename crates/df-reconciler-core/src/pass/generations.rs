//! Phase 3, a batch of old generations: the next prunable executions of the engine
//! instances that stay (live loops, terminal instances still retained, their children),
//! locked, then deleted with their history.

use super::batch::Batch;
use super::candidates::{limit, select_candidates, Progress};
use super::phase::{GenerationMark, Step};
use super::tally::BatchTally;
use crate::db::Exec;
use crate::error::{DbContext, Error};

/// The candidate generations of a batch, and where the keyset goes on after it.
#[derive(Debug, PartialEq, Eq)]
struct Selection {
    generations: Vec<(String, i64)>,
    /// None: no instance left after the watermark.
    next: Option<GenerationMark>,
}

/// Where the keyset goes on after a batch's selection: past its last candidate when it
/// filled the batch (the instance may have more), else past the last instance its window
/// read (the window held no more). The window's last instance is None when it read none.
fn next_mark(
    generations: &[(String, i64)],
    window_end: Option<String>,
    batch_size: u32,
) -> Option<GenerationMark> {
    match generations.last() {
        Some((instance_id, execution_id)) if generations.len() as u64 >= u64::from(batch_size) => {
            Some(GenerationMark {
                instance_id: instance_id.clone(),
                execution_id: *execution_id,
            })
        }
        _ => window_end.map(|instance_id| GenerationMark {
            instance_id,
            execution_id: i64::MAX,
        }),
    }
}

/// Phase 3: the next batch of old generations.
pub(crate) async fn generation_batch(
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
        rules: _,
    } = batch;
    let after = watermark.and_then(GenerationMark::parse);
    let after_instance = after.as_ref().map(|m| m.instance_id.clone());
    let after_execution = after.as_ref().map_or(0, |m| m.execution_id);
    // Past every generation of the watermark's instance: the walk starts after it.
    let inclusive = after_execution != i64::MAX;
    let p = &clock.rules;
    let rows = select_candidates(
        tx,
        &st.generation_candidates,
        &[
            &p.labels,
            &p.roles,
            &after_instance,
            &after_execution,
            &limit(batch_size),
            &p.keep_executions,
            &p.generation_cutoffs,
            &inclusive,
        ],
        "selecting old generations",
    )
    .await?;
    let mut generations = Vec::new();
    let mut window_end = None;
    for row in &rows {
        match row.get::<_, Option<i64>>(1) {
            Some(execution_id) => generations.push((row.get::<_, String>(0), execution_id)),
            None => window_end = row.get::<_, Option<String>>(0),
        }
    }
    let selection = Selection {
        next: next_mark(&generations, window_end, batch_size),
        generations,
    };
    let Some(next) = selection.next else {
        return Ok(Step::Exhausted);
    };
    let next = next.to_text();
    *progress = Some(Progress {
        watermark: next.clone(),
        candidates: selection.generations.len() as u64,
    });
    if selection.generations.is_empty() {
        return Ok(Step::Continue { watermark: next });
    }

    let (ids, executions): (Vec<String>, Vec<i64>) = selection.generations.into_iter().unzip();
    let locked = tx
        .fetch_all(&st.lock_generations, &[&ids, &executions])
        .await
        .context("locking old generations")?;
    tally.generations_skipped += (ids.len() - locked.len()) as u64;
    if locked.is_empty() {
        return Ok(Step::Continue { watermark: next });
    }
    let mut locked_ids = Vec::with_capacity(locked.len());
    let mut locked_executions = Vec::with_capacity(locked.len());
    let mut addresses = Vec::with_capacity(locked.len());
    for row in &locked {
        locked_ids.push(row.get::<_, String>(0));
        locked_executions.push(row.get::<_, i64>(1));
        addresses.push(row.get::<_, String>(2));
    }
    // History first, then the executions, pipelined in the batch's transaction.
    let history = async {
        let context = "deleting the history of old generations";
        if st.dry_run {
            Ok::<u64, Error>(
                tx.fetch_one(
                    &st.delete_generation_history,
                    &[&locked_ids, &locked_executions],
                )
                .await
                .context(context)?
                .get::<_, i64>(0) as u64,
            )
        } else {
            tx.exec(
                &st.delete_generation_history,
                &[&locked_ids, &locked_executions],
            )
            .await
            .context(context)
        }
    };
    let executions = async {
        match &st.delete_generation_executions {
            // A dry run read exactly the rows a real batch locks and deletes.
            None => Ok::<u64, Error>(locked_ids.len() as u64),
            Some(delete) => {
                let n = tx
                    .exec(delete, &[&locked_ids, &locked_executions, &addresses])
                    .await
                    .context("deleting old generations")?;
                if n != locked_ids.len() as u64 {
                    return Err(Error::Refused(vec![format!(
                        "deleting {} locked generations by address removed {n}; the batch is rolled back",
                        locked_ids.len()
                    )]));
                }
                Ok(n)
            }
        }
    };
    let (history_rows, execution_rows) =
        futures_util::future::try_join(history, executions).await?;
    let [history_table, executions_table] = &st.generation_tables;
    if history_rows > 0 {
        tally.rows.push((history_table.clone(), history_rows));
    }
    tally.rows.push((executions_table.clone(), execution_rows));
    tally.generations += execution_rows;
    Ok(Step::Continue { watermark: next })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gens(n: i64) -> Vec<(String, i64)> {
        (1..=n).map(|e| ("inst".to_owned(), e)).collect()
    }

    #[test]
    fn a_full_batch_goes_on_after_its_last_generation() {
        let next = next_mark(&gens(3), Some("zzz".to_owned()), 3);
        assert_eq!(
            next,
            Some(GenerationMark {
                instance_id: "inst".to_owned(),
                execution_id: 3
            })
        );
    }

    #[test]
    fn a_short_batch_goes_on_past_its_window() {
        let next = next_mark(&gens(2), Some("zzz".to_owned()), 3);
        assert_eq!(
            next,
            Some(GenerationMark {
                instance_id: "zzz".to_owned(),
                execution_id: i64::MAX
            })
        );
        assert_eq!(
            next_mark(&[], Some("a".to_owned()), 3).map(|m| m.execution_id),
            Some(i64::MAX)
        );
    }

    #[test]
    fn an_empty_window_ends_the_phase() {
        assert_eq!(next_mark(&[], None, 3), None);
    }
}
