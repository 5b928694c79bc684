"""`textclf export`: a run's folds as ONNX models that ONNX Runtime alone serves, and `predict backend=onnx`.

Each fold becomes one graph, backbone + pooling + head -> logits, exported with torch.onnx's default (dynamo)
exporter with dynamic batch and sequence axes. The TorchScript exporter is not used: it bakes shape-dependent
branches of current transformers models into the graph and its logits come out wrong on other shapes. Every
export is checked against the PyTorch model at export time (TOLERANCE, on several batch sizes and lengths from 1
to max_length, padded on the tokenizer's side) and refused when it differs. Sliding-window aggregation and the
fold ensemble stay in textclf (textclf.inference), so both backends share them; loading the exported folds for
`predict backend=onnx` lives there too (inference.onnx_folds).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import AutoModel

from textclf import __version__
from textclf.commands import fusion
from textclf.config.options import chosen
from textclf.config.schema import validate_export
from textclf.data.tables import marks_segments, resolve_path
from textclf.errors import TextclfError
from textclf.inference.onnx_folds import EXPORT_MANIFEST, require, session
from textclf.inference.runs import RunModel, load_run
from textclf.inference.torch_folds import load_torch_model
from textclf.io import atomic_path, unwritable, write_json, write_text
from textclf.run import folder
from textclf.run.checkpoint import fault_point
from textclf.run.manifest import sha256

log = logging.getLogger(__name__)

#: largest |ONNX - PyTorch| allowed on the logits (fp32), relative to max(1, the largest |logit|)
TOLERANCE = 1e-4
#: batch sizes and lengths the export is checked on (lengths: 1, about half of max_length, max_length)
CHECK_BATCHES = (1, 2, 7)
#: an int8 export whose argmax agrees with fp32 on fewer of the check rows than this gets a warning
INT8_AGREEMENT = 0.9
#: the graph's inputs, in order (token_type_ids only where the backbone and tokenizer use them)
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ----------------------------------------------------------------------------- the graph
def graph_inputs(run) -> list[str]:
    """input_ids, attention_mask, and token_type_ids where the backbone takes them and the tokenizer gives them
    (BERT) or marks tokens with non-zero segments (XLNet's <cls>); RoBERTa's tokenizer gives none."""
    model_class = AutoModel._model_mapping.get(type(run.backbone_config), None)
    takes = model_class is None or "token_type_ids" in inspect.signature(model_class.forward).parameters
    tokenizer = run.tokenizer
    gives = "token_type_ids" in tokenizer.model_input_names or marks_segments(tokenizer)
    return list(INPUTS if takes and gives else INPUTS[:2])


class LogitsGraph(torch.nn.Module):
    """The classifier with integer inputs; the mask goes on as float32: XLNet computes `1.0 - mask`, which
    torch.export cannot trace on an integer tensor, and every backbone gives the same logits with a float
    mask (verify() checks each export)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids, attention_mask.to(torch.float32), token_type_ids)


def export_graph(model, names: list[str], path: Path, *, opset: int | None, what: str) -> None:
    """torch.onnx.export with dynamic batch and sequence axes; a clear error when the model cannot be exported."""
    example = {n: torch.ones(2, 8, dtype=torch.long) for n in names}
    example["attention_mask"][1, 6:] = 0
    if "token_type_ids" in example:
        example["token_type_ids"].zero_()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    large = _needs_external_data(model)
    with _quiet_exporter(), atomic_path(path) as tmp:
        try:
            torch.onnx.export(LogitsGraph(model).eval(), tuple(example[n] for n in names), str(tmp), input_names=names,
                              output_names=["logits"], dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
                              opset_version=opset, dynamo=True, external_data=large, verbose=False)
        except Exception as e:  # noqa: BLE001 - torch.export and the ONNX translation raise many kinds
            reason = next((line for line in str(e).strip().splitlines() if line.strip()), type(e).__name__)
            raise TextclfError(f"{what} cannot be exported to ONNX by torch.onnx ({type(e).__name__}: "
                               f"{reason[:300]}); predict it with backend=torch") from None


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints its progress and warns about torchvision and axis names, ONNX Runtime's optimizer and
    quantizer log each step under their own top-level module names: none of it is the user's. Log records below
    ERROR, warnings and stdout are dropped for the duration."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _needs_external_data(model) -> bool:
    """Whether the model's weights pass protobuf's 2 GB limit for one ONNX file (with room for the graph)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8e9


# ----------------------------------------------------------------------------- checking an export
def check_inputs(run, names: list[str], seed: int = 0) -> list[dict]:
    """Batches of 1, 2 and 7 rows at lengths 1, about max_length/2 and max_length: random token ids, rows of
    random lengths padded on the tokenizer's side (the first row is full), random segment ids where used."""
    rng = np.random.default_rng(seed)
    config, tokenizer = run.backbone_config, run.tokenizer
    max_length = int(run.cfg.model.max_length)
    vocab = int(getattr(config, "vocab_size", None) or len(tokenizer))
    types = int(getattr(config, "type_vocab_size", 2) or 1)
    pad_id, pad_type = int(tokenizer.pad_token_id or 0), int(getattr(tokenizer, "pad_token_type_id", 0) or 0)
    left = tokenizer.padding_side == "left"
    feeds = []
    for length in sorted({1, max(1, max_length // 2), max_length}):
        for size in CHECK_BATCHES:
            lengths = np.concatenate([[length], rng.integers(1, length + 1, size - 1)]).astype(int)
            real = np.arange(length)[None, :] >= (length - lengths[:, None]) if left else \
                np.arange(length)[None, :] < lengths[:, None]
            feed = {"input_ids": np.where(real, rng.integers(0, vocab, (size, length)), pad_id),
                    "attention_mask": real.astype(np.int64)}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.where(real, rng.integers(0, types, (size, length)), pad_type)
            feeds.append({k: v.astype(np.int64) for k, v in feed.items()})
    return feeds


def torch_logits(model, feed: dict) -> np.ndarray:
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).float().numpy()


def verify(model, session, feeds: list[dict], what: str) -> float:
    """The largest |ONNX - PyTorch| on the check inputs, relative to max(1, |logit|); an error above TOLERANCE."""
    worst = 0.0
    for feed in feeds:
        ref, got = torch_logits(model, feed), session.run(["logits"], feed)[0]
        scale = max(1.0, float(np.abs(ref).max()))
        diff = float(np.abs(ref - got).max()) / scale if got.shape == ref.shape else float("inf")
        if not diff <= TOLERANCE:
            size, length = feed["input_ids"].shape
            raise TextclfError(f"{what}: the exported ONNX graph does not reproduce the PyTorch model (largest "
                               f"logit difference {diff:.3g} x {scale:.3g} on a batch of {size} x {length} tokens, "
                               f"allowed {TOLERANCE:g}); this architecture cannot be exported faithfully, predict "
                               f"it with backend=torch")
        worst = max(worst, diff)
    return worst


def int8_agreement(model, session, feeds: list[dict]) -> tuple[float, float]:
    """(share of check rows whose argmax the int8 graph keeps, largest |int8 - fp32| logit difference)."""
    same, rows, worst = 0, 0, 0.0
    for feed in feeds:
        ref, got = torch_logits(model, feed), session.run(["logits"], feed)[0]
        same += int((ref.argmax(1) == got.argmax(1)).sum()) if ref.shape[1] > 1 else int(((ref > 0) == (got > 0)).sum())
        rows += len(ref)
        worst = max(worst, float(np.abs(ref - got).max()))
    return same / max(rows, 1), worst


def quantize_int8(fp32: Path, int8: Path, *, fused: bool = False) -> None:
    """Dynamic int8 quantization of the MatMul weights, and of the fused Attention nodes' Q, K, V projections
    (activations quantized at run time); embeddings, norms and softmax stay fp32, which keeps the accuracy cost
    small. Static quantization (activation ranges from a calibration sample) is not offered: on CPU it measured
    slower than dynamic (scripts/bench_predict.py --quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Attention"] if fused else ["MatMul"]
    with _quiet_exporter(), atomic_path(int8) as tmp:
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=ops)


# ----------------------------------------------------------------------------- textclf export
def export(cfg: DictConfig) -> None:
    validate_export(cfg)
    run_dir = resolve_path(str(cfg.run_dir))
    run_cfg, labels, weights = load_run(run_dir, cfg.folds)
    out = check_export_output(cfg, run_dir)
    require("onnx", "onnxscript", "onnxruntime", what="textclf export format=onnx")
    run = RunModel.load(run_dir, run_cfg, labels, weights)
    names = graph_inputs(run)
    start_export(out, weights)
    folds = [export_fold(run, path, names, out, cfg) for path in weights]
    run.tokenizer.save_pretrained(str(out / TOKENIZER))
    shutil.copyfile(run_dir / folder.LABELS, out / folder.LABELS)
    manifest = export_manifest(run, names, folds, cfg)
    write_text(out / README, readme(run, manifest))
    manifest["files"] = {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*"))
                         if p.is_file() and p.name not in (EXPORT_MANIFEST, folder.RECORD)}
    write_json(out / EXPORT_MANIFEST, manifest)  # last: a folder with export.json is a finished export
    for fold in folds:
        graph = ("fused: " + ", ".join(f"{n} {name}" for name, n in fold["optimized"].items() if n)
                 if fold["optimized"] else "plain graph")
        log.info("%s -> %s (%s; largest logit difference to PyTorch %.2g, allowed %g%s)", fold["fold"],
                 out / fold["file"], graph, fold["max_abs_diff"], TOLERANCE,
                 f"; int8 keeps the argmax of {fold['int8_argmax_agreement']:.0%} of the check rows"
                 if "int8_argmax_agreement" in fold else "")
    log.info("exported %d fold(s) of %s to %s: textclf predict run_dir=%s backend=onnx%s ...", len(folds), run_dir, out,
             run_dir, "" if out == run_dir / "export" else f" export_dir={out}")
    print(out)


TOKENIZER, README = "tokenizer", "README.md"


def start_export(out: Path, weights: list[Path]) -> None:
    """Record what the export writes (in the export folder's record, and in the run folder's when the export
    folder is inside it), then remove what an earlier or interrupted export left: the export starts over."""
    folder.claim_inside_run(out)
    out.mkdir(parents=True, exist_ok=True)
    fold_names = [n for w in weights for n in (f"{w.parent.name}.onnx", f"{w.parent.name}.int8.onnx")]
    folder.claim(out, [EXPORT_MANIFEST, f"{TOKENIZER}/", folder.LABELS, README, *fold_names])
    (out / EXPORT_MANIFEST).unlink(missing_ok=True)  # a folder with export.json is a finished export
    record = folder.recorded(out) or set()
    for entry in sorted(out.iterdir()):
        if entry.name != folder.RECORD and folder.is_recorded(out, entry.name, record):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def export_fold(run, path: Path, names: list[str], out: Path, cfg: DictConfig) -> dict:
    """One fold: export (fused by ONNX Runtime's transformer optimizer where asked and possible, else the plain
    graph), check against PyTorch, quantize when asked; its entry in export.json."""
    fold = path.parent.name
    model = load_torch_model(path, run.make_model, "cpu")
    pooling = chosen("pooling", run.cfg, choices=folder.read_choices(run.run_dir))
    what = f"{fold}: the {run.backbone_config.model_type} backbone with pooling={pooling}"
    fp32 = out / f"{fold}.onnx"
    fault_point(f"export:{fold}")
    feeds = check_inputs(run, names)
    entry = {"fold": fold, "file": fp32.name, "weights_sha256": sha256(path)}
    fused = fuse_fold(run, model, names, fp32, feeds, what, cfg) if cfg.optimize else None
    if fused is None:
        export_graph(model, names, fp32, opset=cfg.opset, what=what)
        entry.update(max_abs_diff=verify(model, session(fp32), feeds, what), optimized=False)
    else:
        entry.update(max_abs_diff=fused.pop("max_abs_diff"), optimized=fused)
    if cfg.quantize == "int8":
        int8 = out / f"{fold}.int8.onnx"
        quantize_int8(fp32, int8, fused=fused is not None)
        fp32.unlink()
        agreement, diff = int8_agreement(model, session(int8), feeds)
        entry.update(file=int8.name, int8_argmax_agreement=agreement, int8_max_abs_diff=diff)
        if agreement < INT8_AGREEMENT:
            log.warning("%s: the int8 model keeps the fp32 argmax on only %.0f%% of the check rows (random tokens); "
                        "measure its accuracy on labelled data (predict backend=onnx input=<labelled table>) before "
                        "serving it", fold, 100 * agreement)
    return entry


def fuse_fold(run, model, names: list[str], fp32: Path, feeds: list[dict], what: str, cfg: DictConfig) -> dict | None:
    """The fold's graph fused by ONNX Runtime's transformer optimizer (commands.fusion) at `fp32`, checked against
    PyTorch with TOLERANCE: the fused operator counts and the largest difference. None, with a message, when the
    family has no fusion patterns, nothing fused, or the fused graph differs (the caller exports the plain graph)."""
    reason = fusion.unsupported(run.backbone_config)
    if reason:
        log.info("%s: %s; exporting the plain graph", what, reason)
        return None
    large = _needs_external_data(model)
    try:
        with tempfile.TemporaryDirectory(prefix="textclf-export-") as tmp:
            raw = Path(tmp) / "raw.onnx"
            with fusion.fusable(model):
                export_graph(model, names, raw, opset=cfg.opset, what=what)
            with _quiet_exporter(), atomic_path(fp32) as target:
                counts = fusion.optimize(raw, target, run.backbone_config, large=large)
    except Exception as e:  # noqa: BLE001 - the exporter or the optimizer on a graph it does not know
        log.warning("%s: the graph could not be fused (%s: %s); exporting the plain graph", what, type(e).__name__,
                    (str(e).strip().splitlines() or [""])[0][:200])
        return None
    if not counts["Attention"]:
        log.warning("%s: ONNX Runtime's transformer optimizer fused no attention layer in this graph; exporting "
                    "the plain graph (optimize=false skips the attempt)", what)
        return None
    try:
        counts["max_abs_diff"] = verify(model, session(fp32), feeds, what)
    except TextclfError as e:
        log.warning("%s: the fused graph was refused (%s); exporting the plain graph", what, str(e).split(": ", 1)[-1])
        return None
    return counts


def check_export_output(cfg: DictConfig, run_dir: Path) -> Path:
    """The export folder: default <run_dir>/export; never the run folder itself, one of its fold or backbone
    folders, a file, or a folder holding other files."""
    out = resolve_path(str(cfg.output)) if cfg.output else run_dir / "export"
    where = f"output {str(cfg.output or out)!r}"
    if out.exists() and not out.is_dir():
        raise TextclfError(f"{where} is a file: export writes a folder (several models, the tokenizer, labels.json); "
                           f"give a folder name, e.g. output={out.with_suffix('')}_onnx")
    try:
        inside = out.resolve().relative_to(run_dir.resolve()).parts
    except ValueError:
        inside = None
    if inside is not None and (not inside or inside[0] == folder.BACKBONE or inside[0].startswith(folder.FOLD_PREFIX)):
        place = "the run folder itself" if not inside else f"inside the run's {inside[0]}/"
        raise TextclfError(f"{where} is {place}: the export would mix with the run's own files; leave output out "
                           f"(<run_dir>/export) or give another folder")
    # an earlier export (finished or interrupted) is textclf's and is replaced; anything else is the user's
    folder.refuse_foreign(out, "output", "give an empty or new folder, or move those files out")
    problem = unwritable(out)
    if problem:
        raise TextclfError(f"{where}: {problem}; give output=<a folder you can write to>")
    return out


def export_manifest(run, names: list[str], folds: list[dict], cfg: DictConfig) -> dict:
    import onnxruntime

    tokenizer, mcfg = run.tokenizer, run.cfg.model
    return {"written_by": "textclf", "version": __version__, "format": "onnx", "quantize": cfg.quantize,
            "optimize": bool(cfg.optimize),
            "inputs": names, "output": "logits", "tolerance": TOLERANCE, "folds": folds,
            "task": run.labels.task, "max_length": int(mcfg.max_length), "truncation": str(mcfg.truncation),
            "padding_side": tokenizer.padding_side, "pad_token_id": int(tokenizer.pad_token_id or 0),
            "pad_token": str(tokenizer.pad_token), "pad_token_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            "backbone": run.backbone_config.model_type, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


OUTPUT_CODE = {  # the README snippet's last lines, per task: probabilities (or values) and decisions
    "multiclass": ("p = np.mean([softmax(s.run(['logits'], feed)[0]) for s in sessions], axis=0)",
                   "return [labels['classes'][i] for i in p.argmax(1)], p"),
    "multilabel": ("p = np.mean([1 / (1 + np.exp(-s.run(['logits'], feed)[0])) for s in sessions], axis=0)",
                   "return [[c for c, on in zip(labels['classes'], row) if on] for row in p >= {threshold}], p"),
    "regression": ("p = np.mean([s.run(['logits'], feed)[0] for s in sessions], axis=0)", "return p"),
}


def readme(run, manifest: dict) -> str:
    """The export folder's README: what is in it, and the ten lines of ONNX Runtime that reproduce predict."""
    labels, names = run.labels, manifest["inputs"]
    task = labels.task if labels.task != "binary" else "multiclass"
    probs, decide = OUTPUT_CODE[task]
    if labels.single_logit:
        probs = "p1 = np.mean([1 / (1 + np.exp(-s.run(['logits'], feed)[0][:, 0])) for s in sessions], axis=0)\n" \
                "    p = np.stack([1 - p1, p1], axis=1)"
    if labels.temperature is not None:  # calibrate=temperature: logits / T, as predict does
        probs = probs.replace("s.run(['logits'], feed)[0]", "(s.run(['logits'], feed)[0] / labels['temperature'])")
    if labels.task == "binary" and (labels.positive != 1 or float(labels.thresholds()[0]) != 0.5):
        pos, t = labels.positive, float(labels.thresholds()[0])
        decide = f"return [labels['classes'][i] for i in np.where(p[:, {pos}] >= {t}, {pos}, {1 - pos})], p"
    feed = "\n".join(f"        {n!r}: np.array([e.{FIELDS[n]} for e in enc], dtype=np.int64)," for n in names)
    files = [f["file"] for f in manifest["folds"]]
    side = "left" if manifest["truncation"] == "tail" else "right"
    code = f"""import json
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

labels = json.load(open("labels.json"))
tokenizer = Tokenizer.from_file("tokenizer/tokenizer.json")
tokenizer.enable_truncation(max_length={manifest['max_length']}, direction="{side}")
tokenizer.enable_padding(direction="{manifest['padding_side']}", pad_id={manifest['pad_token_id']}, pad_token={manifest['pad_token']!r}, pad_type_id={manifest['pad_token_type_id']})
sessions = [ort.InferenceSession(f) for f in {files!r}]
softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)

def predict(texts):
    enc = tokenizer.encode_batch(texts)
    feed = {{
{feed}
    }}
    {probs}
    {decide.format(threshold=labels.thresholds().tolist())}

print(predict(["first text to classify", "second one"]))
"""
    kind = "int8 (dynamic quantization of the MatMul weights)" if manifest["quantize"] == "int8" else "fp32"
    fused = [f["fold"] for f in manifest["folds"] if f.get("optimized")]
    fused_note = (f"{'Every fold is' if len(fused) == len(files) else ', '.join(fused) + ' are'} fused by ONNX "
                  f"Runtime's transformer optimizer: its `com.microsoft` operators run in ONNX Runtime only "
                  f"(`textclf export ... optimize=false` writes standard ONNX operators).\n" if fused else "")
    return f"""# ONNX export of a textclf run

{len(files)} fold model(s), {kind}, one per fold: backbone ({manifest['backbone']}) + pooling + head -> `logits`.
{fused_note}Inputs: {', '.join(f'`{n}`' for n in names)} (int64, shape batch x sequence, both axes dynamic). Each export was
checked against the PyTorch model on batches of 1 to 7 rows and lengths 1 to {manifest['max_length']}: largest
logit difference {max(f['max_abs_diff'] for f in manifest['folds']):.2g} (allowed {manifest['tolerance']:g}).
`labels.json` holds the classes and decision thresholds, `tokenizer/` the tokenizer, `export.json` the details.

`textclf predict run_dir=<run> input=<table> output=<csv> backend=onnx export_dir=<this folder>` runs these models
with textclf's batching, ensembling and output. ONNX Runtime and the `tokenizers` library alone reproduce it (in
this folder; predict averages the folds' probabilities as below):

```python
{code}```
{WINDOW_NOTE if manifest['truncation'] in ('head_tail', 'window') else ''}"""


FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
WINDOW_NOTE = """
The run truncates with model.truncation=head_tail or window, which textclf does itself (the snippet above keeps the
head of each text only): use `textclf predict backend=onnx` for the same predictions.
"""
