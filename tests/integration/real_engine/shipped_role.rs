//! The documented least-privilege setup on the real engine: `deploy/sql/reconciler-role.sql`
//! applied as a superuser, then, as that role, `check`, `migrate`, `run` with
//! `audit.record_deletions`, and `history`: an expired workflow goes from both stores, is
//! recorded in the audit trail, and live work is untouched.

use std::time::Duration;

use super::{
    age, bystander, completes_normally, engine_or_skip, live_deletions, start, wait_ended,
};
use crate::support::db::{exec, rows_of};
use crate::support::process::{daemon, first_pass_of_run, run, text};
use crate::support::role::{apply_role_sql, dsn_as};

const DAY: f64 = 86_400.0;
const FINISH: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_shipped_role_runs_the_documented_setup_on_the_real_engine() {
    let engine = engine_or_skip!();
    let c = engine.client().await;
    let expired = start(&c, "'SELECT 1 AS one'", "shipped-role-expired").await;
    wait_ended(&c, &expired, "completed", FINISH).await;
    age(&c, &expired, 40.0 * DAY).await;
    let live = bystander(&c, 5).await;
    // A cluster of its own: the role can have the shipped name.
    apply_role_sql(&c, "df_reconciler", "_duroxide").await;
    // The tier's guard triggers run as the deleting role and write to test_guard.
    exec(
        &c,
        "GRANT USAGE ON SCHEMA test_guard TO df_reconciler;
         GRANT INSERT ON ALL TABLES IN SCHEMA test_guard TO df_reconciler",
    )
    .await;
    let as_role = dsn_as(&engine.dsn, "df_reconciler");

    for args in [&["check"][..], &["once", "--dry-run"], &["migrate"]] {
        let mut cmd = daemon(&as_role);
        cmd.args(args);
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            !text(&out.stdout).contains("problem:"),
            "{}",
            text(&out.stdout)
        );
    }
    let ran = first_pass_of_run(daemon(&as_role)).await;
    assert_eq!(ran, "[\"run\"]: first pass ok, exit status: 0");

    let mut history = daemon(&as_role);
    history.args(["history", "--json"]);
    let out = run(history).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"instances_removed\":1"),
        "{}",
        text(&out.stdout)
    );
    let recorded: Vec<String> = c
        .query("SELECT instance_id FROM df_reconciler.deletions", &[])
        .await
        .expect("the audit trail's deletions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, std::slice::from_ref(&expired));
    assert_eq!(rows_of(&c, &expired).await, 0);
    completes_normally(&c, &live).await;
    assert_eq!(live_deletions(&c).await, Vec::<String>::new());
}
