//! The shipped configurations and the configuration reference: every TOML file under
//! deploy/ and the Kubernetes ConfigMap's passes `check --offline` and listens where it
//! should; docs/CONFIGURATION.md lists exactly the keys of `Config`.

use std::collections::BTreeSet;

use df_reconciler_core::config::Config;
use serde_json::Value;

use super::{assert_check_offline, configmap_toml, files_under, load_config, read, repo};

#[tokio::test]
async fn every_shipped_configuration_passes_check_offline() {
    let mut files = Vec::new();
    files_under(&repo().join("deploy"), ".toml", &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    for expected in [
        "deploy/compose/config.toml",
        "deploy/docker/config.toml",
        "deploy/systemd/config.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for file in &files {
        assert_check_offline(file).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let configmap = dir.path().join("configmap.toml");
    std::fs::write(&configmap, configmap_toml()).unwrap();
    assert_check_offline(&configmap).await;

    // Inside a container the endpoints must be reachable from outside; on a host, not.
    for (file, listen) in [
        (repo().join("deploy/docker/config.toml"), "0.0.0.0:9187"),
        (repo().join("deploy/compose/config.toml"), "0.0.0.0:9187"),
        (configmap.clone(), "0.0.0.0:9187"),
        (repo().join("deploy/systemd/config.toml"), "127.0.0.1:9187"),
    ] {
        assert_eq!(load_config(&file).http.listen, listen, "{}", file.display());
    }
}

/// `section.key` paths of a serialized configuration (None options serialize as null and
/// count as keys).
fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                key_paths(inner, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_of_config() {
    let mut in_code = BTreeSet::new();
    key_paths(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut in_code,
    );
    assert!(in_code.contains("database.url") && in_code.contains("tls.ca_file"));
    // Rows of the reference tables: | `section.key` | type | default | meaning |
    let doc = read("docs/CONFIGURATION.md");
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .filter(|key| key.contains('.'))
        .collect();
    let missing: Vec<&String> = in_code.difference(&documented).collect();
    let stale: Vec<&String> = documented.difference(&in_code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/CONFIGURATION.md is out of date.\nundocumented keys: {missing:?}\ndocumented keys that do not exist: {stale:?}"
    );
}
