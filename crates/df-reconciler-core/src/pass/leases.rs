//! The lease check: the rows that carry leases (worker queue items, instance locks) are
//! deleted first, in a savepoint, and a tree with a live lease is put back. The
//! dispatcher's queue is deleted last instead ([`super::batch`]), its leases read then.

use deadpool_postgres::Transaction;

use super::deletes::delete_rows;
use super::statements::Statements;
use super::tally::BatchTally;
use super::trees::ClearedTrees;
use crate::error::Error;

/// The savepoint a real batch sets before deleting the rows that carry leases.
const LEASE_SAVEPOINT: &str = "SAVEPOINT before_leased_rows";
const BACK_TO_LEASE_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT before_leased_rows";
const END_LEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT before_leased_rows";

/// Deletes the worker queue items and instance locks of the cleared trees and
/// bare ids, first and inside a savepoint, reading each row's lease as it goes: the delete
/// is the lease check, so a lease taken after the trees were locked cannot slip through.
/// A tree (or bare id) with a lease not yet expired is put back (`skipped_locked`), the
/// savepoint rolled back and the rest deleted again, until no deleted row was leased.
/// Returns the statement that ends the savepoint, for the batch to send ahead of its other
/// deletes: those must run in the top transaction, as a row it locked and a subtransaction
/// deleted would take a MultiXact each. A dry run read the leases when it locked
/// (with the trees, [`crate::sql::engine::READ_TREES`]) and only counts.
pub(crate) async fn delete_unleased(
    tx: &Transaction<'_>,
    st: &Statements,
    cleared: &mut ClearedTrees,
    tally: &mut BatchTally,
) -> Result<Option<&'static str>, Error> {
    let mut prelude = (!st.dry_run).then_some(LEASE_SAVEPOINT);
    loop {
        let deleted = delete_rows(
            tx,
            st,
            prelude,
            &[
                (&st.delete_engine_leased, &cleared.members()),
                (&st.delete_queues, &cleared.bare_rows()),
            ],
        )
        .await?;
        if deleted.leased.is_empty() {
            tally.rows.extend(deleted.rows);
            return Ok((!st.dry_run).then_some(END_LEASE_SAVEPOINT));
        }
        let put_back = cleared.put_back_leased(&deleted.leased);
        if put_back == 0 {
            // Cannot happen: every deleted row carries an id of the batch's. Never loop.
            return Err(Error::Refused(vec![format!(
                "leased rows of {:?} belong to no tree of the batch; the batch is rolled back",
                deleted.leased
            )]));
        }
        tally.skipped_locked += put_back;
        prelude = Some(BACK_TO_LEASE_SAVEPOINT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_roll_back_and_release_name_the_same_savepoint() {
        let name = LEASE_SAVEPOINT.strip_prefix("SAVEPOINT ").unwrap();
        assert_eq!(
            BACK_TO_LEASE_SAVEPOINT,
            format!("ROLLBACK TO SAVEPOINT {name}")
        );
        assert_eq!(END_LEASE_SAVEPOINT, format!("RELEASE SAVEPOINT {name}"));
    }
}
