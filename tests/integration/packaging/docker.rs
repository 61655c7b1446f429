//! The Dockerfile: a locked build, an unprivileged runtime with the operator contract
//! (entrypoint, signal, port, configuration), and a build context (.dockerignore) that
//! holds everything the build copies or the sources embed.

use std::path::Path;
use std::process::Command;

use super::{files_under, output_text, read, repo, CONFIG_PATH, HTTP_PORT};
use crate::support::process::run;

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((op.to_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The `.dockerignore` allowlist: `*`, then `!path` for everything the build may see.
fn docker_context_allows(path: &str) -> bool {
    let ignore = read(".dockerignore");
    let mut lines = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    assert_eq!(
        lines.next(),
        Some("*"),
        ".dockerignore starts by excluding everything"
    );
    assert!(
        lines.all(|l| l.starts_with('!')),
        ".dockerignore is an allowlist: `*`, then `!path` lines"
    );
    ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .any(|allowed| path == allowed || path.starts_with(&format!("{allowed}/")))
}

#[tokio::test]
async fn dockerfile_builds_locked_and_runs_unprivileged_with_the_contract() {
    let steps = dockerfile();
    let all = |op: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let froms = all("FROM");
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        froms[0].starts_with("rust:") && froms[0].contains("-bookworm AS build"),
        "{froms:?}"
    );
    assert_eq!(froms[1], "gcr.io/distroless/cc-debian12:nonroot");
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the build is --locked"
    );
    assert_eq!(all("ENTRYPOINT"), [r#"["/usr/local/bin/df-reconciler"]"#]);
    assert_eq!(all("CMD"), [r#"["run"]"#]);
    assert_eq!(all("STOPSIGNAL"), ["SIGTERM"]);
    assert_eq!(all("EXPOSE"), [HTTP_PORT.to_string()]);
    assert_eq!(all("ENV"), [format!("DF_RECONCILER_CONFIG={CONFIG_PATH}")]);
    let user = all("USER");
    let uid: u32 = user[0]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric user");
    assert_ne!(uid, 0, "never root");
    // The runtime stage ships the binary where ENTRYPOINT looks, and a configuration at
    // DF_RECONCILER_CONFIG (the file must exist: a missing --config file is an error).
    let copies = all("COPY");
    assert!(copies
        .iter()
        .any(|c| c.starts_with("--from=build") && c.ends_with(" /usr/local/bin/df-reconciler")));
    assert!(copies
        .iter()
        .any(|c| *c == format!("deploy/docker/config.toml {CONFIG_PATH}")));

    // Everything the build stage copies is in the build context, and so is every file the
    // sources embed (include_str!/include_bytes!), or the image would not build.
    for copy in copies.iter().filter(|c| !c.starts_with("--")) {
        let sources: Vec<&str> = copy.split_whitespace().collect();
        for source in &sources[..sources.len() - 1] {
            assert!(repo().join(source).exists(), "COPY {source}: missing");
            assert!(
                docker_context_allows(source),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }
    let mut sources = Vec::new();
    files_under(&repo().join("crates"), ".rs", &mut sources);
    let mut embedded = 0;
    for file in sources {
        let code = std::fs::read_to_string(&file).unwrap();
        for macro_call in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in code.match_indices(macro_call) {
                let literal = &code[at + macro_call.len()..];
                let literal = &literal[..literal.find('"').unwrap()];
                let target = file
                    .parent()
                    .unwrap()
                    .join(literal)
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{}: {literal}: {e}", file.display()));
                let relative = target.strip_prefix(repo()).unwrap().display().to_string();
                assert!(
                    docker_context_allows(&relative),
                    "{} embeds {relative}, which .dockerignore keeps out of the build",
                    file.display()
                );
                embedded += 1;
            }
        }
    }
    assert!(embedded >= 3, "the fixture SQL at least");

    // The context alone resolves with --locked (what `cargo build --locked` does first).
    let context = tempfile::tempdir().unwrap();
    for entry in ["Cargo.toml", "Cargo.lock", "crates", "migrations"] {
        assert!(docker_context_allows(entry));
        copy_tree(&repo().join(entry), &context.path().join(entry));
    }
    // The resolve covers every platform, but only the packages of this host's target can
    // be counted on in cargo's cache (a fresh cargo home downloaded only those), so the
    // package download is limited to this host: the lock file is still checked whole.
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host_target().await])
        .current_dir(context.path());
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", output_text(&out));
}

/// The target triple cargo builds for on this host (`rustc -vV`'s `host:` line).
async fn host_target() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("-vV");
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_owned()
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else if from.exists() {
        std::fs::copy(from, to).unwrap();
    }
}
