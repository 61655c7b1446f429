//! The Kubernetes manifests: a hardened Deployment (and the CronJob alternative) that
//! mounts the ConfigMap and the DSN secret where the configuration expects them, probes on
//! the image's port, a scrapeable Service; built by `kubectl kustomize` where it exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use df_reconciler_core::config::Config;
use serde_json::Value;

use super::{
    configmap_toml, files_under, load_config, output_text, read, repo, text, which, yaml,
    CONFIG_PATH, HTTP_PORT,
};
use crate::support::process::run;

/// Checks a pod template: security context, configuration and DSN mounts; returns the
/// container.
fn check_pod(what: &str, pod: &Value, toml: &Config) -> Value {
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{what}");
    assert_eq!(
        text(spec, "/securityContext/seccompProfile/type"),
        "RuntimeDefault",
        "{what}"
    );
    assert_eq!(spec["automountServiceAccountToken"], false, "{what}");
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{what}");
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{what}");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{what}"
    );
    assert_eq!(text(sc, "/seccompProfile/type"), "RuntimeDefault", "{what}");
    assert!(c["resources"]["requests"].is_object(), "{what}: resources");
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "{what}: memory limit"
    );

    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (text(e, "/name"), text(e, "/value")))
        .collect();
    assert_eq!(env["DF_RECONCILER_CONFIG"], CONFIG_PATH, "{what}");
    assert!(
        !env.keys().any(|k| k.contains("DATABASE__URL")),
        "{what}: the DSN comes from the mounted secret, not the environment"
    );
    // Mounts: the ConfigMap's config.toml at CONFIG_PATH, the Secret's dsn at url_file.
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (text(v, "/name"), v))
        .collect();
    let mounted_at = |source: &str, name: &str| -> String {
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                let volume = volumes[text(m, "/name")];
                volume.pointer(source).and_then(Value::as_str) == Some(name)
            })
            .unwrap_or_else(|| panic!("{what}: no mount of {source} = {name}"));
        assert_eq!(mount["readOnly"], true, "{what}");
        text(mount, "/mountPath").to_owned()
    };
    assert_eq!(
        format!(
            "{}/config.toml",
            mounted_at("/configMap/name", "df-reconciler-config")
        ),
        CONFIG_PATH,
        "{what}"
    );
    let url_file = toml.database.url_file.as_ref().expect("database.url_file");
    assert_eq!(
        Path::new(&mounted_at("/secret/secretName", "df-reconciler-dsn")).join("dsn"),
        *url_file,
        "{what}"
    );
    assert!(
        spec["terminationGracePeriodSeconds"].as_u64().unwrap()
            > 2 * toml.pass.statement_timeout.as_secs(),
        "{what}: the grace period outlasts a batch"
    );
    c.clone()
}

#[tokio::test]
async fn kubernetes_manifests_agree_with_the_image_and_the_config() {
    let dir = repo().join("deploy/kubernetes");
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut files = Vec::new();
    files_under(&dir, ".yaml", &mut files);
    let on_disk: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| f != "kustomization.yaml")
        .collect();
    let alternatives = BTreeSet::from(["cronjob.yaml".to_owned()]);
    assert_eq!(
        on_disk,
        &resources | &alternatives,
        "every manifest is listed (the CronJob is the documented alternative)"
    );
    assert!(read("deploy/kubernetes/kustomization.yaml").contains("cronjob.yaml"));

    let dir_config = tempfile::tempdir().unwrap();
    let config_file = dir_config.path().join("config.toml");
    std::fs::write(&config_file, configmap_toml()).unwrap();
    let toml = load_config(&config_file);
    assert_eq!(toml.http.listen, format!("0.0.0.0:{HTTP_PORT}"));

    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(text(&deployment, "/kind"), "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].clone();
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], labels);
    let c = check_pod("deployment", pod, &toml);
    assert_eq!(c["args"], serde_json::json!(["run"]));
    let port_name = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == HTTP_PORT)
        .map(|p| text(p, "/name").to_owned())
        .expect("container port 9187");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(text(get, "/path"), path);
        assert!(
            get["port"] == HTTP_PORT || get["port"] == port_name.as_str(),
            "{probe} on {HTTP_PORT}"
        );
    }

    let service = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(service["spec"]["selector"], labels);
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["port"], HTTP_PORT);
    assert!(port["targetPort"] == HTTP_PORT || port["targetPort"] == port_name.as_str());
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], HTTP_PORT.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let cronjob = yaml("deploy/kubernetes/cronjob.yaml");
    assert_eq!(text(&cronjob, "/spec/concurrencyPolicy"), "Forbid");
    let job_pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"];
    let c = check_pod("cronjob", job_pod, &toml);
    assert_eq!(c["args"][0], "once");
    assert_eq!(text(job_pod, "/spec/restartPolicy"), "Never");

    let secret = yaml("deploy/kubernetes/secret.yaml");
    assert!(secret["stringData"]["dsn"].is_string());
    let account = yaml("deploy/kubernetes/serviceaccount.yaml");
    assert_eq!(account["automountServiceAccountToken"], false);
    assert_eq!(
        text(pod, "/spec/serviceAccountName"),
        text(&account, "/metadata/name")
    );

    // Where kubectl exists, kustomize must build the whole thing.
    let Ok(kubectl) = which("kubectl") else {
        eprintln!("note: kubectl not found; `kubectl kustomize` was skipped");
        return;
    };
    let mut cmd = Command::new(kubectl);
    cmd.arg("kustomize").arg(&dir);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        output_text(&out)
    );
    let built = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Deployment",
        "Service",
    ] {
        assert!(
            built.contains(&format!("kind: {kind}\n")),
            "{kind} in the build"
        );
    }
}
