"""Checks of the deploy artifacts that need a YAML parser; run by deploy/validate.sh.

    python3 deploy/validate_checks.py COMMAND ARGS...

Every command prints what is wrong (one line per problem) and exits 1, or
prints nothing useful and exits 0. Needs PyYAML (validate.sh installs it when
missing) and nothing else outside the standard library.
"""

import copy
import json
import os
import re
import sys

import yaml

# Kinds the Kubernetes schemas (kubernetes-validate) know, by API group.
BUILTIN_GROUPS = {
    "",  # core: v1
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
}
KEDA_GROUP = "keda.sh"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
NAMESPACE = "accessgov"
MIGRATE_ONLY = ("accessgov-migrate-secrets", "ACCESSGOV_DATABASE_MIGRATE_URL")


def fail(problems):
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


def load_stream(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def group_of(obj):
    api = obj.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def describe(obj):
    return f'{obj.get("kind")}/{obj.get("metadata", {}).get("name")}'


# --- split ------------------------------------------------------------------


def cmd_split(rendered, builtin_out, keda_dir, tag):
    """Writes the built-in kinds of a rendered stream to BUILTIN_OUT and each
    KEDA object to KEDA_DIR/<tag>-<kind>-<name>.json; anything else fails."""
    problems = []
    builtin = []
    os.makedirs(keda_dir, exist_ok=True)
    for obj in load_stream(rendered):
        group = group_of(obj)
        if group in BUILTIN_GROUPS:
            builtin.append(obj)
        elif group == KEDA_GROUP:
            name = obj.get("metadata", {}).get("name", "unnamed")
            out = os.path.join(keda_dir, f'{tag}-{obj.get("kind")}-{name}.json')
            with open(out, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=1)
        else:
            problems.append(
                f"{describe(obj)}: apiVersion {obj.get('apiVersion')!r} is neither a built-in group "
                f"nor {KEDA_GROUP}: no schema would check it"
            )
    with open(builtin_out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(builtin, f, sort_keys=False)
    fail(problems)


# --- KEDA CRD schemas -----------------------------------------------------------

OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array"},
    },
}


def strict(node):
    """Closes every object schema that lists its properties and does not say
    otherwise, as the API server does (unknown fields are pruned there, so a
    misspelt field would silently do nothing)."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


def cmd_keda_schemas(crd_dir, out_dir):
    """Writes OUT_DIR/<Kind>.<version>.json, the strict JSON Schema of every
    version of every CRD in CRD_DIR."""
    problems = []
    os.makedirs(out_dir, exist_ok=True)
    files = sorted(f for f in os.listdir(crd_dir) if f.endswith((".yaml", ".yml")))
    if not files:
        fail([f"{crd_dir}: no CRD files"])
    for name in files:
        for crd in load_stream(os.path.join(crd_dir, name)):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"].get("versions", []):
                schema = copy.deepcopy(version.get("schema", {}).get("openAPIV3Schema"))
                if not schema:
                    problems.append(f"{name}: {kind} {version.get('name')} has no openAPIV3Schema")
                    continue
                strict(schema)
                schema["properties"]["metadata"] = OBJECT_META
                schema["properties"]["apiVersion"] = {"const": f'{crd["spec"]["group"]}/{version["name"]}'}
                schema["properties"]["kind"] = {"const": kind}
                schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
                schema["$schema"] = "http://json-schema.org/draft-07/schema#"
                out = os.path.join(out_dir, f'{kind}.{version["name"]}.json')
                with open(out, "w", encoding="utf-8") as f:
                    json.dump(schema, f, indent=1)
    fail(problems)


# --- policy of the rendered manifests --------------------------------------------


def pod_specs(obj):
    kind, spec = obj.get("kind"), obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield spec.get("template", {}).get("spec", {})
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})


def check_pod(where, pod, images):
    problems = []
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken is not false")
    sc = pod.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod securityContext.seccompProfile.type is not RuntimeDefault")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    if not containers:
        problems.append(f"{where}: no containers")
    for c in containers:
        cw = f'{where} container {c.get("name")}'
        csc = c.get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation is not false")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem is not true")
        if "ALL" not in csc.get("capabilities", {}).get("drop", []):
            problems.append(f'{cw}: capabilities.drop does not contain "ALL"')
        if csc.get("privileged"):
            problems.append(f"{cw}: privileged")
        res = c.get("resources", {})
        for part, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            for key in keys:
                if key not in res.get(part, {}):
                    problems.append(f"{cw}: no resources.{part}.{key}")
        images.add(c.get("image"))
    return problems


def cmd_policy(rendered):
    """Pod hardening, resources, namespace, one image, one autoscaler per
    workload, and the owner's database credentials only in the migrate Job."""
    problems = []
    objs = load_stream(rendered)
    images = set()
    deployments = {}
    autoscaled = {}
    for obj in objs:
        kind = obj.get("kind")
        meta = obj.get("metadata", {})
        where = describe(obj)
        if kind not in CLUSTER_SCOPED and meta.get("namespace") != NAMESPACE:
            problems.append(f"{where}: namespace is {meta.get('namespace')!r}, not {NAMESPACE!r}")
        for pod in pod_specs(obj):
            problems += check_pod(where, pod, images)
        if kind == "Deployment":
            deployments[meta.get("name")] = obj
        target = None
        if kind == "HorizontalPodAutoscaler":
            target = obj.get("spec", {}).get("scaleTargetRef", {})
        elif kind == "ScaledObject":
            target = obj.get("spec", {}).get("scaleTargetRef", {})
            target = {"kind": target.get("kind", "Deployment"), "name": target.get("name")}
        if target is not None:
            key = (target.get("kind"), target.get("name"))
            if key in autoscaled:
                problems.append(f"{where} and {autoscaled[key]} both scale {key[0]}/{key[1]}")
            autoscaled[key] = where
        # The config file (a ConfigMap) names the variable in comments; any
        # other object that mentions either name hands the owner's
        # credentials to something.
        text = "" if kind == "ConfigMap" else yaml.safe_dump(obj)
        for needle in MIGRATE_ONLY:
            if needle in text and not (kind == "Job" and meta.get("name") == "accessgov-migrate"):
                problems.append(f"{where} refers to {needle}: only Job/accessgov-migrate may")
    for (kind, name), where in autoscaled.items():
        if kind != "Deployment" or name not in deployments:
            problems.append(f"{where} scales {kind}/{name}, which is not rendered here")
        elif "replicas" in deployments[name].get("spec", {}):
            problems.append(
                f"Deployment/{name} sets spec.replicas although {where} owns its replica count "
                "(every apply would reset the autoscaler's choice)"
            )
    if len(images) > 1:
        problems.append(f"containers run different images: {sorted(map(str, images))} (an `images:` entry missing?)")
    fail(problems)


# --- observability -----------------------------------------------------------------

METRIC = re.compile(r"\baccessgov_[a-zA-Z0-9_]+")


def load_contract(path):
    contract = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, mtype = line.split()[:2]
                contract[name] = mtype
    return contract


def unknown_metrics(expr, contract):
    """(names in EXPR, names not in the contract)."""
    used, unknown = set(), set()
    for name in METRIC.findall(expr):
        base = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and contract.get(name[: -len(suffix)]) == "histogram":
                base = name[: -len(suffix)]
        used.add(base)
        if base not in contract:
            unknown.add(name)
    return used, unknown


def dashboard_panels(panels):
    for p in panels:
        yield p
        yield from dashboard_panels(p.get("panels", []))


def cmd_dashboard(dashboard_path, contract_path, rules_out):
    """The dashboard parses, uses the ${datasource} variable, names only
    contract metrics and covers all of them; writes every panel expression as
    a recording rule to RULES_OUT for `promtool check rules` (Grafana's
    variables replaced by valid PromQL)."""
    problems = []
    contract = load_contract(contract_path)
    try:
        with open(dashboard_path, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail([f"{dashboard_path}: {e}"])
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource (query: prometheus)")
    covered = set()
    for v in variables.values():
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        used, unknown = unknown_metrics(q, contract)
        covered |= used
        problems += [f"variable {v.get('name')}: unknown metric {m}" for m in sorted(unknown)]
    ids = set()
    rules = []
    for p in dashboard_panels(dash.get("panels", [])):
        where = f'panel {p.get("id")} "{p.get("title")}"'
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        if "gridPos" not in p:
            problems.append(f"{where}: no gridPos")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{where}: no query")
        for t in targets:
            for d in (p.get("datasource"), t.get("datasource")):
                if d is not None and d.get("uid") != "${datasource}":
                    problems.append(f"{where}: datasource {d} is not the ${{datasource}} variable")
            expr = t.get("expr", "")
            used, unknown = unknown_metrics(expr, contract)
            covered |= used
            problems += [f"{where}: unknown metric {m}" for m in sorted(unknown)]
            promql = (
                expr.replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$application", ".*")
            )
            if "$" in promql:
                problems.append(f"{where}: unreplaced Grafana variable in {expr!r}")
            rules.append({"record": f'dashboard:panel_{p.get("id")}_{t.get("refId")}', "expr": promql})
    for name in sorted(set(contract) - covered):
        problems.append(f"metric {name} is on no panel")
    with open(rules_out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    fail(problems)


def readme_anchors(readme):
    anchors = set()
    with open(readme, encoding="utf-8") as f:
        in_code = False
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
            m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                text = re.sub(r"[^\w\- ]", "", m.group(1).lower())
                anchors.add(text.replace(" ", "-"))
    return anchors


def cmd_alerts(alerts_path, tests_path, contract_path, readme):
    """Each alert: a severity label, summary/description/runbook_url pointing
    at an existing README anchor, contract metrics only, and unit tests that
    see it fire and stay silent."""
    problems = []
    contract = load_contract(contract_path)
    anchors = readme_anchors(readme)
    with open(alerts_path, encoding="utf-8") as f:
        groups = yaml.safe_load(f).get("groups", [])
    with open(tests_path, encoding="utf-8") as f:
        tests = yaml.safe_load(f).get("tests", [])
    fires, silent = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else silent).add(a.get("alertname"))
    names = set()
    for g in groups:
        for r in g.get("rules", []):
            name = r.get("alert")
            if not name:
                continue
            names.add(name)
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{name}: labels.severity is not critical, warning or info")
            ann = r.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not ann.get(key):
                    problems.append(f"{name}: no annotations.{key}")
            url = ann.get("runbook_url", "")
            m = re.fullmatch(r"README\.md#([\w\-]+)", url)
            if not m:
                problems.append(f"{name}: runbook_url {url!r} is not README.md#<anchor>")
            elif m.group(1) not in anchors:
                problems.append(f"{name}: runbook_url {url!r}: README.md has no heading with that anchor")
            _, unknown = unknown_metrics(r.get("expr", ""), contract)
            problems += [f"{name}: unknown metric {m}" for m in sorted(unknown)]
            if name not in fires:
                problems.append(f"{name}: no unit test in {tests_path} expects it to fire")
            if name not in silent:
                problems.append(f"{name}: no unit test in {tests_path} expects it to stay silent")
    for name in sorted((fires | silent) - names):
        problems.append(f"{tests_path} tests {name}, which {alerts_path} does not define")
    if not names:
        problems.append(f"{alerts_path}: no alerts")
    fail(problems)


def cmd_collector(path):
    """The collector's pipelines name only defined components; OTLP/HTTP is
    received on 4318 from other containers."""
    problems = []
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    service = cfg.get("service", {})
    for ext in service.get("extensions", []):
        if ext not in (cfg.get("extensions") or {}):
            problems.append(f"service.extensions names undefined extension {ext}")
    pipelines = service.get("pipelines", {})
    if "traces" not in pipelines:
        problems.append("no traces pipeline")
    used = set()
    for pname, pipe in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for comp in pipe.get(section, []):
                used.add((section, comp))
                if comp not in (cfg.get(section) or {}):
                    problems.append(f"pipeline {pname}: {section} {comp} is not defined")
        if not pipe.get("receivers") or not pipe.get("exporters"):
            problems.append(f"pipeline {pname}: needs receivers and exporters")
    for section in ("receivers", "processors", "exporters"):
        for comp in cfg.get(section) or {}:
            if (section, comp) not in used:
                problems.append(f"{section} {comp} is defined but in no pipeline")
    http = (((cfg.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("http") or {}
    if http.get("endpoint") != "0.0.0.0:4318":
        problems.append(f"receivers.otlp.protocols.http.endpoint is {http.get('endpoint')!r}, not 0.0.0.0:4318")
    fail(problems)


def cmd_compose_profiles(default_json, profile_json):
    """`docker compose config` without a profile is exactly the safe default
    stack; the observability profile only adds services; OTLP export is off
    unless asked for."""
    problems = []
    with open(default_json, encoding="utf-8") as f:
        default = json.load(f)["services"]
    with open(profile_json, encoding="utf-8") as f:
        full = json.load(f)["services"]
    expected = {"postgres", "rabbitmq", "migrate", "ingress", "worker"}
    if set(default) != expected:
        problems.append(f"without a profile compose starts {sorted(default)}, expected {sorted(expected)}")
    for name, svc in full.items():
        if name in expected:
            if svc.get("profiles"):
                problems.append(f"{name}: part of the default stack but has profiles {svc['profiles']}")
        elif svc.get("profiles") != ["observability"]:
            problems.append(f"{name}: not in the default stack, so it needs profiles: [observability]")
    for name in ("otel-collector", "jaeger", "prometheus", "grafana"):
        if name not in full:
            problems.append(f"the observability profile has no {name} service")
    for name in ("migrate", "ingress", "worker"):
        env = default.get(name, {}).get("environment", {})
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT", None) not in ("", None):
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT defaults to {env['OTEL_EXPORTER_OTLP_ENDPOINT']!r}, not empty")
        if "OTEL_EXPORTER_OTLP_ENDPOINT" not in env:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT is not passed through")
        if env.get("ACCESSGOV_LOG_FORMAT") != "json":
            problems.append(f"{name}: ACCESSGOV_LOG_FORMAT is {env.get('ACCESSGOV_LOG_FORMAT')!r}, not json")
    for name, svc in full.items():
        for port in svc.get("ports", []):
            if port.get("host_ip") != "127.0.0.1":
                problems.append(f"{name}: port {port.get('published')} is published on {port.get('host_ip')!r}, not 127.0.0.1")
        for vol in svc.get("volumes", []):
            if vol.get("type") == "bind" and not os.path.exists(vol.get("source", "")):
                problems.append(f"{name}: bind mount source {vol.get('source')} does not exist")
    fail(problems)


COMMANDS = {
    "split": cmd_split,
    "keda-schemas": cmd_keda_schemas,
    "policy": cmd_policy,
    "dashboard": cmd_dashboard,
    "alerts": cmd_alerts,
    "collector": cmd_collector,
    "compose-profiles": cmd_compose_profiles,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(COMMANDS)}}} ARGS...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
