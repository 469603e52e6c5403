#!/usr/bin/env bash
# One command from a fresh clone to a running chat: install what is missing, then start localchat
# on http://127.0.0.1:7860 with the bundled model. Extra arguments go to localchat (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/localchat "$@"
