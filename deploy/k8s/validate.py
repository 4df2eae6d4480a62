#!/usr/bin/env python3
"""Renders every overlay of deploy/k8s and checks it against the Kubernetes schemas, offline.

    python3 deploy/k8s/validate.py           # prints one line per overlay; exit 1 on a problem
    python3 deploy/k8s/validate.py --json    # also prints the rendered objects as JSON

Rendering is `kubectl kustomize` (kustomize built into kubectl). Each object is validated
with the `kubernetes-validate` package against the schemas it bundles for KUBERNETES_VERSION,
strictly (an unknown field is an error), so nothing is downloaded. The Prometheus Operator's
kinds (ServiceMonitor, PrometheusRule) have no schema there: they are validated with node
against the CRD schemas of the npm package @kubernetes-models/prometheus-operator
(crd_schemas.mjs; installed globally by .ci/run), which does not refuse unknown fields, and
by the structural checks below (the Service and port a ServiceMonitor selects, the fields of
each alerting rule).

Every problem is printed as `FILE (KIND NAME, overlay O): FIELD: message`, where FILE is
the manifest under deploy/k8s that defines the object; the Rust test
tests/tests/deploy_manifests.rs runs this script and checks flags, environment and ports
against the binaries.
"""

import json
import os
import re
import shutil
import subprocess
import sys

# The oldest Kubernetes release the manifests target: the preStop `sleep` action is on by
# default from 1.30.
KUBERNETES_VERSION = "1.30.0"

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Kinds whose schema kubernetes-validate does not bundle; checked structurally instead.
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                  ("monitoring.coreos.com/v1", "PrometheusRule")}

# The npm package that bundles the Prometheus Operator's CRD schemas, and its version.
CRD_PACKAGE = "@kubernetes-models/prometheus-operator"
CRD_PACKAGE_VERSION = "6.0.0"

SEVERITIES = {"page", "ticket"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def fail_setup(message):
    print(f"deploy/k8s/validate.py: {message}", file=sys.stderr)
    sys.exit(2)


def imports():
    try:
        import yaml  # noqa: F401
        import kubernetes_validate  # noqa: F401
    except ImportError as e:
        fail_setup(f"{e}: install it with `python3 -m pip install kubernetes-validate` "
                   "(.ci/run does)")
    if shutil.which("kubectl") is None:
        fail_setup("kubectl not found: the overlays are rendered with `kubectl kustomize` "
                   "(kubectl 1.27 or later, kustomize v5)")
    return crd_package_dir()


def crd_package_dir():
    """The globally installed CRD schema package, or a setup failure saying how to get it."""
    hint = f"install it with `npm install -g {CRD_PACKAGE}@{CRD_PACKAGE_VERSION}` (.ci/run does)"
    if shutil.which("node") is None or shutil.which("npm") is None:
        fail_setup(f"node and npm are needed for the Prometheus Operator's schemas; {hint}")
    root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True).stdout.strip()
    path = os.path.join(root, CRD_PACKAGE)
    if not os.path.isfile(os.path.join(path, "package.json")):
        fail_setup(f"{CRD_PACKAGE} not found under {root}: {hint}")
    return path


def crd_schema_problems(objects, package_dir):
    """Problems of the operator's objects against their CRD schemas, as (index, text)."""
    script = os.path.join(HERE, "crd_schemas.mjs")
    out = subprocess.run(["node", script, package_dir], input=json.dumps(objects),
                         capture_output=True, text=True)
    if out.returncode != 0:
        return [(None, f"node crd_schemas.mjs failed: {out.stderr.strip()}")]
    return [(p["index"], f"{p['field']}: {p['message']} ({CRD_PACKAGE} {CRD_PACKAGE_VERSION} "
             "schema)") for p in json.loads(out.stdout)]


def overlays():
    root = os.path.join(HERE, "overlays")
    return sorted(d for d in os.listdir(root)
                  if os.path.isfile(os.path.join(root, d, "kustomization.yaml")))


def render(overlay):
    import yaml
    path = os.path.join(HERE, "overlays", overlay)
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"deploy/k8s/overlays/{overlay}: kubectl kustomize failed: {out.stderr.strip()}"
    return [d for d in yaml.safe_load_all(out.stdout) if d], None


def sources():
    """Maps (kind, name) to the manifest under deploy/k8s that defines it, base first."""
    import yaml
    found = {}
    for dirpath, _, files in sorted(os.walk(HERE)):
        for f in sorted(files):
            if not f.endswith(".yaml") or f == "kustomization.yaml":
                continue
            path = os.path.join(dirpath, f)
            with open(path) as fh:
                for doc in yaml.safe_load_all(fh):
                    if isinstance(doc, dict) and "kind" in doc:
                        key = (doc["kind"], doc.get("metadata", {}).get("name"))
                        rel = os.path.relpath(path, REPO)
                        # A patch names the object too; the defining file is the one with
                        # the most content, which is the base's (or the overlay's own).
                        size = len(json.dumps(doc))
                        if key not in found or size > found[key][1]:
                            found[key] = (rel, size)
    return {k: v[0] for k, v in found.items()}


def where(obj, overlay, files):
    kind = obj.get("kind")
    name = obj.get("metadata", {}).get("name")
    return f"{files.get((kind, name), 'deploy/k8s')} ({kind} {name}, overlay {overlay})"


def schema_problems(obj):
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError, SchemaNotFoundError
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except ValidationError as e:
        field = ".".join(str(p) for p in e.path) or "(object)"
        return [f"{field}: {e.message} (Kubernetes {KUBERNETES_VERSION} schema)"]
    except SchemaNotFoundError as e:
        return [f"kind: {e.message}"]
    return []


def service_monitor_problems(obj, services):
    spec = obj.get("spec") or {}
    problems = []
    labels = (spec.get("selector") or {}).get("matchLabels") or {}
    if not labels:
        return ["spec.selector.matchLabels: required (the Services to scrape)"]
    chosen = [s for s in services
              if labels.items() <= ((s.get("metadata") or {}).get("labels") or {}).items()]
    if not chosen:
        problems.append(f"spec.selector.matchLabels: {labels} selects no Service")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append("spec.endpoints: at least one endpoint is required")
    for i, ep in enumerate(endpoints):
        port = ep.get("port")
        for s in chosen:
            names = [p.get("name") for p in (s.get("spec") or {}).get("ports") or []]
            if port not in names:
                problems.append(f"spec.endpoints.{i}.port: {port!r} is not a port name of "
                                f"Service {s['metadata']['name']} ({names})")
        if not str(ep.get("path", "/metrics")).startswith("/"):
            problems.append(f"spec.endpoints.{i}.path: must start with /")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                problems.append(f"spec.endpoints.{i}.{key}: {ep[key]!r} is not a duration")
    return problems


def rule_problems(obj):
    spec = obj.get("spec") or {}
    problems = []
    groups = spec.get("groups") or []
    if not groups:
        return ["spec.groups: at least one group is required"]
    names = set()
    for g, group in enumerate(groups):
        if not group.get("name"):
            problems.append(f"spec.groups.{g}.name: required")
        for r, rule in enumerate(group.get("rules") or []):
            at = f"spec.groups.{g}.rules.{r}"
            unknown = set(rule) - {"alert", "record", "expr", "for", "labels", "annotations",
                                   "keep_firing_for"}
            if unknown:
                problems.append(f"{at}: unknown field(s) {sorted(unknown)}")
            alert = rule.get("alert")
            if not alert:
                problems.append(f"{at}.alert: required (only alerting rules here)")
            elif alert in names:
                problems.append(f"{at}.alert: {alert} is defined twice")
            names.add(alert)
            if not str(rule.get("expr", "")).strip():
                problems.append(f"{at}.expr: required")
            if "for" in rule and not DURATION.match(str(rule["for"])):
                problems.append(f"{at}.for: {rule['for']!r} is not a duration")
            severity = (rule.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                problems.append(f"{at}.labels.severity: {severity!r}, expected one of "
                                f"{sorted(SEVERITIES)}")
            if not (rule.get("annotations") or {}).get("summary"):
                problems.append(f"{at}.annotations.summary: required")
    return problems


def check(overlay, objects, files, crd_dir):
    problems = []
    services = [o for o in objects if o.get("kind") == "Service"]
    operator_objects = [o for o in objects
                        if (o.get("apiVersion"), o.get("kind")) in OPERATOR_KINDS]
    for index, text in crd_schema_problems(operator_objects, crd_dir):
        at = where(operator_objects[index], overlay, files) if index is not None else overlay
        problems.append(f"{at}: {text}")
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key == ("monitoring.coreos.com/v1", "ServiceMonitor"):
            found = service_monitor_problems(obj, services)
        elif key == ("monitoring.coreos.com/v1", "PrometheusRule"):
            found = rule_problems(obj)
        else:
            found = schema_problems(obj)
        problems += [f"{where(obj, overlay, files)}: {p}" for p in found]
    return problems


def main():
    crd_dir = imports()
    files = sources()
    rendered, problems = {}, []
    for overlay in overlays():
        objects, error = render(overlay)
        if error:
            problems.append(error)
            continue
        problems += check(overlay, objects, files, crd_dir)
        rendered[overlay] = [{"source": files.get((o.get("kind"), o["metadata"].get("name")),
                                                   "deploy/k8s"), "object": o}
                             for o in objects]
        kinds = len(objects)
        print(f"deploy/k8s/overlays/{overlay}: {kinds} objects rendered and checked "
              f"(Kubernetes {KUBERNETES_VERSION}, strict)", file=sys.stderr)
    for p in problems:
        print(p, file=sys.stderr)
    if "--json" in sys.argv[1:]:
        json.dump(rendered, sys.stdout)
    if problems:
        print(f"{len(problems)} problem(s) in deploy/k8s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
