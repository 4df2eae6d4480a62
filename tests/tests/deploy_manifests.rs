//! The Kubernetes manifests in `deploy/k8s` agree with the Kubernetes schemas, the binaries
//! and the docs: every overlay renders and validates offline (`deploy/k8s/validate.py`:
//! `kubectl kustomize`, then the schemas bundled in the `kubernetes-validate` package);
//! every flag, environment variable and port given to `creditgate-gateway` and
//! `creditgate-sidecar` exists in that binary's `--help`; probes, Services and network
//! policies name ports the pods declare; the gateway's termination grace outlasts its
//! shutdown; the mounted pricing file passes `check-config` and the operations file
//! validates; every metric an alert reads is in docs/metrics.md.
//!
//! Each problem is reported as `FILE (KIND NAME, overlay O): FIELD: message`. Needs
//! `python3` with `kubernetes-validate`, `kubectl`, and node with the npm package
//! `@kubernetes-models/prometheus-operator` installed globally (`.ci/run` installs both
//! packages), and
//! the two binaries built (`cargo build -p creditgate-gateway -p creditgate-sidecar`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use creditgate_sidecar::operations::Operations;
use creditgate_testkit::{GATEWAY_BIN, SIDECAR_BIN, cargo_bin};
use serde_json::Value;

/// Environment variables the binaries read that clap does not list in `--help`; each is
/// documented in docs/operations.md (checked below).
const DOCUMENTED_ENV: [&str; 2] = ["RUST_LOG", "CREDITGATE_LOG_FORMAT"];

/// The listener that serves `/healthz` and `/readyz`, per binary.
fn health_listener(binary: &str) -> &'static str {
    if binary == GATEWAY_BIN {
        "--admin-listen"
    } else {
        "--listen"
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package sits in the repository")
        .to_path_buf()
}

/// One rendered object and the manifest that defines it.
struct Rendered {
    overlay: String,
    source: String,
    object: Value,
}

impl Rendered {
    fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or("")
    }

    /// Where a problem is: file, object and overlay, then the field.
    fn at(&self, field: &str) -> String {
        format!(
            "{} ({} {}, overlay {}): {field}",
            self.source,
            self.kind(),
            self.name(),
            self.overlay
        )
    }
}

/// Runs the validator once for all tests: `Ok` with every overlay's objects, or `Err`
/// with its report.
fn render() -> &'static Result<Vec<Rendered>, String> {
    static RENDERED: OnceLock<Result<Vec<Rendered>, String>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let out = Command::new("python3")
            .arg(repo_root().join("deploy/k8s/validate.py"))
            .arg("--json")
            .output()
            .map_err(|e| format!("running python3 deploy/k8s/validate.py: {e}"))?;
        let report = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(report);
        }
        let json: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("validate.py --json printed no JSON: {e}\n{report}"))?;
        let overlays = json
            .as_object()
            .ok_or("validate.py --json: not an object")?;
        let mut all = Vec::new();
        for (overlay, objects) in overlays {
            for entry in objects.as_array().into_iter().flatten() {
                all.push(Rendered {
                    overlay: overlay.clone(),
                    source: entry["source"].as_str().unwrap_or("deploy/k8s").to_string(),
                    object: entry["object"].clone(),
                });
            }
        }
        Ok(all)
    })
}

fn objects() -> &'static [Rendered] {
    match render() {
        Ok(all) => all,
        Err(report) => panic!("deploy/k8s does not validate:\n{report}"),
    }
}

fn overlay_objects<'a>(overlay: &'a str) -> impl Iterator<Item = &'static Rendered> + 'a {
    objects().iter().filter(move |o| o.overlay == overlay)
}

fn overlays() -> BTreeSet<&'static str> {
    objects().iter().map(|o| o.overlay.as_str()).collect()
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The options and environment variables one subcommand's `--help` lists.
#[derive(Default)]
struct Help {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

fn help_of(binary: &str, subcommand: &str) -> Help {
    let out = Command::new(cargo_bin(binary))
        .args([subcommand, "--help"])
        .output()
        .unwrap_or_else(|e| panic!("running {binary} {subcommand} --help: {e}"));
    assert!(out.status.success(), "{binary} {subcommand} --help failed");
    parse_help(&String::from_utf8_lossy(&out.stdout))
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        if let Some(flag) = word.strip_prefix("--") {
            let flag: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !flag.is_empty() {
                help.flags.insert(format!("--{flag}"));
            }
        }
    }
    for part in text.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        help.env.insert(name);
    }
    help
}

/// A container running one of the binaries, with where it is.
struct Process<'a> {
    workload: &'a Rendered,
    index: usize,
    binary: &'static str,
    container: &'a Value,
}

impl Process<'_> {
    fn at(&self, field: &str) -> String {
        self.workload.at(&format!(
            "spec.template.spec.containers[{}].{field}",
            self.index
        ))
    }

    fn pod_spec(&self) -> &Value {
        &self.workload.object["spec"]["template"]["spec"]
    }

    fn args(&self) -> Vec<&str> {
        let args = self.container["args"].as_array();
        args.into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    }

    /// The value of `--flag=value` or `--flag value` in the container's args.
    fn flag(&self, flag: &str) -> Option<String> {
        let args = self.args();
        args.iter().enumerate().find_map(|(i, arg)| {
            if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
                return Some(value.to_string());
            }
            (*arg == flag)
                .then(|| args.get(i + 1).map(|v| v.to_string()))
                .flatten()
        })
    }

    fn env_names(&self) -> Vec<(usize, &str)> {
        let env = self.container["env"].as_array();
        let names = env
            .into_iter()
            .flatten()
            .map(|e| e["name"].as_str().unwrap_or(""));
        names.enumerate().collect()
    }

    /// The container's ports by name, and the numbers.
    fn ports(&self) -> BTreeMap<String, u64> {
        let ports = self.container["ports"].as_array().into_iter().flatten();
        ports
            .map(|p| {
                let name = p["name"].as_str().unwrap_or("").to_string();
                (name, p["containerPort"].as_u64().unwrap_or(0))
            })
            .collect()
    }
}

/// Every container whose command is one of the binaries, in the Deployments and
/// StatefulSets of `overlay`.
fn processes(overlay: &str) -> Vec<Process<'static>> {
    let mut found = Vec::new();
    for workload in overlay_objects(overlay) {
        if !matches!(workload.kind(), "Deployment" | "StatefulSet") {
            continue;
        }
        let containers = workload.object["spec"]["template"]["spec"]["containers"].as_array();
        for (index, container) in containers.into_iter().flatten().enumerate() {
            let command = container["command"][0].as_str().unwrap_or("");
            let binary = match command {
                GATEWAY_BIN => GATEWAY_BIN,
                SIDECAR_BIN => SIDECAR_BIN,
                _ => continue,
            };
            found.push(Process {
                workload,
                index,
                binary,
                container,
            });
        }
    }
    found
}

fn all_processes() -> Vec<Process<'static>> {
    overlays().into_iter().flat_map(processes).collect()
}

#[test]
fn the_rendered_manifests_validate_against_the_kubernetes_schemas() {
    if let Err(report) = render() {
        panic!("python3 deploy/k8s/validate.py failed:\n{report}");
    }
    let overlays = overlays();
    assert!(
        overlays.contains("dev") && overlays.contains("prod"),
        "overlays rendered: {overlays:?}"
    );
    for overlay in &overlays {
        let kinds: BTreeSet<&str> = overlay_objects(overlay).map(Rendered::kind).collect();
        for kind in [
            "Deployment",
            "StatefulSet",
            "ConfigMap",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "ServiceMonitor",
            "PrometheusRule",
        ] {
            assert!(
                kinds.contains(kind),
                "overlay {overlay} renders no {kind}: {kinds:?}"
            );
        }
    }
}

/// The secret environment variable names of the operations file mounted for `process`.
fn operations_secret_env(process: &Process<'_>) -> BTreeSet<String> {
    let Some((_, text)) = mounted_file(process, "--operations") else {
        return BTreeSet::new();
    };
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("secret_env"))
        .filter_map(|rest| rest.split('"').nth(1))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_flag_and_environment_variable_exists_in_the_binaries_help() {
    let operations_doc = std::fs::read_to_string(repo_root().join("docs/operations.md"))
        .expect("reading docs/operations.md");
    for name in DOCUMENTED_ENV {
        assert!(
            operations_doc.contains(&format!("`{name}")),
            "docs/operations.md does not document {name}, which the manifests may set"
        );
    }
    let mut helps: BTreeMap<(&str, String), Help> = BTreeMap::new();
    let mut problems = Vec::new();
    let processes = all_processes();
    assert!(
        processes.len() >= 4,
        "gateway and sidecar containers in both overlays"
    );
    for process in &processes {
        let args = process.args();
        let Some(subcommand) = args.first().filter(|a| !a.starts_with('-')) else {
            problems.push(process.at("args[0]: the first argument must be the subcommand"));
            continue;
        };
        let help = helps
            .entry((process.binary, subcommand.to_string()))
            .or_insert_with(|| help_of(process.binary, subcommand));
        for (i, arg) in args.iter().enumerate().skip(1) {
            let Some(flag) = arg.split('=').next().filter(|f| f.starts_with("--")) else {
                continue;
            };
            if !help.flags.contains(flag) {
                problems.push(process.at(&format!(
                    "args[{i}]: {flag} is not an option of `{} {subcommand} --help`",
                    process.binary
                )));
            }
        }
        let secret_env = operations_secret_env(process);
        for (i, name) in process.env_names() {
            let known = help.env.contains(name)
                || DOCUMENTED_ENV.contains(&name)
                || secret_env.contains(name);
            if !known {
                problems.push(process.at(&format!(
                    "env[{i}].name: {name} is in neither `{} {subcommand} --help`, the \
                     documented {DOCUMENTED_ENV:?}, nor a secret_env of the operations file",
                    process.binary
                )));
            }
        }
        for name in &secret_env {
            if !process.env_names().iter().any(|(_, n)| n == name) {
                problems.push(process.at(&format!(
                    "env: {name} (a secret_env of the operations file) is not set"
                )));
            }
        }
    }
    assert_no_problems("flags and environment against --help", &problems);
}

/// A stand-in for a Secret's value: URLs point at port 1 of loopback, where nothing
/// listens; secrets are long enough for the operations file's minimum.
fn stand_in_secret(key: &str) -> String {
    if key.contains("redis") {
        "redis://127.0.0.1:1/".to_string()
    } else if key.contains("postgres-url") {
        "postgres://creditgate:x@127.0.0.1:1/creditgate".to_string()
    } else {
        "a-test-secret-of-thirty-two-bytes!".to_string()
    }
}

/// The container's environment as the pod would see it, Secrets and pod fields stood in.
fn stand_in_env(process: &Process<'_>) -> Vec<(String, String)> {
    let env = process.container["env"].as_array().into_iter().flatten();
    env.map(|e| {
        let name = e["name"].as_str().unwrap_or("").to_string();
        let value = match (
            e["value"].as_str(),
            e["valueFrom"]["secretKeyRef"]["key"].as_str(),
        ) {
            (Some(value), _) => value.to_string(),
            (None, Some(key)) => stand_in_secret(key),
            (None, None) => "creditgate-test-pod-0".to_string(),
        };
        (name, value)
    })
    .collect()
}

/// Kills the process it holds when dropped, so a failing test leaves nothing running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary with the container's arguments and environment (its files moved
/// under an empty directory, so it stops at reading its config) and returns clap's usage
/// error, if that is how it ended. A process still running after the timeout parsed its
/// command line.
fn usage_error(process: &Process<'_>, empty_dir: &Path) -> Option<String> {
    let root = empty_dir.display().to_string();
    let args: Vec<String> = process
        .args()
        .iter()
        .map(|a| a.replace("/etc/creditgate", &root))
        .collect();
    let child = Command::new(cargo_bin(process.binary))
        .env_clear()
        .envs(stand_in_env(process))
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", process.binary));
    let mut child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().expect("waiting for the binary") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            // clap exits 2 on a command line it refuses; the binaries exit 1 on the rest.
            return (status.code() == Some(2)).then_some(stderr);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

#[test]
fn the_binaries_accept_the_manifests_command_lines() {
    let empty = tempfile::tempdir().expect("temp dir");
    let mut problems = Vec::new();
    for process in all_processes() {
        if let Some(stderr) = usage_error(&process, empty.path()) {
            problems.push(process.at(&format!(
                "args, env: `{}` refuses this command line and environment:\n{stderr}",
                process.binary
            )));
        }
    }
    assert_no_problems("command lines", &problems);
}

/// The port of a `HOST:PORT` listen address.
fn port_of(address: &str) -> Option<u64> {
    address.rsplit_once(':')?.1.parse().ok()
}

/// The port a probe's `httpGet.port` (a name or a number) resolves to.
fn probe_port(probe: &Value, ports: &BTreeMap<String, u64>) -> Option<u64> {
    let port = &probe["httpGet"]["port"];
    port.as_u64().or_else(|| ports.get(port.as_str()?).copied())
}

fn check_listeners(process: &Process<'_>, problems: &mut Vec<String>) {
    let ports = process.ports();
    let mut listened = BTreeSet::new();
    for flag in ["--listen", "--admin-listen"] {
        match process.flag(flag).as_deref().map(port_of) {
            Some(Some(port)) => {
                listened.insert(port);
            }
            Some(None) => problems.push(process.at(&format!("args: {flag} has no port"))),
            None => problems.push(process.at(&format!(
                "args: {flag} is not given: the default binds 127.0.0.1, unreachable in a pod"
            ))),
        }
    }
    let declared: BTreeSet<u64> = ports.values().copied().collect();
    if declared != listened {
        problems.push(process.at(&format!(
            "ports: the container declares {declared:?} but the binary listens on \
             {listened:?} (--listen, --admin-listen)"
        )));
    }
    let health = process
        .flag(health_listener(process.binary))
        .as_deref()
        .and_then(port_of);
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let spec = &process.container[probe];
        if spec.is_null() {
            if probe != "startupProbe" {
                problems.push(process.at(&format!("{probe}: missing")));
            }
            continue;
        }
        if spec["httpGet"]["path"].as_str() != Some(path) {
            problems.push(process.at(&format!("{probe}.httpGet.path: expected {path}")));
        }
        if probe_port(spec, &ports) != health || health.is_none() {
            problems.push(process.at(&format!(
                "{probe}.httpGet.port: not the port of {} ({health:?}), which serves {path}",
                health_listener(process.binary)
            )));
        }
    }
}

#[test]
fn every_port_is_one_the_binaries_listen_on() {
    let mut problems = Vec::new();
    for process in all_processes() {
        check_listeners(&process, &mut problems);
    }
    for overlay in overlays() {
        check_service_ports(overlay, &mut problems);
        check_policy_ports(overlay, &mut problems);
    }
    assert_no_problems("ports", &problems);
}

/// The container port names of the pods whose labels include `selector`.
fn pod_port_names(overlay: &str, selector: &Value) -> Option<BTreeSet<String>> {
    let selector = selector.as_object()?;
    let mut names = BTreeSet::new();
    let mut matched = false;
    for workload in overlay_objects(overlay) {
        let labels = &workload.object["spec"]["template"]["metadata"]["labels"];
        if selector.is_empty() || !selector.iter().all(|(k, v)| &labels[k] == v) {
            continue;
        }
        matched = true;
        let containers = workload.object["spec"]["template"]["spec"]["containers"].as_array();
        for c in containers.into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                names.insert(p["name"].as_str().unwrap_or("").to_string());
            }
        }
    }
    matched.then_some(names)
}

fn check_service_ports(overlay: &str, problems: &mut Vec<String>) {
    for service in overlay_objects(overlay).filter(|o| o.kind() == "Service") {
        let Some(names) = pod_port_names(overlay, &service.object["spec"]["selector"]) else {
            problems.push(service.at("spec.selector: selects no pod"));
            continue;
        };
        let ports = service.object["spec"]["ports"].as_array();
        for (i, port) in ports.into_iter().flatten().enumerate() {
            if let Some(target) = port["targetPort"].as_str()
                && !names.contains(target)
            {
                problems.push(service.at(&format!(
                    "spec.ports[{i}].targetPort: {target} is not a port of the selected pods \
                     ({names:?})"
                )));
            }
        }
    }
}

fn check_policy_ports(overlay: &str, problems: &mut Vec<String>) {
    for policy in overlay_objects(overlay).filter(|o| o.kind() == "NetworkPolicy") {
        let selector = &policy.object["spec"]["podSelector"]["matchLabels"];
        let Some(names) = pod_port_names(overlay, selector) else {
            problems.push(policy.at("spec.podSelector: selects no pod"));
            continue;
        };
        let rules = policy.object["spec"]["ingress"].as_array();
        for (r, rule) in rules.into_iter().flatten().enumerate() {
            for (p, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                if let Some(name) = port["port"].as_str()
                    && !names.contains(name)
                {
                    problems.push(policy.at(&format!(
                        "spec.ingress[{r}].ports[{p}].port: {name} is not a port of the \
                         selected pods ({names:?})"
                    )));
                }
            }
        }
    }
}

#[test]
fn the_gateways_termination_grace_outlasts_its_shutdown() {
    let mut problems = Vec::new();
    let gateways = all_processes()
        .into_iter()
        .filter(|p| p.binary == GATEWAY_BIN);
    for process in gateways {
        let seconds = |flag: &str| process.flag(flag).and_then(|v| v.parse::<u64>().ok());
        let (Some(grace), Some(timeout)) = (
            seconds("--shutdown-grace-s"),
            seconds("--shutdown-timeout-s"),
        ) else {
            problems.push(process.at(
                "args: give --shutdown-grace-s and --shutdown-timeout-s explicitly, so the \
                 pod's grace period can be checked against them",
            ));
            continue;
        };
        let pre_stop = process.container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64();
        let Some(pre_stop) = pre_stop else {
            problems.push(process.at(
                "lifecycle.preStop.sleep.seconds: missing (keep serving while the endpoint \
                 removal propagates)",
            ));
            continue;
        };
        let needed = pre_stop + grace + timeout;
        let given = process.pod_spec()["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        if given < needed {
            problems.push(process.workload.at(&format!(
                "spec.template.spec.terminationGracePeriodSeconds: {given} s is shorter than \
                 preStop {pre_stop} s + --shutdown-grace-s {grace} + --shutdown-timeout-s \
                 {timeout} = {needed} s: SIGKILL would cut settles short"
            )));
        }
    }
    assert_no_problems("graceful shutdown", &problems);
}

#[test]
fn gateways_and_sidecars_share_one_key_layout() {
    let mut problems = Vec::new();
    for overlay in overlays() {
        // (prefix, shards) of every process, by where it is.
        let mut layouts = BTreeMap::new();
        for process in processes(overlay) {
            let prefix_flag = if process.binary == GATEWAY_BIN {
                "--redis-prefix"
            } else {
                "--prefix"
            };
            match (process.flag(prefix_flag), process.flag("--shards")) {
                (Some(prefix), Some(shards)) => {
                    layouts.insert(process.at("args"), (prefix, shards));
                }
                _ => problems.push(process.at(&format!(
                    "args: give {prefix_flag} and --shards explicitly: every gateway and \
                     sidecar of a deployment must use the same"
                ))),
            }
        }
        let distinct: BTreeSet<_> = layouts.values().collect();
        if distinct.len() > 1 {
            let all: Vec<String> = layouts
                .iter()
                .map(|(at, (prefix, shards))| format!("{at}: prefix {prefix}, shards {shards}"))
                .collect();
            problems.push(format!(
                "overlay {overlay}: the processes use different key layouts:\n{}",
                all.join("\n")
            ));
        }
    }
    assert_no_problems("key layout", &problems);
}

/// The file that `flag` names, read from the ConfigMap mounted at its directory: the
/// ConfigMap object and the file's text. Reports why when it is not found.
fn mounted_file(process: &Process<'_>, flag: &str) -> Option<(&'static Rendered, String)> {
    let path = process.flag(flag)?;
    let (dir, key) = path.rsplit_once('/')?;
    let mounts = process.container["volumeMounts"].as_array()?;
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(dir))?;
    let volumes = process.pod_spec()["volumes"].as_array()?;
    let volume = volumes.iter().find(|v| v["name"] == mount["name"])?;
    let map_name = volume["configMap"]["name"].as_str()?;
    let map = overlay_objects(&process.workload.overlay)
        .find(|o| o.kind() == "ConfigMap" && o.name() == map_name)?;
    let text = map.object["data"][key].as_str()?;
    Some((map, text.to_string()))
}

fn check_mount(process: &Process<'_>, flag: &str, problems: &mut Vec<String>) {
    let Some(path) = process.flag(flag) else {
        problems.push(process.at(&format!("args: {flag} is not given")));
        return;
    };
    let mounts = process.container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten();
    for (i, mount) in mounts.enumerate() {
        if mount["subPath"].is_string() {
            problems.push(process.at(&format!(
                "volumeMounts[{i}].subPath: a subPath mount is never updated, so a ConfigMap \
                 edit would not reach the running pod; mount the directory"
            )));
        }
    }
    if mounted_file(process, flag).is_none() {
        problems.push(process.at(&format!(
            "args: {flag}={path} is not a key of a ConfigMap mounted at its directory"
        )));
    }
}

fn check_config(text: &str, at: &str, problems: &mut Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pricing.toml");
    std::fs::write(&file, text).expect("writing the pricing file");
    let out = Command::new(cargo_bin(GATEWAY_BIN))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("running creditgate-gateway check-config");
    if !out.status.success() {
        problems.push(format!(
            "{at}: `creditgate-gateway check-config` refuses it:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// The operations file with each `secret_env` replaced by a literal secret of the right
/// length, so it validates without setting environment variables in the test process.
fn with_literal_secrets(text: &str) -> String {
    let lines = text.lines().map(|line| {
        if line.trim_start().starts_with("secret_env") {
            "secret = \"a-test-secret-of-thirty-two-bytes!\"".to_string()
        } else {
            line.to_string()
        }
    });
    lines.collect::<Vec<_>>().join("\n")
}

#[test]
fn the_mounted_pricing_and_operations_files_are_valid() {
    let mut problems = Vec::new();
    let mut checked = 0;
    // The gateways and the sidecars mount the same ConfigMap: check each file once.
    let mut seen = BTreeSet::new();
    for process in all_processes() {
        check_mount(&process, "--config", &mut problems);
        if let Some((map, text)) = mounted_file(&process, "--config")
            && seen.insert((map.overlay.as_str(), map.name(), text.clone()))
        {
            check_config(&text, &map.at("data"), &mut problems);
            checked += 1;
        }
        if process.binary == SIDECAR_BIN {
            check_mount(&process, "--operations", &mut problems);
            if let Some((map, text)) = mounted_file(&process, "--operations")
                && let Err(errors) =
                    Operations::parse("operations.toml", &with_literal_secrets(&text))
            {
                problems.push(format!(
                    "{}: operations.toml does not validate:\n{errors}",
                    map.at("data")
                ));
            }
        }
    }
    assert!(checked >= 2, "pricing files checked: {checked}");
    assert_no_problems("mounted files", &problems);
}

/// The `creditgate_*` names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in expr.match_indices("creditgate_") {
        let starts_word = expr[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if starts_word {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The `job="…"` values in a PromQL expression.
fn job_names(expr: &str) -> BTreeSet<String> {
    expr.split("job=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

fn documented(name: &str, doc: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    doc.contains(&format!("`{name}`")) || doc.contains(&format!("`{base}`"))
}

#[test]
fn every_alert_reads_documented_metrics_of_scraped_jobs() {
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md"))
        .expect("reading docs/metrics.md");
    let mut problems = Vec::new();
    for rules in objects().iter().filter(|o| o.kind() == "PrometheusRule") {
        let scraped: BTreeSet<&str> = overlay_objects(&rules.overlay)
            .filter(|o| {
                o.kind() == "Service"
                    && o.object["metadata"]["labels"]
                        .get("creditgate.io/scrape")
                        .is_some()
            })
            .map(Rendered::name)
            .collect();
        let groups = rules.object["spec"]["groups"].as_array();
        for (g, group) in groups.into_iter().flatten().enumerate() {
            for (r, rule) in group["rules"].as_array().into_iter().flatten().enumerate() {
                let expr = rule["expr"].as_str().unwrap_or("");
                let at = rules.at(&format!("spec.groups[{g}].rules[{r}].expr"));
                let names = metric_names(expr);
                if names.is_empty() && !expr.contains("up{") {
                    problems.push(format!("{at}: reads no creditgate metric"));
                }
                for name in names.iter().filter(|n| !documented(n, &doc)) {
                    problems.push(format!("{at}: {name} is not a metric in docs/metrics.md"));
                }
                for job in job_names(expr)
                    .iter()
                    .filter(|j| !scraped.contains(j.as_str()))
                {
                    problems.push(format!(
                        "{at}: job=\"{job}\" is not a scraped Service ({scraped:?})"
                    ));
                }
            }
        }
    }
    assert_no_problems("alerting rules", &problems);
}

#[test]
fn every_secret_reference_resolves_in_dev_and_is_documented_for_prod() {
    let deploy_doc = std::fs::read_to_string(repo_root().join("docs/DEPLOY.md"))
        .expect("reading docs/DEPLOY.md");
    let mut problems = Vec::new();
    for overlay in overlays() {
        let secrets: Vec<&Rendered> = overlay_objects(overlay)
            .filter(|o| o.kind() == "Secret")
            .collect();
        for workload in overlay_objects(overlay) {
            let containers = workload.object["spec"]["template"]["spec"]["containers"].as_array();
            for (c, container) in containers.into_iter().flatten().enumerate() {
                for (e, env) in container["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let reference = &env["valueFrom"]["secretKeyRef"];
                    let (Some(name), Some(key)) =
                        (reference["name"].as_str(), reference["key"].as_str())
                    else {
                        continue;
                    };
                    let at = workload.at(&format!(
                        "spec.template.spec.containers[{c}].env[{e}].valueFrom.secretKeyRef"
                    ));
                    if secrets.is_empty() {
                        // Created outside the repository: DEPLOY.md must name it.
                        if !deploy_doc.contains(&format!("`{key}`")) || !deploy_doc.contains(name) {
                            problems.push(format!(
                                "{at}: Secret {name} key {key} is not described in docs/DEPLOY.md"
                            ));
                        }
                        continue;
                    }
                    let found = secrets.iter().find(|s| s.name() == name);
                    let has_key = found.is_some_and(|s| {
                        s.object["stringData"].get(key).is_some()
                            || s.object["data"].get(key).is_some()
                    });
                    if !has_key {
                        problems.push(format!(
                            "{at}: Secret {name} has no key {key} in overlay {overlay}"
                        ));
                    }
                }
            }
        }
    }
    assert_no_problems("secret references", &problems);
}
