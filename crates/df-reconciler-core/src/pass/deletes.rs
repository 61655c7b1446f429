//! The per-table deletes of a batch (in a dry run, counts), pipelined in deletion order.

use std::collections::{BTreeMap, HashSet};

use deadpool_postgres::Transaction;

use super::statements::{DeleteKind, Statements, TableStatements};
use crate::db::Exec;
use crate::error::{DbContext, Error};

/// A batch's rows of one table group: (instance id, row address). The address is the
/// ctid the batch's lock returned, used by tables deleted by address; empty otherwise.
pub(crate) type Rows = Vec<(String, String)>;

/// What a group of deletes removed.
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    /// Rows per table, tables with none left out.
    pub(crate) rows: Vec<(String, u64)>,
    /// Ids among the deleted rows whose lease had not expired.
    pub(crate) leased: HashSet<String>,
}

/// Runs `prelude` (a savepoint statement, or the deferred foreign-key checks), then each
/// table's DELETE (or, in a dry run, its count) for the rows paired with its group of
/// statements; a group with no rows is left out. The statements are pipelined: sent together, run by the server one after the other
/// in order, in the batch's transaction. A delete by address must match every locked row,
/// or the batch fails (and rolls back) rather than leave part of an instance behind.
pub(crate) async fn delete_rows(
    tx: &Transaction<'_>,
    st: &Statements,
    prelude: Option<&str>,
    groups: &[(&TableStatements, &Rows)],
) -> Result<Deleted, Error> {
    let groups: Vec<(&TableStatements, Vec<&str>, Vec<&str>)> = groups
        .iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(statements, rows)| {
            let (ids, addresses) = unique_in_order(rows);
            (*statements, ids, addresses)
        })
        .collect();
    let prelude = async {
        match prelude {
            Some(sql) => tx
                .batch_execute(sql)
                .await
                .with_context(|| format!("running {sql}")),
            None => Ok(()),
        }
    };
    let runs = groups.iter().flat_map(|(statements, ids, addresses)| {
        statements.iter().map(move |t| async move {
            let context = || format!("deleting from {}", t.table);
            let (n, leased) = match t.kind {
                _ if st.dry_run => {
                    let n = tx
                        .fetch_one(&t.statement, &[ids])
                        .await
                        .with_context(|| format!("counting {}", t.table))?
                        .get::<_, i64>(0);
                    (n as u64, Vec::new())
                }
                DeleteKind::ByAddress => {
                    let n = tx
                        .exec(&t.statement, &[ids, addresses])
                        .await
                        .with_context(context)?;
                    if n != ids.len() as u64 {
                        return Err(Error::Refused(vec![format!(
                            "deleting {} locked rows of {} by address removed {n}; the batch is rolled back",
                            ids.len(),
                            t.table
                        )]));
                    }
                    (n, Vec::new())
                }
                DeleteKind::ReportingLeases => {
                    let row = tx
                        .fetch_one(&t.statement, &[ids])
                        .await
                        .with_context(context)?;
                    (row.get::<_, i64>(0) as u64, row.get::<_, Vec<String>>(1))
                }
                DeleteKind::ById => (
                    tx.exec(&t.statement, &[ids])
                        .await
                        .with_context(context)?,
                    Vec::new(),
                ),
            };
            Ok::<_, Error>((&t.table, n, leased))
        })
    });
    let ((), results) =
        futures_util::future::try_join(prelude, futures_util::future::try_join_all(runs)).await?;
    Ok(Deleted::from_results(results))
}

/// Unique ids in order, and their addresses in the same order.
fn unique_in_order(rows: &Rows) -> (Vec<&str>, Vec<&str>) {
    let unique: BTreeMap<&str, &str> = rows
        .iter()
        .map(|(id, address)| (id.as_str(), address.as_str()))
        .collect();
    unique.into_iter().unzip()
}

impl Deleted {
    /// Sums up each table's (table, rows, leased ids).
    fn from_results<'t>(results: impl IntoIterator<Item = (&'t String, u64, Vec<String>)>) -> Self {
        let mut deleted = Deleted::default();
        for (table, n, leased) in results {
            if n > 0 {
                deleted.rows.push((table.clone(), n));
            }
            deleted.leased.extend(leased);
        }
        deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(&str, &str)]) -> Rows {
        pairs
            .iter()
            .map(|(id, address)| ((*id).to_owned(), (*address).to_owned()))
            .collect()
    }

    #[test]
    fn ids_are_sent_once_sorted_each_with_its_own_address() {
        let batch = rows(&[
            ("c", "(0,3)"),
            ("a", "(0,1)"),
            ("b", "(7,2)"),
            ("a", "(0,1)"),
        ]);
        let (ids, addresses) = unique_in_order(&batch);
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(addresses, ["(0,1)", "(7,2)", "(0,3)"]);
    }

    #[test]
    fn tables_with_no_row_are_left_out_and_leases_are_merged() {
        let (history, queue, locks) = (
            "duroxide.history".to_owned(),
            "duroxide.worker_queue".to_owned(),
            "duroxide.instance_locks".to_owned(),
        );
        let deleted = Deleted::from_results([
            (&history, 12, Vec::new()),
            (&queue, 0, Vec::new()),
            (&locks, 2, vec!["a".to_owned(), "b".to_owned()]),
            (&queue, 3, vec!["a".to_owned()]),
        ]);
        assert_eq!(
            deleted.rows,
            [
                (history.clone(), 12),
                (locks.clone(), 2),
                (queue.clone(), 3)
            ]
        );
        assert_eq!(deleted.leased, ["a".to_owned(), "b".to_owned()].into());
    }
}
