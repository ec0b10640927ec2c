//! What `deploy/` ships is valid as its tools read it: Prometheus's config and alert rules
//! (`promtool check`, and the rules' unit tests in `alerts.test.yml`), Grafana's dashboards (JSON
//! whose every data source is a provisioned one), and the compose file (`docker compose
//! config`, where Docker exists). Which metrics the dashboards and rules read is checked
//! against the running system in `observability.rs`.
//!
//! The Kubernetes manifests (`deploy/k8s`, the base and the dev overlay as `kubectl kustomize`
//! builds them, else each file raw) pass `kubernetes-validate --strict` against a current
//! Kubernetes, and keep the promises the README makes of them (probes on the operations port,
//! non-root, resources, scrape annotations).
//!
//! `promtool` comes from Debian's `prometheus` package; `scripts/test` installs it and sets
//! `TILL_REQUIRE_TOOLS=1`, so CI cannot skip these checks. A bare `cargo test` without promtool
//! says so and skips them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A tool the checks need, where `found` says it is; `None` (with a note) when it is missing
/// and not required, a failure when `scripts/test` requires it.
fn tool(name: &str, found: Option<PathBuf>, install: &str) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            std::env::var("TILL_REQUIRE_TOOLS").is_err(),
            "{name} is missing: {install}"
        );
        eprintln!("{name} is not installed: its checks are skipped");
    }
    found
}

/// `promtool`, from the `PATH`.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    tool(
        "promtool",
        found,
        "install Debian's prometheus package (scripts/tools does)",
    )
}

fn run(command: &mut Command) {
    let output = command.output().expect("the tool runs");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let dir = deploy().join("prometheus");
    run(Command::new(&promtool)
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
}

/// The `uid:` values of the provisioned data sources.
fn provisioned_uids() -> BTreeSet<String> {
    let path = deploy().join("grafana/provisioning/datasources/datasources.yml");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().to_owned())
        .collect()
}

#[test]
fn dashboards_are_valid_json_reading_only_provisioned_data_sources() {
    let uids = provisioned_uids();
    assert_eq!(
        uids,
        BTreeSet::from(["prometheus".into(), "tempo".into(), "loki".into()])
    );
    let mut dashboards = BTreeSet::new();
    for entry in std::fs::read_dir(deploy().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let dashboard: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
        let uid = dashboard["uid"]
            .as_str()
            .expect("a dashboard uid")
            .to_owned();
        assert!(dashboards.insert(uid.clone()), "uid {uid} used twice");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{} has no panels", path.display());
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            let mut sources = vec![&panel["datasource"]];
            sources.extend(
                panel["targets"]
                    .as_array()
                    .expect("targets")
                    .iter()
                    .map(|t| &t["datasource"]),
            );
            for source in sources {
                let uid = source["uid"].as_str().unwrap_or_default();
                assert!(
                    uids.contains(uid),
                    "{} / {title}: data source {source} is not provisioned",
                    path.display()
                );
            }
            for target in panel["targets"].as_array().unwrap() {
                assert!(
                    target["expr"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{} / {title}: a target without a query",
                    path.display()
                );
            }
        }
    }
    assert_eq!(
        dashboards,
        BTreeSet::from([
            "tillstream-overview".into(),
            "tillstream-pipeline".into(),
            "tillstream-orders".into()
        ])
    );
}

#[test]
fn every_file_compose_mounts_from_the_repository_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let mounts: Vec<&str> = compose
        .split(['[', ',', ' ', '\n', '"'])
        .filter(|w| w.starts_with("./"))
        .map(|w| w.split(':').next().unwrap_or(w))
        .collect();
    assert!(mounts.len() >= 5, "mounts found: {mounts:?}");
    for mount in mounts {
        assert!(
            root.join(mount).exists(),
            "compose mounts {mount}, which is missing"
        );
    }
    // Where Docker Compose exists, it parses the file itself.
    let compose_available = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if compose_available {
        run(Command::new("docker")
            .args(["compose", "config", "--quiet"])
            .current_dir(&root));
    }
}

/// `kubernetes-validate`, where `KUBERNETES_VALIDATE` (set by `scripts/test`) says.
fn kubernetes_validate() -> Option<PathBuf> {
    let found = std::env::var_os("KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    tool("kubernetes-validate", found, "scripts/tools installs it")
}

/// The manifests of `deploy/k8s/<dir>` as kustomize builds them (`kubectl kustomize`), or
/// `None` when no kustomize is installed.
fn kustomize(dir: &str) -> Option<String> {
    let output = Command::new("kubectl")
        .args([
            "kustomize",
            &deploy().join("k8s").join(dir).to_string_lossy(),
        ])
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("YAML is text"))
}

#[test]
fn kubernetes_manifests_validate_and_keep_their_promises() {
    let Some(validate) = kubernetes_validate() else {
        return;
    };
    let scratch = std::env::temp_dir().join(format!("till-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut files = Vec::new();
    for dir in ["base", "overlays/dev"] {
        match kustomize(dir) {
            Some(built) => {
                let file = scratch.join(format!("{}.yaml", dir.replace('/', "-")));
                std::fs::write(&file, &built).unwrap();
                files.push((file, built));
            }
            None => {
                eprintln!("no kustomize: validating deploy/k8s/{dir} file by file");
                for entry in std::fs::read_dir(deploy().join("k8s").join(dir)).unwrap() {
                    let path = entry.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    if name.ends_with(".yaml") && name != "kustomization.yaml" {
                        let text = std::fs::read_to_string(&path).unwrap();
                        files.push((path, text));
                    }
                }
            }
        }
    }
    for (file, _) in &files {
        run(Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(file));
    }
    let all: String = files.iter().map(|(_, text)| text.as_str()).collect();
    for kind in [
        "kind: Deployment",
        "kind: Service",
        "kind: Ingress",
        "kind: HorizontalPodAutoscaler",
        "kind: PodDisruptionBudget",
        "kind: ConfigMap",
        "kind: Job",
    ] {
        assert!(all.contains(kind), "no {kind} in the manifests");
    }
    for promise in [
        "runAsNonRoot: true",
        "path: /readyz",
        "path: /livez",
        "prometheus.io/scrape: \"true\"",
        "readOnlyRootFilesystem: true",
        "memory: 128Mi",
    ] {
        assert!(all.contains(promise), "the manifests do not say {promise}");
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
