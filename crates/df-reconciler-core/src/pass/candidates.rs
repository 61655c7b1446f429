//! A batch's candidates: the next ids after the watermark, planned for that watermark, and
//! the watermark past them.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use crate::db::{Exec, Param, Stmt};
use crate::error::{DbContext, Error};

/// Known as soon as a batch has read its candidates, so a batch abandoned after that still
/// moves the watermark.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) watermark: String,
    pub(crate) candidates: u64,
}

/// The watermark after a batch's candidates (their first column is the keyset id, in
/// order), recorded in `progress` at once so an abandoned batch still moves past them.
/// None: no candidate left.
pub(crate) fn advance(rows: &[Row], progress: &mut Option<Progress>) -> Option<String> {
    advance_by(rows, |r| r.get(0), progress)
}

/// [`advance`] over any rows, given how to read a row's keyset id.
fn advance_by<R>(
    rows: &[R],
    id: impl Fn(&R) -> String,
    progress: &mut Option<Progress>,
) -> Option<String> {
    let next: String = id(rows.last()?);
    *progress = Some(Progress {
        watermark: next.clone(),
        candidates: rows.len() as u64,
    });
    Some(next)
}

/// Runs a candidate selection, planned for its actual watermark (a generic plan cannot use
/// `$1 IS NULL OR id > $1` as an index bound), and behind it, pipelined, switches the rest
/// of the batch to generic plans: every later statement takes the batch's ids as an array,
/// for which a generic plan probes the index as well (assuming a short array, it keeps
/// `= ANY($1)` an index scan), without planning on every execution.
pub(crate) async fn select_candidates(
    tx: &Transaction<'_>,
    statement: &Stmt,
    params: &[&dyn Param],
    what: &'static str,
) -> Result<Vec<Row>, Error> {
    let select = async { tx.fetch_all(statement, params).await.context(what) };
    let generic_plans = async {
        tx.batch_execute("SET LOCAL plan_cache_mode = force_generic_plan")
            .await
            .context("switching to generic plans")
    };
    let (rows, ()) = futures_util::future::try_join(select, generic_plans).await?;
    Ok(rows)
}

pub(crate) fn limit(batch_size: u32) -> i64 {
    i64::from(batch_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advance_over(ids: &[&str], progress: &mut Option<Progress>) -> Option<String> {
        advance_by(ids, |id| (*id).to_owned(), progress)
    }

    #[test]
    fn the_watermark_moves_past_the_last_candidate_seen() {
        let mut progress = None;
        let next = advance_over(&["a", "b::1::c", "c"], &mut progress);
        assert_eq!(next.as_deref(), Some("c"));
        assert_eq!(
            progress,
            Some(Progress {
                watermark: "c".to_owned(),
                candidates: 3
            })
        );
    }

    #[test]
    fn no_candidate_ends_the_phase_and_records_nothing() {
        let mut progress = None;
        assert_eq!(advance_over(&[], &mut progress), None);
        assert_eq!(progress, None);
    }
}
