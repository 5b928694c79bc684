#!/usr/bin/env bash
# textclf's CUDA paths in one command, one line per check with its figure (scripts/gpu_check.py says what each
# check does). Without a CUDA GPU: a CPU smoke run of the same code, exit 0 when it passes.
#   bash scripts/gpu_check.sh [--workdir DIR] [--steps N] [--skip train peer ddp predict resume]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
