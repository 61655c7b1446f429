//! Engine trees: expand roots into whole trees, lock every instance without waiting, read
//! the roots' state after locking, and clear only trees that are whole, locked and settled.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::deletes::Rows;
use super::statements::Statements;
use super::tally::BatchTally;
use crate::error::{DbContext, Error};
use crate::policy::EngineStatus;

/// What a root's state must be, read after locking, for its tree to be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RootRule {
    /// A df row's engine root: anything but Running (and a status we know).
    Settled,
    /// An orphan: terminal and still without a df row.
    Orphan,
}

impl RootRule {
    /// Whether a root whose current execution has `status` (None: unknown) may go.
    fn allows(self, status: Option<EngineStatus>, has_df_row: bool) -> bool {
        match (self, status) {
            (_, None | Some(EngineStatus::Running)) => false,
            (RootRule::Settled, Some(_)) => true,
            (RootRule::Orphan, Some(_)) => !has_df_row,
        }
    }
}

/// Trees cleared for deletion in this batch.
#[derive(Debug, Default)]
pub(crate) struct ClearedTrees {
    /// By root: every engine instance of the tree, root included, with its row address.
    trees: BTreeMap<String, Rows>,
    /// df ids without an engine record whose queue items may go.
    bare: BTreeSet<String>,
    /// The cleared roots' current-execution status.
    pub(crate) root_statuses: BTreeMap<String, EngineStatus>,
}

impl ClearedTrees {
    pub(crate) fn is_empty(&self) -> bool {
        self.trees.is_empty() && self.bare.is_empty()
    }

    /// A cleared root or bare df id.
    pub(crate) fn is_deletable(&self, id: &str) -> bool {
        self.trees.contains_key(id) || self.bare.contains(id)
    }

    /// Every engine instance of the cleared trees.
    pub(crate) fn members(&self) -> Rows {
        self.trees.values().flatten().cloned().collect()
    }

    /// The bare ids, without addresses (queue tables never delete by address).
    pub(crate) fn bare_rows(&self) -> Rows {
        self.bare
            .iter()
            .map(|id| (id.clone(), String::new()))
            .collect()
    }

    pub(crate) fn children(&self) -> u64 {
        self.trees.values().map(|m| m.len() as u64 - 1).sum()
    }

    /// Puts back every tree with a member among `leased`, and every leased bare id.
    /// Returns how many it put back.
    pub(crate) fn put_back_leased(&mut self, leased: &HashSet<String>) -> u64 {
        let before = self.trees.len() + self.bare.len();
        self.trees
            .retain(|_, members| !members.iter().any(|(id, _)| leased.contains(id)));
        self.root_statuses
            .retain(|root, _| self.trees.contains_key(root));
        self.bare.retain(|id| !leased.contains(id));
        (before - self.trees.len() - self.bare.len()) as u64
    }
}

/// Expands `roots` into whole trees, locks every instance without waiting, and clears a
/// tree only when all its instances were locked and the root's state, read after locking,
/// satisfies `rule`. `bare_ids` (df rows without an engine record) are cleared when the
/// engine has not created them meanwhile. Leases: a dry run clears only trees and bare ids
/// none of whose queue items or instance locks is leased; a real pass learns of leases as
/// it deletes ([`super::leases::delete_unleased`]).
pub(crate) async fn lock_trees(
    tx: &Transaction<'_>,
    st: &Statements,
    roots: &[String],
    bare_ids: &[String],
    rule: RootRule,
    tally: &mut BatchTally,
) -> Result<ClearedTrees, Error> {
    let mut trees: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Members this batch locked: their row address and current execution.
    let mut locked: HashMap<String, (String, Option<i64>)> = HashMap::new();
    // Bare ids are expanded too: an engine record that appeared since selection shows here
    // (and is locked until the batch ends, though never deleted in it).
    let expand: Vec<&String> = roots.iter().chain(bare_ids).collect();
    if !expand.is_empty() {
        for row in tx
            .query(&st.lock_trees, &[&expand])
            .await
            .context("expanding and locking engine trees")?
        {
            if !row.get::<_, bool>(5) {
                // No engine row (a bare df row, or a root gone since selection).
                continue;
            }
            let member: String = row.get(1);
            if row.get::<_, bool>(2) {
                locked.insert(member.clone(), (row.get(3), row.get(4)));
            }
            trees.entry(row.get(0)).or_default().push(member);
        }
        // A tree is one whose root has an engine row; rows found under an id without one
        // (a corrupt parent link to a missing instance) are no tree of this batch's.
        trees.retain(|root, members| members.contains(root));
    }
    // A dry run's leases and the root states are both read after locking and independent
    // of each other: pipelined, one round trip.
    let lease_ids: Vec<&String> = if st.dry_run {
        roots
            .iter()
            .filter_map(|r| trees.get(r))
            .flatten()
            .chain(bare_ids)
            .collect()
    } else {
        Vec::new()
    };
    let read_leases = async {
        if lease_ids.is_empty() {
            return Ok(HashSet::new());
        }
        Ok::<_, Error>(
            tx.query(&st.leased, &[&lease_ids])
                .await
                .context("reading dispatcher leases")?
                .iter()
                .map(|r| r.get(0))
                .collect::<HashSet<String>>(),
        )
    };
    // Roots whose own row is locked, with the current execution the lock read.
    let (state_ids, state_executions): (Vec<&String>, Vec<Option<i64>>) = roots
        .iter()
        .filter_map(|r| locked.get(r).map(|(_, execution)| (r, *execution)))
        .unzip();
    let read_states = async {
        let mut states: BTreeMap<String, (Option<String>, bool)> = BTreeMap::new();
        if !state_ids.is_empty() {
            let statement = match rule {
                RootRule::Settled => &st.root_status,
                RootRule::Orphan => &st.root_state,
            };
            for row in tx
                .query(statement, &[&state_ids, &state_executions])
                .await
                .context("reading engine root state")?
            {
                // Only ROOT_STATE (orphans) looks for a df row; an expired row's root has
                // its df row, locked by this batch.
                let has_df_row = rule == RootRule::Settled || row.get::<_, bool>(2);
                states.insert(row.get(0), (row.get(1), has_df_row));
            }
        }
        Ok::<_, Error>(states)
    };
    let (leased, states) = futures_util::future::try_join(read_leases, read_states).await?;
    let seen = TreesSeen {
        trees,
        locked,
        leased,
        states,
    };
    Ok(seen.clear(roots, bare_ids, rule, tally))
}

/// What a batch learnt of its trees by locking them.
#[derive(Debug, Default)]
struct TreesSeen {
    /// By root (or bare id that turned out to have an engine row): its members.
    trees: BTreeMap<String, Vec<String>>,
    /// Members this batch locked: their row address and current execution.
    locked: HashMap<String, (String, Option<i64>)>,
    /// Ids with a live lease (a dry run reads them here; a real pass as it deletes).
    leased: HashSet<String>,
    /// By root: its current execution's status and whether a df row has it.
    states: BTreeMap<String, (Option<String>, bool)>,
}

impl TreesSeen {
    /// The trees and bare ids that may go; every other root or bare id counted as skipped.
    fn clear(
        &self,
        roots: &[String],
        bare_ids: &[String],
        rule: RootRule,
        tally: &mut BatchTally,
    ) -> ClearedTrees {
        let Self {
            trees,
            locked,
            leased,
            states,
        } = self;
        let mut cleared = ClearedTrees::default();
        for root in roots {
            let Some(tree) = trees.get(root) else {
                // The engine record vanished since selection (another reconciler?): leave the
                // df row for the next pass rather than guess.
                tally.skipped_locked += 1;
                continue;
            };
            if tree
                .iter()
                .any(|id| !locked.contains_key(id) || leased.contains(id))
            {
                tally.skipped_locked += 1;
                continue;
            }
            let (status, has_df_row) = states
                .get(root)
                .map(|(s, d)| (s.as_deref().and_then(EngineStatus::parse), *d))
                .unwrap_or((None, false));
            if !rule.allows(status, has_df_row) {
                if rule == RootRule::Settled {
                    tally.skipped_unsettled += 1;
                }
                continue;
            }
            cleared.trees.insert(
                root.clone(),
                tree.iter()
                    .map(|id| (id.clone(), locked[id].0.clone()))
                    .collect(),
            );
            if let Some(s) = status {
                cleared.root_statuses.insert(root.clone(), s);
            }
        }
        for id in bare_ids {
            if trees.contains_key(id) {
                // The engine started it after all: it is not bare any more; next pass decides.
                tally.skipped_unsettled += 1;
            } else if leased.contains(id) {
                tally.skipped_locked += 1;
            } else {
                cleared.bare.insert(id.clone());
            }
        }
        cleared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A locked tree `root` -> `children`, its root at `status`, without a df row.
    fn seen_tree(seen: &mut TreesSeen, root: &str, children: &[&str], status: &str) {
        let members: Vec<String> = std::iter::once(root)
            .chain(children.iter().copied())
            .map(str::to_owned)
            .collect();
        for (i, m) in members.iter().enumerate() {
            seen.locked.insert(m.clone(), (format!("(0,{i})"), Some(1)));
        }
        seen.trees.insert(root.to_owned(), members);
        seen.states
            .insert(root.to_owned(), (Some(status.to_owned()), false));
    }

    #[test]
    fn a_whole_locked_settled_tree_is_cleared_with_its_addresses() {
        let mut seen = TreesSeen::default();
        seen_tree(&mut seen, "r", &["r::1::a", "r::1::b"], "Completed");
        let mut tally = BatchTally::default();
        let cleared = seen.clear(&ids(&["r"]), &[], RootRule::Settled, &mut tally);
        assert!(cleared.is_deletable("r"));
        assert!(
            !cleared.is_deletable("r::1::a"),
            "children go with their root only"
        );
        assert_eq!(cleared.children(), 2);
        assert_eq!(
            cleared.members(),
            [
                ("r".to_owned(), "(0,0)".to_owned()),
                ("r::1::a".to_owned(), "(0,1)".to_owned()),
                ("r::1::b".to_owned(), "(0,2)".to_owned()),
            ]
        );
        assert_eq!(cleared.root_statuses["r"], EngineStatus::Completed);
        assert_eq!((tally.skipped_locked, tally.skipped_unsettled), (0, 0));
    }

    #[test]
    fn a_tree_with_one_member_locked_elsewhere_or_leased_stays() {
        for leased in [false, true] {
            let mut seen = TreesSeen::default();
            seen_tree(&mut seen, "r", &["r::1::a"], "Completed");
            if leased {
                seen.leased.insert("r::1::a".to_owned());
            } else {
                seen.locked.remove("r::1::a");
            }
            let mut tally = BatchTally::default();
            let cleared = seen.clear(&ids(&["r"]), &[], RootRule::Settled, &mut tally);
            assert!(cleared.is_empty(), "leased: {leased}");
            assert_eq!(tally.skipped_locked, 1);
        }
    }

    #[test]
    fn a_root_gone_since_selection_is_skipped_not_guessed() {
        let mut tally = BatchTally::default();
        let cleared =
            TreesSeen::default().clear(&ids(&["gone"]), &[], RootRule::Orphan, &mut tally);
        assert!(cleared.is_empty());
        assert_eq!(tally.skipped_locked, 1);
    }

    #[test]
    fn a_running_or_unknown_root_stays_and_only_a_df_rows_root_counts_as_unsettled() {
        for status in ["Running", "Suspended"] {
            for (rule, unsettled) in [(RootRule::Settled, 1), (RootRule::Orphan, 0)] {
                let mut seen = TreesSeen::default();
                seen_tree(&mut seen, "r", &[], status);
                let mut tally = BatchTally::default();
                let cleared = seen.clear(&ids(&["r"]), &[], rule, &mut tally);
                assert!(cleared.is_empty(), "{status} {rule:?}");
                assert_eq!(tally.skipped_unsettled, unsettled, "{status} {rule:?}");
            }
        }
    }

    #[test]
    fn an_orphan_that_gained_a_df_row_stays() {
        assert!(RootRule::Orphan.allows(Some(EngineStatus::Failed), false));
        assert!(!RootRule::Orphan.allows(Some(EngineStatus::Failed), true));
        assert!(RootRule::Settled.allows(Some(EngineStatus::ContinuedAsNew), true));
        assert!(!RootRule::Settled.allows(None, true));
    }

    #[test]
    fn a_bare_id_goes_unless_the_engine_created_it_or_it_is_leased() {
        let mut seen = TreesSeen::default();
        seen_tree(&mut seen, "started", &[], "Running");
        seen.leased.insert("leased".to_owned());
        let mut tally = BatchTally::default();
        let cleared = seen.clear(
            &[],
            &ids(&["bare", "started", "leased"]),
            RootRule::Settled,
            &mut tally,
        );
        assert!(cleared.is_deletable("bare"));
        assert!(!cleared.is_deletable("started") && !cleared.is_deletable("leased"));
        assert_eq!(cleared.bare_rows(), [("bare".to_owned(), String::new())]);
        assert!(cleared.members().is_empty());
        assert_eq!((tally.skipped_unsettled, tally.skipped_locked), (1, 1));
    }

    #[test]
    fn a_lease_found_while_deleting_puts_back_the_whole_tree() {
        let mut seen = TreesSeen::default();
        seen_tree(&mut seen, "a", &["a::1::x"], "Completed");
        seen_tree(&mut seen, "b", &[], "Failed");
        let mut tally = BatchTally::default();
        let mut cleared = seen.clear(
            &ids(&["a", "b"]),
            &ids(&["bare"]),
            RootRule::Orphan,
            &mut tally,
        );
        let leased: HashSet<String> = ["a::1::x".to_owned(), "bare".to_owned()].into();
        assert_eq!(cleared.put_back_leased(&leased), 2);
        assert!(!cleared.is_deletable("a") && !cleared.is_deletable("bare"));
        assert!(cleared.is_deletable("b"));
        assert_eq!(cleared.root_statuses.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(
            cleared.put_back_leased(&leased),
            0,
            "nothing left to put back"
        );
    }
}
