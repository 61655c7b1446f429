//! Engine trees: expand roots into whole trees, lock every instance without waiting (the
//! same statement reads each one's current-execution status), and clear only trees that
//! are whole, locked and settled: every member Completed or Failed. For df rows the same
//! statement also says what the engine holds for each (nothing, a root, or a record that
//! is no root), which is where a df row is classified.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use deadpool_postgres::Transaction;

use super::deletes::Rows;
use super::expired::{classify, Verdict};
use super::statements::Statements;
use super::tally::BatchTally;
use crate::db::Exec;
use crate::error::{DbContext, Error};
use crate::policy::{tree_is_settled, EngineStatus};

/// Whose trees a batch clears: what a whole, locked tree must be, read after locking, to be
/// deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RootRule {
    /// A df row's engine tree: settled, every member (root and descendants) Completed or
    /// Failed. An unsettled tree is counted as such (`skipped_unsettled`), and so is a
    /// root that has not ended; an engine record that is no root is inconsistent
    /// (`skipped_inconsistent`). A df id without an engine record is bare.
    Settled,
    /// An orphan's: settled, and still without a df row. Otherwise simply kept.
    Orphan,
}

impl RootRule {
    /// Whether a whole, locked tree may go: `settled` (see [`tree_is_settled`]) and, for an
    /// orphan, `has_df_row` false.
    fn allows(self, settled: bool, has_df_row: bool) -> bool {
        settled && (self == RootRule::Settled || !has_df_row)
    }
}

/// A member of a tree as the locking statement returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    id: String,
    /// Its row address (ctid), by which a real pass deletes it, when this batch locked it.
    locked: Option<String>,
    /// Its current execution's status (None: unknown): for a locked member as the lock
    /// returned it, for another as the statement's snapshot showed it.
    status: Option<String>,
    /// It had a live lease when the trees were read (instance lock, queue item).
    leased: bool,
}

impl Member {
    fn status(&self) -> Option<&str> {
        self.status.as_deref()
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

    /// Every engine instance of the cleared trees and every bare id: all that has queue
    /// items to delete.
    pub(crate) fn members_and_bare_rows(&self) -> Rows {
        let mut rows = self.members();
        rows.extend(self.bare_rows());
        rows
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

    /// Keeps only the trees and bare ids whose df row `locked` has (the rest go back).
    /// Returns how many it put back.
    pub(crate) fn keep_locked(&mut self, locked: &HashMap<String, String>) -> u64 {
        let before = self.trees.len() + self.bare.len();
        self.trees.retain(|root, _| locked.contains_key(root));
        self.root_statuses
            .retain(|root, _| locked.contains_key(root));
        self.bare.retain(|id| locked.contains_key(id));
        (before - self.trees.len() - self.bare.len()) as u64
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

/// Expands `ids` into whole trees, locks every instance without waiting, and clears a
/// tree only when all its instances were locked and every one's current execution, read by
/// the locking statement, is Completed or Failed (settled), and, for an orphan, no df row
/// has its root after locking (`rule`). For df rows (`RootRule::Settled`) an id without an
/// engine record is bare, cleared unless a queue item carrying it is leased. Leases: a dry
/// run clears only trees and bare ids none of whose queue items or instance locks is
/// leased; a real pass learns of leases as it deletes ([`super::leases::delete_unleased`]).
pub(crate) async fn lock_trees(
    tx: &Transaction<'_>,
    st: &Statements,
    ids: &[String],
    rule: RootRule,
    tally: &mut BatchTally,
) -> Result<ClearedTrees, Error> {
    let mut seen = TreesSeen::default();
    if !ids.is_empty() {
        for row in tx
            .fetch_all(&st.lock_trees, &[&ids])
            .await
            .context("expanding and locking engine trees")?
        {
            let leased: bool = row.get(6);
            if !row.get::<_, bool>(5) {
                // No engine row (a bare df row, or a root gone since selection); a bare
                // df row's queue items may carry a lease.
                if leased {
                    seen.leased_bare.insert(row.get(1));
                }
                continue;
            }
            let root: String = row.get(0);
            let member = Member {
                id: row.get(1),
                locked: row.get::<_, bool>(2).then(|| row.get(3)),
                status: row.get(4),
                leased,
            };
            if member.id == root && !row.get::<_, bool>(7) {
                seen.not_roots.insert(root.clone());
            }
            seen.trees.entry(root).or_default().push(member);
        }
        // A tree is one whose root has an engine row; rows found under an id without one
        // (a corrupt parent link to a missing instance) are no tree of this batch's.
        seen.trees
            .retain(|root, members| members.iter().any(|m| m.id == *root));
    }
    // Orphan roots whose whole tree is locked and settled: an orphan's root may have
    // gained a df row.
    if rule == RootRule::Orphan {
        let df_row_ids: Vec<&String> = ids
            .iter()
            .filter(|r| {
                seen.trees.get(*r).is_some_and(|tree| {
                    tree.iter().all(|m| m.locked.is_some())
                        && tree_is_settled(tree.iter().map(Member::status))
                })
            })
            .collect();
        if !df_row_ids.is_empty() {
            seen.with_df_row = tx
                .fetch_all(&st.orphans_with_df_row, &[&df_row_ids])
                .await
                .context("looking for df rows of orphan roots")?
                .iter()
                .map(|r| r.get(0))
                .collect();
        }
    }
    Ok(seen.clear(ids, rule, tally))
}

/// What a batch learnt of its trees by locking them.
#[derive(Debug, Default, Clone)]
struct TreesSeen {
    /// By given id with an engine row: its members, itself included.
    trees: BTreeMap<String, Vec<Member>>,
    /// Given ids without an engine row whose queue items had a live lease.
    leased_bare: HashSet<String>,
    /// Orphan roots that a df row has (read after locking; empty for df rows' trees).
    with_df_row: HashSet<String>,
    /// Given ids whose engine record is no root (a parent, or a child-shaped id).
    not_roots: HashSet<String>,
}

impl TreesSeen {
    /// The trees and bare ids that may go; every other id counted as skipped.
    fn clear(self, ids: &[String], rule: RootRule, tally: &mut BatchTally) -> ClearedTrees {
        let Self {
            mut trees,
            leased_bare,
            with_df_row,
            not_roots,
        } = self;
        let mut cleared = ClearedTrees::default();
        for root in ids {
            let Some(tree) = trees.remove(root) else {
                if rule == RootRule::Settled && !leased_bare.contains(root) {
                    // A df row without an engine record: only its queue items go with it.
                    cleared.bare.insert(root.clone());
                } else {
                    // A leased bare id; or an orphan whose engine record vanished since
                    // selection (another reconciler?): left for the next pass.
                    tally.skipped_locked += 1;
                }
                continue;
            };
            let root_status = tree.iter().find(|m| m.id == *root).and_then(Member::status);
            if rule == RootRule::Settled {
                match classify(true, !not_roots.contains(root), root_status) {
                    Verdict::Inconsistent => {
                        tally.skipped_inconsistent += 1;
                        continue;
                    }
                    Verdict::Unsettled => {
                        tally.skipped_unsettled += 1;
                        continue;
                    }
                    Verdict::Lock => {}
                }
            }
            let settled = tree_is_settled(tree.iter().map(Member::status));
            if tree.iter().any(|m| m.locked.is_none() || m.leased) {
                // Never locked because a member had not ended (and none was leased):
                // unsettled. Leased, or held by another session: locked.
                if tree.iter().any(|m| m.leased) || settled {
                    tally.skipped_locked += 1;
                } else if rule == RootRule::Settled {
                    tally.skipped_unsettled += 1;
                }
                continue;
            }
            // Every member, not the root alone: a root can end while children still run.
            if !rule.allows(settled, with_df_row.contains(root)) {
                if rule == RootRule::Settled {
                    tally.skipped_unsettled += 1;
                }
                continue;
            }
            if let Some(s) = root_status.and_then(EngineStatus::parse) {
                cleared.root_statuses.insert(root.clone(), s);
            }
            cleared.trees.insert(
                root.clone(),
                tree.into_iter()
                    .map(|m| (m.id, m.locked.unwrap_or_default()))
                    .collect(),
            );
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

    /// A locked tree: `members` (root first), each with its current execution's status.
    fn seen_members(seen: &mut TreesSeen, members: &[(&str, Option<&str>)]) {
        seen.trees.insert(
            members[0].0.to_owned(),
            members
                .iter()
                .enumerate()
                .map(|(i, (id, status))| Member {
                    id: (*id).to_owned(),
                    locked: Some(format!("(0,{i})")),
                    status: status.map(str::to_owned),
                    leased: false,
                })
                .collect(),
        );
    }

    /// The member `id` of the tree of `root`.
    fn member<'s>(seen: &'s mut TreesSeen, root: &str, id: &str) -> &'s mut Member {
        seen.trees
            .get_mut(root)
            .and_then(|tree| tree.iter_mut().find(|m| m.id == id))
            .expect("a member")
    }

    /// A locked tree `root` -> `children`, every member at `status`.
    fn seen_tree(seen: &mut TreesSeen, root: &str, children: &[&str], status: &str) {
        let members: Vec<(&str, Option<&str>)> = std::iter::once(root)
            .chain(children.iter().copied())
            .map(|id| (id, Some(status)))
            .collect();
        seen_members(seen, &members);
    }

    #[test]
    fn a_whole_locked_settled_tree_is_cleared_with_its_addresses() {
        let mut seen = TreesSeen::default();
        seen_members(
            &mut seen,
            &[
                ("r", Some("Completed")),
                ("r::1::a", Some("Failed")),
                ("r::1::b", Some("Completed")),
            ],
        );
        let mut tally = BatchTally::default();
        let cleared = seen.clear(&ids(&["r"]), RootRule::Settled, &mut tally);
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
                member(&mut seen, "r", "r::1::a").leased = true;
            } else {
                // Another session holds it: the statement saw it ended but could not lock it.
                member(&mut seen, "r", "r::1::a").locked = None;
            }
            let mut tally = BatchTally::default();
            let cleared = seen.clear(&ids(&["r"]), RootRule::Settled, &mut tally);
            assert!(cleared.is_empty(), "leased: {leased}");
            assert_eq!(tally.skipped_locked, 1);
        }
    }

    #[test]
    fn a_tree_left_unlocked_because_a_member_still_runs_counts_as_unsettled() {
        let mut seen = TreesSeen::default();
        seen_members(
            &mut seen,
            &[("r", Some("Completed")), ("r::1::a", Some("Running"))],
        );
        for id in ["r", "r::1::a"] {
            member(&mut seen, "r", id).locked = None;
        }
        let mut tally = BatchTally::default();
        let cleared = seen
            .clone()
            .clear(&ids(&["r"]), RootRule::Settled, &mut tally);
        assert!(cleared.is_empty());
        assert_eq!((tally.skipped_locked, tally.skipped_unsettled), (0, 1));
        // Leased as well: the lease is what keeps it this pass.
        member(&mut seen, "r", "r::1::a").leased = true;
        let mut tally = BatchTally::default();
        seen.clear(&ids(&["r"]), RootRule::Settled, &mut tally);
        assert_eq!((tally.skipped_locked, tally.skipped_unsettled), (1, 0));
    }

    #[test]
    fn a_root_gone_since_selection_is_skipped_not_guessed() {
        let mut tally = BatchTally::default();
        let cleared = TreesSeen::default().clear(&ids(&["gone"]), RootRule::Orphan, &mut tally);
        assert!(cleared.is_empty());
        assert_eq!(tally.skipped_locked, 1);
    }

    #[test]
    fn a_live_or_unknown_root_stays_and_only_a_df_rows_root_counts_as_unsettled() {
        for status in ["Running", "ContinuedAsNew", "Suspended"] {
            for (rule, unsettled) in [(RootRule::Settled, 1), (RootRule::Orphan, 0)] {
                let mut seen = TreesSeen::default();
                seen_tree(&mut seen, "r", &[], status);
                let mut tally = BatchTally::default();
                let cleared = seen.clear(&ids(&["r"]), rule, &mut tally);
                assert!(cleared.is_empty(), "{status} {rule:?}");
                assert_eq!(tally.skipped_unsettled, unsettled, "{status} {rule:?}");
            }
        }
    }

    #[test]
    fn an_ended_root_with_a_child_live_or_unknown_keeps_its_whole_tree() {
        // A RACE's loser still running, a child loop between generations, a status we do
        // not know, a current execution that is not there.
        for child in [
            Some("Running"),
            Some("ContinuedAsNew"),
            Some("Suspended"),
            None,
        ] {
            for root in ["Completed", "Failed"] {
                for (rule, unsettled) in [(RootRule::Settled, 1), (RootRule::Orphan, 0)] {
                    let mut seen = TreesSeen::default();
                    seen_members(
                        &mut seen,
                        &[
                            ("r", Some(root)),
                            ("r::1::a", Some("Completed")),
                            ("r::1::a::1::b", child),
                        ],
                    );
                    // Another tree in the same batch is not held back by it.
                    seen_tree(&mut seen, "s", &["s::1::a"], "Failed");
                    let mut tally = BatchTally::default();
                    let cleared = seen.clear(&ids(&["r", "s"]), rule, &mut tally);
                    assert!(!cleared.is_deletable("r"), "{root} {child:?} {rule:?}");
                    assert!(cleared.is_deletable("s"), "{root} {child:?} {rule:?}");
                    assert!(
                        cleared.members().iter().all(|(id, _)| id.starts_with('s')),
                        "no member of the unsettled tree goes: {:?}",
                        cleared.members()
                    );
                    assert_eq!(
                        tally.skipped_unsettled, unsettled,
                        "{root} {child:?} {rule:?}"
                    );
                    assert_eq!(tally.skipped_locked, 0);
                }
            }
        }
    }

    #[test]
    fn a_tree_goes_only_settled_and_an_orphan_only_without_a_df_row() {
        assert!(RootRule::Settled.allows(true, true));
        assert!(!RootRule::Settled.allows(false, true));
        assert!(RootRule::Orphan.allows(true, false));
        assert!(!RootRule::Orphan.allows(true, true));
        assert!(!RootRule::Orphan.allows(false, false));
    }

    #[test]
    fn an_orphan_that_gained_a_df_row_stays() {
        let mut seen = TreesSeen::default();
        seen_tree(&mut seen, "r", &["r::1::a"], "Failed");
        seen.with_df_row.insert("r".to_owned());
        let mut tally = BatchTally::default();
        let cleared = seen.clear(&ids(&["r"]), RootRule::Orphan, &mut tally);
        assert!(cleared.is_empty());
        assert_eq!((tally.skipped_locked, tally.skipped_unsettled), (0, 0));
    }

    #[test]
    fn a_df_id_without_an_engine_record_is_bare_unless_leased() {
        let mut seen = TreesSeen::default();
        seen_tree(&mut seen, "started", &[], "Running");
        seen.leased_bare.insert("leased".to_owned());
        let mut tally = BatchTally::default();
        let cleared = seen.clone().clear(
            &ids(&["bare", "started", "leased"]),
            RootRule::Settled,
            &mut tally,
        );
        assert!(cleared.is_deletable("bare"));
        assert!(!cleared.is_deletable("started") && !cleared.is_deletable("leased"));
        assert_eq!(cleared.bare_rows(), [("bare".to_owned(), String::new())]);
        assert!(cleared.members().is_empty());
        assert_eq!((tally.skipped_unsettled, tally.skipped_locked), (1, 1));
        // An orphan never is bare: without an engine row it is left for the next pass.
        let mut tally = BatchTally::default();
        let cleared = seen.clear(&ids(&["bare"]), RootRule::Orphan, &mut tally);
        assert!(cleared.is_empty());
        assert_eq!(tally.skipped_locked, 1);
    }

    #[test]
    fn a_df_row_whose_engine_record_is_no_root_is_inconsistent_even_settled() {
        let mut seen = TreesSeen::default();
        seen_tree(&mut seen, "p::1::c", &[], "Completed");
        seen.not_roots.insert("p::1::c".to_owned());
        seen_tree(&mut seen, "r", &[], "Completed");
        let mut tally = BatchTally::default();
        let cleared = seen.clear(&ids(&["p::1::c", "r"]), RootRule::Settled, &mut tally);
        assert!(!cleared.is_deletable("p::1::c"));
        assert!(cleared.is_deletable("r"));
        assert_eq!(
            (
                tally.skipped_inconsistent,
                tally.skipped_unsettled,
                tally.skipped_locked
            ),
            (1, 0, 0)
        );
    }

    /// Two settled trees, `a` (with a child) and `b`, and the bare id `bare`, all cleared.
    fn two_trees_and_a_bare_id() -> ClearedTrees {
        let mut seen = TreesSeen::default();
        seen_tree(&mut seen, "a", &["a::1::x"], "Completed");
        seen_tree(&mut seen, "b", &[], "Failed");
        let mut tally = BatchTally::default();
        seen.clear(&ids(&["a", "b", "bare"]), RootRule::Settled, &mut tally)
    }

    #[test]
    fn a_tree_whose_df_row_was_not_locked_goes_back() {
        let mut cleared = two_trees_and_a_bare_id();
        let locked: HashMap<String, String> = [("b".to_owned(), "(0,1)".to_owned())].into();
        assert_eq!(cleared.keep_locked(&locked), 2);
        assert!(!cleared.is_deletable("a") && !cleared.is_deletable("bare"));
        assert!(cleared.is_deletable("b"));
        assert_eq!(cleared.members(), [("b".to_owned(), "(0,0)".to_owned())]);
        assert_eq!(cleared.root_statuses.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn a_lease_found_while_deleting_puts_back_the_whole_tree() {
        let mut cleared = two_trees_and_a_bare_id();
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
