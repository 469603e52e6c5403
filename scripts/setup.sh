#!/usr/bin/env bash
# Install localchat into ./.venv (Linux and macOS; Windows: scripts\start.ps1). The work is done by
# scripts/setup.py (the same on every platform; see it for TORCH_INDEX_URL, TORCH_VERSION and
# LOCALCHAT_EXTRAS). PYTHON=... picks the interpreter that runs it and creates the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  # a python3 new enough if there is one (macOS's /usr/bin/python3 is 3.9); setup.py says if none is
  for candidate in python3 python3.14 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON="$candidate"
      break
    fi
  done
fi
exec "${PYTHON:-python3}" scripts/setup.py
