//! Command lines that are usage errors: exit 2 with one message naming the culprit.

use super::{reconciler, run_all};

#[tokio::test]
async fn usage_errors_exit_2_with_one_message() {
    let mut cases = Vec::new();
    let mut needles = Vec::new();
    for (args, needle) in [
        (&["frobnicate"][..], "frobnicate"),
        (&["once", "--dry-rum"][..], "--dry-rum"),
        (&["--log-format", "xml", "check", "--offline"][..], "xml"),
        (&["history", "--limit", "many"][..], "many"),
        (&["check", "--offline", "--set", "nodot=1"][..], "nodot=1"),
        (
            &["check", "--offline", "--set", "pass.batch_size"][..],
            "pass.batch_size",
        ),
        (
            &["check", "--offline", "--set", "pass.batch_size=abc"][..],
            "pass.batch_size",
        ),
        (
            &["check", "--offline", "--set", "no_such.key=1"][..],
            "no_such",
        ),
    ] {
        cases.push((
            format!("df-reconciler {}", args.join(" ")),
            reconciler(args),
        ));
        needles.push(needle);
    }
    for (r, needle) in run_all(cases).await.iter().zip(needles) {
        r.usage_error(&[needle]);
    }
}
