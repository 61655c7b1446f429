//! Every PostgreSQL advisory-lock key of the program, in one place.
//!
//! Advisory locks are scoped to the database, so these keys only need to be unique among
//! what df-reconciler itself takes in one database. All share the high 32 bits `"dfrc"`.
//!
//! | key | scope | held by | purpose |
//! |---|---|---|---|
//! | [`BATCH_FENCE`] | transaction | every real batch | one batch at a time across replicas; works behind transaction poolers |
//! | [`LEADER`] | session, dedicated connection | the leader replica | followers skip passes cheaply |
//! | [`MIGRATION`] | transaction | `migrate` | replicas cannot race applying the audit schema |

const NAMESPACE: i64 = 0x6466_7263 << 32; // "dfrc"

/// Taken with `pg_try_advisory_xact_lock` at the start of every real batch transaction.
pub(crate) const BATCH_FENCE: i64 = NAMESPACE | 1;

/// Taken with `pg_try_advisory_lock` on a connection outside the pool.
pub(crate) const LEADER: i64 = NAMESPACE | 2;

/// Taken with `pg_advisory_xact_lock` by the migration transaction.
pub(crate) const MIGRATION: i64 = NAMESPACE | 3;

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_distinct() {
        let keys = [super::BATCH_FENCE, super::LEADER, super::MIGRATION];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
