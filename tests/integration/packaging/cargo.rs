//! The workspace as the README uses it.

use std::process::Command;

use serde_json::Value;

use super::{output_text, read, repo, text};

/// The README's first command, `cargo run --release -- demo`, must mean the daemon: with the
/// benchmark a second binary of the workspace, a plain `cargo run` refuses to choose unless
/// the workspace's default members are the daemon's package alone.
#[test]
fn the_readme_cargo_run_means_the_daemon() {
    assert!(read("README.md").contains("\ncargo run --release -- demo\n"));
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", output_text(&out));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let defaults = meta["workspace_default_members"]
        .as_array()
        .expect("workspace_default_members");
    let packages = meta["packages"].as_array().expect("packages");
    let default_packages: Vec<&Value> = packages
        .iter()
        .filter(|p| defaults.contains(&p["id"]))
        .collect();
    let names: Vec<&str> = default_packages.iter().map(|p| text(p, "/name")).collect();
    assert_eq!(names, ["df-reconciler"]);
    let binaries: Vec<&str> = default_packages[0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&Value::from("bin")))
        })
        .map(|t| text(t, "/name"))
        .collect();
    assert_eq!(binaries, ["df-reconciler"]);
}
