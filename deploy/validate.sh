#!/usr/bin/env bash
# Offline checks of the deploy artifacts: Dockerfile, docker-compose.yml, the
# demo configs and the Kubernetes base. No Docker engine, cluster or network
# besides PyPI is needed; missing tools are installed with pip on the first run
# (later runs reuse them and take about a second).
#
#   deploy/validate.sh            # from anywhere; exit 0 = every check passed
#   K8S_VERSION=1.33 deploy/validate.sh
#
# Prints one "ok: <check>" line per check; a failing check prints
# "FAIL: <check>" with the tool's output, the remaining checks still run, and
# the script exits 1.
set -euo pipefail

# Pinned so a new release of a validator cannot turn CI red on its own.
readonly CHECK_JSONSCHEMA_SPEC="check-jsonschema==0.39.0"
readonly KUBERNETES_VALIDATE_SPEC="kubernetes-validate==1.37.0"
# Kubernetes minor the manifests are checked against; kubernetes-validate
# 1.37.0 bundles the schemas of 1.25-1.37.
readonly K8S_VERSION="${K8S_VERSION:-1.31}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

compose_file=docker-compose.yml
dockerfile=Dockerfile
k8s_dir=deploy/k8s
compose_config=deploy/compose/accessgov.toml

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failures=0

# check NAME CMD...: run CMD quietly; print "ok: NAME", or "FAIL: NAME" and
# CMD's output (indented) and remember the failure.
check() {
    local name="$1"
    shift
    if "$@" >"$tmp/out" 2>&1; then
        printf 'ok: %s\n' "$name"
    else
        printf 'FAIL: %s\n' "$name"
        sed 's/^/    /' "$tmp/out"
        failures=$((failures + 1))
    fi
}

# --- tools --------------------------------------------------------------------

# pip may put console scripts in a directory that is not on PATH (pyenv before
# a rehash, --user installs); add those so `command -v` finds them.
py_scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
py_user_bin="$(python3 -m site --user-base)/bin"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/accessgov/validate-venv"
export PATH="$PATH:$py_scripts:$py_user_bin:$venv/bin"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# ensure_tool COMMAND PIP_SPEC: install PIP_SPEC unless COMMAND already exists.
# Tries the current python3 first; where that interpreter refuses
# (PEP 668 "externally managed", e.g. Debian's own python3), falls back to a
# private virtualenv in the user's cache.
ensure_tool() {
    local cmd="$1" spec="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
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
    command -v "$cmd" >/dev/null 2>&1
}

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

check "dockerfile multi-stage (FROM ... AS build)" dockerfile_multistage
check "dockerfile runs as non-root USER" dockerfile_nonroot

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

# --- database roles -----------------------------------------------------------

# Only the migration step gets the owner's database credentials: in compose the
# `migrate` service alone sets ACCESSGOV_DATABASE_MIGRATE_URL, in Kubernetes the
# migrate Job alone reads the Secret accessgov-migrate-secrets; ingress and
# worker connect as the runtime role accessgov_app.
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
    where="$(grep -l 'accessgov-migrate-secrets' "$k8s_dir"/*.yaml | grep -v secret.example.yaml | paste -sd ' ' - || true)"
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

if ensure_tool check-jsonschema "$CHECK_JSONSCHEMA_SPEC"; then
    check "compose schema" check-jsonschema --builtin-schema vendor.compose-spec "$compose_file"
else
    printf 'FAIL: compose schema: could not install %s from PyPI (output above)\n' "$CHECK_JSONSCHEMA_SPEC"
    failures=$((failures + 1))
fi

# --- Kubernetes ---------------------------------------------------------------

rendered="$tmp/k8s.yaml"
render_kustomize() { kubectl kustomize "$k8s_dir" >"$rendered"; }
render_ok=true
if command -v kubectl >/dev/null 2>&1; then
    before=$failures
    check "kustomize render ($k8s_dir)" render_kustomize
    ((failures == before)) || render_ok=false
else
    # Without kubectl the generated ConfigMap cannot be rendered, but the plain
    # manifests can still be schema-checked as they are.
    printf 'skip: kustomize render (kubectl not found); checking the plain manifests\n'
    for f in "$k8s_dir"/*.yaml; do
        [[ "$(basename "$f")" == kustomization.yaml ]] && continue
        printf -- '---\n' >>"$rendered"
        cat "$f" >>"$rendered"
    done
fi
# The example Secret is not part of the base but must stay a valid manifest.
printf -- '---\n' >>"$rendered"
cat "$k8s_dir/secret.example.yaml" >>"$rendered"

if ! $render_ok; then
    printf 'skip: k8s schema (nothing rendered)\n'
elif ! ensure_tool kubernetes-validate "$KUBERNETES_VALIDATE_SPEC"; then
    printf 'FAIL: k8s schema: could not install %s from PyPI (output above);\n' "$KUBERNETES_VALIDATE_SPEC"
    printf '    install it by hand (python3 -m pip install %s) and re-run.\n' "$KUBERNETES_VALIDATE_SPEC"
    failures=$((failures + 1))
else
    # --strict: reject fields the schema does not know (typos would otherwise
    # pass and be silently dropped by the API server).
    check "k8s schema (Kubernetes $K8S_VERSION, strict)" \
        kubernetes-validate --strict -k "$K8S_VERSION" "$rendered"
fi

if ((failures > 0)); then
    printf '%d check(s) failed\n' "$failures"
    exit 1
fi
