#!/usr/bin/env bash
# The installed wheel, as a user gets it from an index: build it, install it (not editable) into a fresh
# virtual environment, and run textclf from a folder outside the source tree, so nothing can come from the
# checkout (the YAML groups must come from the wheel's textclf.conf).
#   bash scripts/wheel_smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel --no-deps --quiet --wheel-dir "$work/dist" .
wheel=$(ls "$work"/dist/textclf-*.whl)
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
PYTHON="$work/venv/bin/python" TEXTCLF_INSTALL="$wheel" bash scripts/setup.sh >"$work/install.log" 2>&1 \
    || { cat "$work/install.log"; exit 1; }
tail -n 1 "$work/install.log"
mkdir "$work/outside" && cd "$work/outside"
textclf="$work/venv/bin/textclf"
where=$("$work/venv/bin/python" -c "import textclf.conf, pathlib; print(pathlib.Path(textclf.conf.__file__).parent)")
case "$where" in "$work/venv/"*) ;; *) echo "wheel smoke: textclf.conf came from $where, not the wheel" >&2; exit 1 ;; esac
"$textclf" train --cfg job >job.yaml
grep -q "^pooling:" job.yaml && grep -q "_target_: textclf.observe.loggers.CSVLogger" job.yaml
export HF_HUB_OFFLINE=1
"$textclf" train debug=fast hydra.run.dir=run
test -f run/run.json && test -f run/metrics.json && test -f run/fold_0/history.csv
echo "wheel smoke: $(basename "$wheel") installed outside the source tree: --cfg job and textclf train debug=fast ok"
