"""model.init_from=<run folder | fold folder | .safetensors | .bin/.pt>: start a classifier from earlier weights.

The classifier is built as usual (backbone from model.name_or_path, fresh pooling and head); then every tensor of
the given weights whose name and shape match the composed model replaces the built one. Keys are compared by name
and shape, after mapping a prefix difference (a bare HF backbone `embeddings.*` -> `backbone.embeddings.*`, an HF
task model `bert.*` -> `backbone.*`, the `module.` / `_orig_mod.` of DDP and torch.compile):

  loaded      name and shape match: taken from the file
  missing     in the model, not in the file: kept as built
  unexpected  in the file, not in the model: ignored
  mismatched  same name, another shape (a head for another number of classes): kept as built (re-initialised)

The report of that (what init_report.json holds) and a one-line summary in the log say what happened. Nothing is
unpickled: .safetensors files are read as such, .bin/.pt only through torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from textclf.data.tables import resolve_path
from textclf.errors import TextclfError
from textclf.io import write_json

log = logging.getLogger(__name__)

KEY = "model.init_from"
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
#: what DDP (`module.`) and torch.compile (`_orig_mod.`) put before every key of a wrapped model's state dict
WRAPPERS = ("module.", "_orig_mod.")
#: nested state dicts of common training-checkpoint layouts (Lightning, plain scripts)
NESTED = ("state_dict", "model_state_dict", "model", "module")


# ----------------------------------------------------------------------------- naming weights for people
def group_names(names, limit: int = 8) -> str:
    """Parameter names grouped for a message, in the order given: the layers of one stack become a range
    (`encoder.layer.0-11.* (192)`), the weights of one module `pooler.dense.* (2)`, a lone weight its name."""
    order, named, stacks = [], {}, {}
    for name in names:
        parts = name.split(".")
        at = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        if at is None:
            if parts[0] not in named:
                named[parts[0]] = []
                order.append((False, parts[0]))
            named[parts[0]].append(parts)
        else:
            stem = ".".join(parts[:at])
            if stem not in stacks:
                stacks[stem] = {}
                order.append((True, stem))
            stacks[stem].setdefault(int(parts[at]), []).append(parts)
    shown = []
    for is_stack, key in order:
        if not is_stack:
            shown.extend(_split_group(named[key]))
            continue
        runs: list[list] = []  # [first, last, members] of consecutive layer numbers
        for number in sorted(stacks[key]):
            if runs and runs[-1][1] == number - 1:
                runs[-1][1] = number
                runs[-1][2] += stacks[key][number]
            else:
                runs.append([number, number, list(stacks[key][number])])
        for first, last, members in runs:
            shown.append(_one_group(members) if first == last
                         else f"{key + '.' if key else ''}{first}-{last}.* ({len(members)})")
    if len(shown) > limit:
        shown = shown[:limit] + [f"and {len(shown) - limit} more groups"]
    return ", ".join(shown)


def _split_group(members: list[list[str]]) -> list[str]:
    """One group of a top-level name, or one per second name when each of those holds several weights
    (`model.embeddings.* (5), model.pooler.* (2)` rather than `model.* (7)`)."""
    subgroups: dict[str, list[list[str]]] = {}
    for parts in members:
        subgroups.setdefault(parts[1] if len(parts) > 2 else "", []).append(parts)
    if len(subgroups) > 1 and "" not in subgroups and all(len(g) > 1 for g in subgroups.values()):
        return [_one_group(g) for g in subgroups.values()]
    return [_one_group(members)]


def _one_group(members: list[list[str]]) -> str:
    if len(members) == 1:
        return ".".join(members[0])
    common = []
    for column in zip(*(m[:-1] for m in members)):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    return f"{'.'.join(common or members[0][:1])}.* ({len(members)})"


def shape_text(shape) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


# ----------------------------------------------------------------------------- the key comparison
@dataclass
class Comparison:
    loaded: list[str] = field(default_factory=list)  # model names
    missing: list[str] = field(default_factory=list)  # model names
    unexpected: list[str] = field(default_factory=list)  # file names
    mismatched: list[dict] = field(default_factory=list)  # {name (model's), model_shape, file_shape}
    mapped: list[dict] = field(default_factory=list)  # {from, to, count}: prefix substitutions made
    sources: dict[str, str] = field(default_factory=dict)  # model name -> file name, for every loaded/mismatched


def _unwrap(name: str) -> tuple[str, str]:
    wrapper = ""
    while name.startswith(WRAPPERS):
        cut = next(w for w in WRAPPERS if name.startswith(w))
        wrapper, name = wrapper + cut, name[len(cut):]
    return wrapper, name


def compare_keys(model_shapes: dict[str, tuple], file_tensors: dict) -> Comparison:
    """Sort every model and file key into loaded / missing / unexpected / mismatched, by name and shape, after the
    one prefix substitution (file `strip` -> model `add`, `add` being `backbone.` or nothing) that lets the most
    file names match the model's; DDP's `module.` and torch.compile's `_orig_mod.` are dropped first."""
    unwrapped = {name: _unwrap(name) for name in file_tensors}
    strips = [""] + sorted({n.split(".", 1)[0] + "." for _, n in unwrapped.values() if "." in n})
    # the substitutions worth making put a checkpoint's encoder under the classifier's `backbone.`: a bare HF
    # backbone (`embeddings.*`) or the encoder of an HF task model (`bert.*`, `roberta.*`, ...)
    adds = [""] + (["backbone."] if any(k.startswith("backbone.") for k in model_shapes) else [])

    def target(name: str, strip: str, add: str) -> str | None:
        if name in model_shapes:
            return name
        if strip or add:
            if name.startswith(strip) and add + name[len(strip):] in model_shapes:
                return add + name[len(strip):]
        return None

    best, best_count = ("", ""), -1
    for strip in strips:
        for add in adds:
            if strip == add and strip:
                continue
            count = sum(target(n, strip, add) is not None for _, n in unwrapped.values())
            if count > best_count:  # a tie keeps the earlier: no substitution first, then in name order
                best, best_count = (strip, add), count
    cmp, taken, mapped = Comparison(), set(), Counter()
    for original in sorted(file_tensors):
        wrapper, name = unwrapped[original]
        to = target(name, *best)
        if to is None or to in taken:
            cmp.unexpected.append(original)
            continue
        taken.add(to)
        cmp.sources[to] = original
        if to != original:
            strip, add = best if to != name else ("", "")
            mapped[(wrapper + strip, add)] += 1
        file_shape = tuple(file_tensors[original].shape)
        if file_shape == tuple(model_shapes[to]):
            cmp.loaded.append(to)
        else:
            cmp.mismatched.append({"name": to, "model_shape": list(model_shapes[to]), "file_shape": list(file_shape)})
    cmp.loaded.sort()
    cmp.mismatched.sort(key=lambda m: m["name"])
    cmp.missing = sorted(set(model_shapes) - taken)
    cmp.mapped = [{"from": f, "to": t, "count": n} for (f, t), n in mapped.most_common()]
    return cmp


# ----------------------------------------------------------------------------- where the weights are
@dataclass
class InitSource:
    given: str  # model.init_from as typed
    files: list[Path]  # the weights file (or the shards of one)
    label: str  # how messages name it: "<given>" or "<given> (fold_0/model.safetensors)"

    def tensors(self) -> dict:
        out = {}
        for path in self.files:
            out.update(_read_torch(self, path) if path.suffix in TORCH_SUFFIXES else _read_safetensors(self, path))
        if not out:
            raise TextclfError(f"{KEY}={self.given!r}: {self.files[0]} holds no tensors")
        return out


def _read_safetensors(source: InitSource, path: Path) -> dict:
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, OSError: a truncated or foreign file
        raise TextclfError(f"{KEY}={source.given!r}: {path} is not a readable safetensors file "
                           f"({type(e).__name__}: {_first_line(e)})") from None


def _read_torch(source: InitSource, path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError for objects weights_only will not build; others for junk
        raise TextclfError(f"{KEY}={source.given!r}: {path} is not a plain-tensor file that "
                           f"torch.load(weights_only=True) reads ({type(e).__name__}: {_first_line(e)}); textclf never "
                           f"unpickles other objects: where you trust the file, re-save its state dict with "
                           f"safetensors.torch.save_file and pass that") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = next((obj[k] for k in NESTED if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict):
        raise TextclfError(f"{KEY}={source.given!r}: {path} holds a {type(obj).__name__}, not a state dict "
                           f"(a mapping of names to tensors)")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def _fold_weights(run: Path) -> list[str]:
    found = [p.parent.name for p in run.glob("fold_*/model.safetensors") if p.parent.name[5:].isdigit()]
    return sorted(found, key=lambda n: int(n[5:]))


def _is_run_folder(folder: Path) -> bool:
    return (folder / "run.json").is_file() or ((folder / "config.yaml").is_file() and any(folder.glob("fold_*")))


def resolve_init_from(given: str) -> InitSource:
    """The weights model.init_from names, without reading them; a clear error for anything else."""
    path = resolve_path(str(given))
    where = f"{KEY}={given!r}"
    if not path.exists():
        parent = path.parent
        hint = ""
        if path.name.startswith("fold_") and parent.is_dir() and _is_run_folder(parent):
            folds = _fold_weights(parent)
            hint = f"; that run has {', '.join(folds) if folds else 'no fold weights'}"
        raise TextclfError(f"{where} does not exist (looked at {path}){hint}")
    if path.is_file():
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise TextclfError(f"{where}: {path} is not a weights file; expected a run folder, a fold folder, or a "
                               f"{', '.join(WEIGHT_SUFFIXES)} file")
        return InitSource(str(given), [path], str(given))
    if (path / "model.safetensors").is_file():  # a fold folder, or a model folder saved by save_pretrained
        return InitSource(str(given), [path / "model.safetensors"], f"{given} (model.safetensors)")
    index = path / "model.safetensors.index.json"
    if index.is_file():  # a sharded save_pretrained folder
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise TextclfError(f"{where}: {index} is not a safetensors index ({_first_line(e)})") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise TextclfError(f"{where}: {index.name} names shards that are not there: {', '.join(missing[:5])}")
        return InitSource(str(given), [path / s for s in shards], f"{given} ({len(shards)} shards)")
    if _is_run_folder(path):
        folds = _fold_weights(path)
        if "fold_0" in folds:
            return InitSource(str(given), [path / "fold_0" / "model.safetensors"],
                              f"{given} (fold_0/model.safetensors)")
        if folds:
            raise TextclfError(f"{where} is a run folder without fold_0/model.safetensors; name one of its folds: "
                               + ", ".join(f"{KEY}={Path(given) / f}" for f in folds[:3]))
        raise TextclfError(f"{where} is a run folder without fold weights (fold_<k>/model.safetensors): its "
                           f"training did not get as far as a first evaluation")
    for name in ("pytorch_model.bin",):
        if (path / name).is_file():
            return InitSource(str(given), [path / name], f"{given} ({name})")
    raise TextclfError(f"{where}: the folder {path} holds no weights; expected a run folder "
                       f"(fold_<k>/model.safetensors), "
                       f"a fold or model folder (model.safetensors), or a {', '.join(WEIGHT_SUFFIXES)} file")


def check_source(given: str) -> InitSource:
    """What preflight checks (cheaply, no tensors read): the source exists and a .safetensors header reads."""
    source = resolve_init_from(given)
    for path in source.files:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), "pt") as f:
                    f.keys()
            except Exception as e:
                raise TextclfError(f"{KEY}={given!r}: {path} is not a readable safetensors file "
                                   f"({type(e).__name__}: {_first_line(e)})") from None
    return source


# ----------------------------------------------------------------------------- loading into a built model
class InitFrom:
    """The weights of model.init_from, applied to each fold's freshly built classifier (the same weights every
    fold). `report` is the first application's report, written to report_path (init_report.json) when given."""

    def __init__(self, source: InitSource | str, report_path: Path | None = None):
        self.source = resolve_init_from(source) if isinstance(source, str) else source
        self.report_path = report_path
        self.report: dict | None = None

    def apply(self, model) -> dict:
        tensors = self.source.tensors()
        state = model.state_dict()
        cmp = compare_keys({k: tuple(v.shape) for k, v in state.items()}, tensors)
        if not cmp.loaded:
            detail = (f"its names look like {group_names(sorted(tensors), 3)}; the model's like "
                      f"{group_names(sorted(state), 3)}")
            if cmp.mismatched:
                m = cmp.mismatched[0]
                detail = (f"{len(cmp.mismatched)} share a name with the model but have other shapes (e.g. {m['name']}: "
                          f"model {shape_text(m['model_shape'])}, file {shape_text(m['file_shape'])}): weights of "
                          f"another backbone size?")
            raise TextclfError(f"{KEY}={self.source.given!r}: none of its {len(tensors)} tensors fit this model "
                               f"({detail}); it is not weights of this model (model.name_or_path decides the "
                               f"architecture)")
        with torch.no_grad():
            result = model.load_state_dict({k: tensors[cmp.sources[k]] for k in cmp.loaded}, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        first = self.report is None
        self.report = self._report(cmp, state)
        if first:
            log.info("%s", self.report["summary"])
            self._warn_if_backbone_mostly_kept(cmp, state)
            if self.report_path is not None:
                write_json(self.report_path, self.report)
        return self.report

    def _report(self, cmp: Comparison, state) -> dict:
        parts = [f"init_from {self.source.label}: {len(cmp.loaded)} tensors loaded"]
        if cmp.mapped:
            parts[0] += " (keys mapped: " + ", ".join(f"{m['from'] or '(none)'} -> {m['to'] or '(none)'} "
                                                       f"({m['count']})" for m in cmp.mapped) + ")"
        if cmp.mismatched:
            shown = ", ".join(f"{m['name']} (model {shape_text(m['model_shape'])}, file {shape_text(m['file_shape'])})"
                              for m in cmp.mismatched[:4])
            more = f" and {len(cmp.mismatched) - 4} more" if len(cmp.mismatched) > 4 else ""
            parts.append(f"{group_names([m['name'] for m in cmp.mismatched], 3)} mismatched in shape and "
                         f"re-initialised (kept as built): {shown}{more}")
        parts.append(f"{len(cmp.missing)} missing (kept as built)" +
                     (f": {group_names(cmp.missing, 4)}" if cmp.missing else ""))
        parts.append(f"{len(cmp.unexpected)} unused"
                     + (f": {group_names(cmp.unexpected, 4)}" if cmp.unexpected else ""))
        return {"source": str(self.source.files[0] if len(self.source.files) == 1 else self.source.files[0].parent),
                "init_from": self.source.given,
                "loaded": cmp.loaded, "missing": cmp.missing, "unexpected": cmp.unexpected,
                "mismatched": cmp.mismatched, "mapped": cmp.mapped,
                "counts": {"loaded": len(cmp.loaded), "missing": len(cmp.missing),
                           "unexpected": len(cmp.unexpected), "mismatched": len(cmp.mismatched)},
                "summary": "; ".join(parts)}

    def _warn_if_backbone_mostly_kept(self, cmp: Comparison, state) -> None:
        backbone = {k: v.numel() for k, v in state.items() if k.startswith("backbone.")}
        total = sum(backbone.values())
        loaded = sum(backbone.get(k, 0) for k in cmp.loaded)
        if total and loaded < total / 2:
            log.warning("%s=%r: only %.0f%% of the backbone's parameters came from it; the rest keep "
                        "model.name_or_path's weights (is it a checkpoint of this backbone?)",
                        KEY, self.source.given, 100.0 * loaded / total)
