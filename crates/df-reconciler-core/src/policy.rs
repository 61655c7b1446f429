//! Pure decisions, testable without a database.
//!
//! The SQL in [`crate::sql`] encodes the same rules set-wise; tests check that both agree.

use std::fmt;

/// Terminal statuses of a df.instances row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TerminalStatus {
    /// The workflow finished successfully (`completed`).
    Completed,
    /// The workflow ended with an error (`failed`).
    Failed,
    /// The workflow was cancelled (`cancelled`).
    Cancelled,
}

impl TerminalStatus {
    /// Every terminal status, for per-status windows and report rows.
    pub const ALL: [TerminalStatus; 3] = [Self::Completed, Self::Failed, Self::Cancelled];

    /// The status as stored in `df.instances.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The terminal status of a `df.instances.status` value; None for live statuses.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TerminalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of an engine execution (`executions.status`). An instance's status is the status
/// of its current execution (`instances.current_execution_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineStatus {
    /// The engine may still write to the instance: never deleted.
    Running,
    /// Finished successfully.
    Completed,
    /// Ended with an error (a cancelled orchestration ends Failed too).
    Failed,
    /// A finished generation of a live instance: the next one is queued (every root LOOP
    /// passes through it once per iteration). Its completed_at is NULL. As the current
    /// execution it means the instance is between generations: live, never deleted.
    ContinuedAsNew,
}

impl EngineStatus {
    /// The status of an `executions.status` value; None for anything unknown.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Running" => Some(Self::Running),
            "Completed" => Some(Self::Completed),
            "Failed" => Some(Self::Failed),
            "ContinuedAsNew" => Some(Self::ContinuedAsNew),
            _ => None,
        }
    }

    /// A terminal engine instance: its current execution `s` is Completed or Failed, so
    /// the engine will not write to it again on its own. Running and ContinuedAsNew (between
    /// generations) are live; so is any status string we do not know: never delete what we
    /// do not understand.
    pub fn is_terminal(s: &str) -> bool {
        matches!(Self::parse(s), Some(Self::Completed | Self::Failed))
    }
}

/// Settled: every member of an engine tree (the root and all its descendants) is a terminal
/// engine instance, given the status of each member's current execution (None: unknown,
/// e.g. no such execution). A root can end while children still run (a RACE's loser, the
/// children of a failed root): such a tree is not settled until every child has ended.
/// No member at all (no engine tree) is settled.
pub fn tree_is_settled<'a>(member_statuses: impl IntoIterator<Item = Option<&'a str>>) -> bool {
    member_statuses
        .into_iter()
        .all(|s| s.is_some_and(EngineStatus::is_terminal))
}

/// True when an engine instance id has the shape of a sub-orchestration:
/// composed `{parent}::{execution}::{node}` (any depth), legacy `sub::{n}` or `…::sub::…`.
/// Must agree with `crate::sql::engine::CHILD_SHAPE`.
pub fn has_child_shape(id: &str) -> bool {
    if id.starts_with("sub::") || id.contains("::sub::") {
        return true;
    }
    // `::<one or more ASCII digits>::` anywhere in the id.
    let bytes = id.as_bytes();
    let mut start = 0;
    while let Some(pos) = id[start..].find("::") {
        let digits_from = start + pos + 2;
        let digits = bytes[digits_from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 && id[digits_from + digits..].starts_with("::") {
            return true;
        }
        start += pos + 1;
    }
    false
}

/// An engine instance is a root only when both tests agree: no parent, and not child-shaped.
pub fn is_engine_root(id: &str, parent_instance_id: Option<&str>) -> bool {
    parent_instance_id.is_none() && !has_child_shape(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn child_shapes() {
        for child in [
            "3f9a0c7e::1::b41d92aa",
            "3f9a0c7e::1::b41d92aa::2::c0ffee00",
            "sub::1",
            "3f9a0c7e::sub::4",
            "a::12::b",
            "::1::",
        ] {
            assert!(has_child_shape(child), "{child}");
        }
        for root in [
            "3f9a0c7e", "a::b", "a::x1::b", "a:1:b", "subway", "a::1", "x::sub", "", "::::",
        ] {
            assert!(!has_child_shape(root), "{root}");
        }
    }

    #[test]
    fn only_completed_and_failed_are_terminal() {
        for terminal in ["Completed", "Failed"] {
            assert!(EngineStatus::is_terminal(terminal), "{terminal}");
        }
        // Between generations is live; unknown (or differently spelt) means live too.
        for live in ["Running", "ContinuedAsNew", "Suspended", "completed", ""] {
            assert!(!EngineStatus::is_terminal(live), "{live}");
        }
    }

    #[test]
    fn a_tree_is_settled_only_when_every_member_ended() {
        assert!(tree_is_settled([Some("Completed")]));
        assert!(tree_is_settled([
            Some("Failed"),
            Some("Completed"),
            Some("Failed")
        ]));
        assert!(tree_is_settled([]), "no engine tree at all");
        // An ended root whose child still runs or is between generations (a RACE's loser,
        // the children of a failed root), or whose child's status is unknown.
        for child in [
            Some("Running"),
            Some("ContinuedAsNew"),
            Some("Suspended"),
            None,
        ] {
            assert!(
                !tree_is_settled([Some("Completed"), Some("Completed"), child]),
                "{child:?}"
            );
        }
        assert!(!tree_is_settled([
            Some("ContinuedAsNew"),
            Some("Completed")
        ]));
    }

    #[test]
    fn roots_need_both_tests() {
        assert!(is_engine_root("3f9a0c7e", None));
        assert!(!is_engine_root("3f9a0c7e", Some("00000000")));
        assert!(!is_engine_root("3f9a0c7e::1::aa", None));
    }

    proptest! {
        #[test]
        fn composed_ids_are_children(parent in "[0-9a-f]{8}", exec in 1u32..1000, node in "[0-9a-f]{8}") {
            let child = format!("{parent}::{exec}::{node}");
            prop_assert!(has_child_shape(&child));
            let grandchild = format!("{child}::2::{node}");
            prop_assert!(has_child_shape(&grandchild));
            prop_assert!(!has_child_shape(&parent));
        }

        #[test]
        fn never_panics(id in "\\PC{0,24}") {
            let _ = has_child_shape(&id);
        }
    }
}
