#!/usr/bin/env bash
# Installs everything capfilt needs on a fresh Debian 12 machine, from the registries only:
#   - Debian packages the build and scripts use (unzip, pkg-config, chromium for page tests, ...)
#   - ONNX Runtime's CPU library, from the PyPI wheel (scripts/fetch-onnxruntime.sh)
#   - the Python venv .venv with the test tools (scripts/requirements-dev.txt) and the trainer
#     (trainer/pyproject.toml: torch, transformers, onnx, onnxruntime, ...)
# Idempotent: a second run checks and returns in a few seconds.
#
#   scripts/setup.sh            CPU set-up
#   scripts/setup.sh --gpu      also the CUDA build of ONNX Runtime (about 2.4 GB)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

gpu=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*"; }

# 1. Debian packages (chromium and its driver: the status page and report tests load pages in
#    headless Chromium; openssl: k8s/make-grpc-secrets.sh makes the TLS test's certificates).
need=()
for pkg in unzip pkg-config chromium chromium-driver openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
else
  log "Debian packages present"
fi

# 2. ONNX Runtime.
scripts/fetch-onnxruntime.sh
if [ "$gpu" = 1 ]; then scripts/fetch-onnxruntime.sh --gpu; fi

# 3. Python venv: test tools and the trainer (torch from PyPI is about 3 GB of CUDA wheels and
#    takes about 2 minutes the first time; later runs only compare a stamp).
req=scripts/requirements-dev.txt
stamp=.venv/.capfilt-stamp
want=$(cat "$req" trainer/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "python venv .venv up to date"
else
  log "creating python venv .venv ($req, trainer/ with torch and transformers)"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$req" -e "trainer[test]"
  echo "$want" > "$stamp"
fi
# 4. Offline validation of the Kubernetes manifests: kubectl (for `kubectl kustomize`; Debian's
#    kubernetes-client when none is installed) and a venv with kubernetes-validate, checkov and
#    hadolint (checkov's own pins conflict with the trainer's, hence a venv of its own).
if ! command -v kubectl >/dev/null 2>&1; then
  log "installing Debian's kubernetes-client (kubectl with kustomize)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kubernetes-client >/dev/null
fi
kreq=scripts/requirements-k8s.txt
kstamp=.venv-k8s/.capfilt-stamp
kwant=$(sha256sum "$kreq" | cut -d' ' -f1)
if [ -f "$kstamp" ] && [ "$(cat "$kstamp")" = "$kwant" ]; then
  log "python venv .venv-k8s up to date"
else
  log "creating python venv .venv-k8s ($kreq)"
  [ -x .venv-k8s/bin/python ] || python3 -m venv .venv-k8s
  .venv-k8s/bin/python -m pip install --quiet --disable-pip-version-check -r "$kreq"
  echo "$kwant" > "$kstamp"
fi
log "done"
