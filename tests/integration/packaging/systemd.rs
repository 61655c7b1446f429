//! The systemd units: the daemon and the oneshot service with its timer, hardened,
//! wired to the credentials and the configuration, and stopping after a batch; verified
//! by `systemd-analyze` where it exists.

use std::collections::BTreeMap;
use std::process::Command;

use super::{duration, load_config, output_text, read, repo, which, CONFIG_PATH};
use crate::support::process::run;

/// A unit file as section -> key -> values (a key may repeat).
fn unit(relative: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(relative).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{relative}: {line}"));
        sections
            .entry(section.clone())
            .or_default()
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    sections
}

/// Every hardening directive of both services, with its value.
const HARDENING: &[(&str, &str)] = &[
    ("DynamicUser", "yes"),
    ("UMask", "0077"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("NoNewPrivileges", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallFilter", "~@privileged @resources"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
];

#[tokio::test]
async fn systemd_units_are_hardened_and_wired() {
    let statement_timeout = load_config(&repo().join("deploy/systemd/config.toml"))
        .pass
        .statement_timeout;
    for (file, exec, kind) in [
        ("deploy/systemd/df-reconciler.service", " run", "notify"),
        (
            "deploy/systemd/df-reconciler-once.service",
            " once --json",
            "oneshot",
        ),
    ] {
        let service = &unit(file)["Service"];
        let one = |key: &str| -> &str {
            let values = service
                .get(key)
                .unwrap_or_else(|| panic!("{file}: no {key}"));
            values.last().unwrap()
        };
        assert_eq!(one("Type"), kind, "{file}");
        assert_eq!(
            one("ExecStart"),
            format!("/usr/local/bin/df-reconciler{exec}"),
            "{file}"
        );
        assert_eq!(
            one("LoadCredential"),
            "dsn:/etc/df-reconciler/dsn",
            "{file}"
        );
        let env = &service["Environment"];
        assert!(
            env.contains(&"DF_RECONCILER__DATABASE__URL_FILE=%d/dsn".to_owned()),
            "{file}"
        );
        assert!(
            env.contains(&format!("DF_RECONCILER_CONFIG={CONFIG_PATH}")),
            "{file}"
        );
        assert_eq!(one("KillSignal"), "SIGTERM", "{file}");
        assert!(
            duration(one("TimeoutStopSec")) > statement_timeout * 2,
            "{file}: stopping outlasts a batch"
        );
        for (key, value) in HARDENING {
            assert!(
                service
                    .get(*key)
                    .is_some_and(|values| values.iter().any(|v| v == value)),
                "{file}: {key}={value}"
            );
        }
    }
    let daemon = &unit("deploy/systemd/df-reconciler.service")["Service"];
    assert_eq!(daemon["Restart"], ["on-failure"]);
    assert!(daemon.contains_key("WatchdogSec"));
    assert_eq!(daemon["ExecReload"], ["/bin/kill -HUP $MAINPID"]);
    let timer = unit("deploy/systemd/df-reconciler-once.timer");
    assert_eq!(timer["Timer"]["Unit"], ["df-reconciler-once.service"]);
    assert!(timer["Timer"].contains_key("OnCalendar"));
    assert_eq!(timer["Install"]["WantedBy"], ["timers.target"]);

    // Where systemd's own tools exist, they verify the units too (with this build's binary
    // standing in for /usr/local/bin/df-reconciler).
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("note: systemd-analyze not found; the systemd-analyze verify/security checks were skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in [
        "df-reconciler.service",
        "df-reconciler-once.service",
        "df-reconciler-once.timer",
    ] {
        let content = read(&format!("deploy/systemd/{name}")).replace(
            "/usr/local/bin/df-reconciler",
            env!("CARGO_BIN_EXE_df-reconciler"),
        );
        std::fs::write(dir.path().join(name), content).unwrap();
        units.push(dir.path().join(name));
    }
    let mut cmd = Command::new(&analyze);
    cmd.args(["verify", "--man=no"]).args(&units);
    let out = run(cmd).await;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        output_text(&out)
    );
    for service in &units[..2] {
        let mut cmd = Command::new(&analyze);
        // In tenths: an overall exposure of at most 2.0 out of 10.
        cmd.args(["security", "--offline=yes", "--threshold=20"])
            .arg(service);
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "exposure above 2 of 10: {}",
            output_text(&out)
        );
    }
}
