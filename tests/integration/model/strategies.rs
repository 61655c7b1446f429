//! The proptest strategies: populations whose ages keep 30 minutes or more away from every
//! cutoff, and retention settings under which windows and the cap both bite.

use proptest::prelude::*;

use super::population::{
    Ago, DfStatus, EngineStatus, Orphan, Population, Retention, Workflow, DAY, HOUR,
};

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Whole days plus half a day: 12 h away from every whole-day cutoff.
pub(super) fn days_and_a_half(days: u64) -> Ago {
    Ago(days * DAY + DAY / 2)
}

/// Whole hours plus half an hour: 30 min away from every whole-hour cutoff.
pub(super) fn hours_and_a_half(hours: u64) -> Ago {
    Ago(hours * HOUR + HOUR / 2)
}

pub(super) fn df_status() -> impl Strategy<Value = DfStatus> {
    prop_oneof![
        Just(DfStatus::Completed),
        Just(DfStatus::Failed),
        Just(DfStatus::Cancelled),
        Just(DfStatus::Running),
        Just(DfStatus::Pending),
    ]
}

pub(super) fn engine_status() -> impl Strategy<Value = EngineStatus> {
    prop_oneof![
        Just(EngineStatus::Completed),
        Just(EngineStatus::Failed),
        Just(EngineStatus::ContinuedAsNew),
        Just(EngineStatus::Running),
    ]
}

pub(super) fn workflow() -> impl Strategy<Value = Workflow> {
    (
        df_status(),
        prop::option::weighted(0.85, engine_status()),
        // Mostly within reach of the windows (1..60 days), so that the cap matters too.
        prop_oneof![3 => 1u64..40, 1 => 1u64..400],
        prop::option::weighted(0.8, 0u64..=8),
        0i32..=2,
        // Mostly the fixture's default (children as their root); sometimes children that
        // outlive their ended root, or ended under a live one.
        prop::option::weighted(0.3, engine_status()),
    )
        .prop_map(|(df, engine, created, eighths, children, child)| Workflow {
            df,
            engine,
            created: days_and_a_half(created),
            // Between creation and now (inclusive): `eighths` of the way back to creation.
            finished: eighths.map(|k| days_and_a_half(created * k / 8)),
            children,
            child,
        })
}

/// Minutes to 400 days, on the half hour.
pub(super) fn orphan_age() -> impl Strategy<Value = Ago> {
    prop_oneof![
        (0u64..72).prop_map(hours_and_a_half),
        (0u64..400).prop_map(|d| hours_and_a_half(d * 24)),
    ]
}

pub(super) fn orphan() -> impl Strategy<Value = Orphan> {
    (
        engine_status(),
        orphan_age(),
        0u64..5,
        prop::option::weighted(0.85, Just(())),
        0i32..=2,
        prop::option::weighted(0.3, engine_status()),
    )
        .prop_map(
            |(engine, finished, ran_days, has_finish, children, child)| Orphan {
                engine,
                created: Ago(finished.0 + ran_days * DAY),
                finished: has_finish.map(|()| finished),
                children,
                child,
            },
        )
}

pub(super) fn retention() -> impl Strategy<Value = Retention> {
    let days = |d: u64| Ago(d * DAY);
    (
        1u64..=60,
        prop::option::of(1u64..=60),
        prop::option::of(1u64..=60),
        prop::option::of(1u64..=60),
        // Often below the number of terminal rows, so that the cap bites.
        prop_oneof![0u64..=30, 0u64..=10],
        1u64..=72,
        1u32..=10,
    )
        .prop_map(
            move |(window, completed, failed, cancelled, hard_cap, min_age, batch_size)| {
                Retention {
                    window: days(window),
                    completed: completed.map(days),
                    failed: failed.map(days),
                    cancelled: cancelled.map(days),
                    hard_cap,
                    orphan_min_age: Ago(min_age * HOUR),
                    batch_size,
                }
            },
        )
}

pub(super) fn population() -> impl Strategy<Value = Population> {
    (
        prop::collection::btree_map("[0-9a-f]{8}", workflow(), 0..40),
        prop::collection::btree_map("[0-9a-f]{8}", orphan(), 0..10),
        retention(),
    )
        .prop_filter("ids unique across df rows and orphans", |(w, o, _)| {
            o.keys().all(|id| !w.contains_key(id))
        })
        .prop_map(|(workflows, orphans, retention)| Population {
            workflows,
            orphans,
            retention,
        })
}
