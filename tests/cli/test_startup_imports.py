"""What a fresh `textclf` process imports before it answers: `--help` loads no torch, and a refused config loads
nothing heavy beyond torch (Hydra imports the callback modules and the config check imports every chosen
`_target_` module for its signature; ARCHITECTURE.md says why those modules import the rest where they use it).

These run a new interpreter (the forked CLI server of the other tests has imported everything already)."""
from __future__ import annotations

import json
import subprocess
import sys

#: libraries a refused config must not wait for
HEAVY = ("transformers", "pandas", "pyarrow", "sklearn", "scipy", "iterstrat", "matplotlib")

PROBE = """
import json, sys
sys.argv = ["textclf"] + json.loads(sys.argv[1])
import textclf.cli
try:
    code = textclf.cli.main()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _imports(tmp_path, *args: str) -> tuple[object, set[str]]:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["code"], set(result["loaded"])


def test_help_imports_no_torch(tmp_path):
    code, loaded = _imports(tmp_path, "--help")
    assert code in (0, None)
    assert "torch" not in loaded


def test_a_refused_config_loads_nothing_heavy_but_torch(tmp_path):
    # an option of every `_target_` group whose default builds nothing, so each kind of module is imported
    code, loaded = _imports(tmp_path, "train", "trainer.epochs=abc", "augment=mlm", "kfold=multilabel_stratified",
                            "adversarial=awp", "ema=default", "rdrop=default", "calibrate=temperature",
                            "logger=[csv,tensorboard,mlflow]", "loss=focal", "pooling=attention")
    assert code not in (0, None)
    assert not loaded & set(HEAVY), f"a refused config imported {sorted(loaded & set(HEAVY))}"
