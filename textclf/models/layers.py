"""Where a backbone keeps its embeddings and its stack of layers; freezing and re-initialising them.

Layer-wise LR decay (textclf.engine.optim.param_groups), `model.freeze_*` and `model.reinit_layers` all need to
know which module is layer 0 and which is the top one. Known families are looked up by attribute name;
anything else falls back to the largest nn.ModuleList of identical blocks.
"""
from __future__ import annotations

import torch
from torch import nn

from textclf.errors import TextclfError

#: (embeddings attribute, layer-list attribute path), tried in order
KNOWN_LAYOUTS = (
    ("embeddings", "encoder.layer"),      # BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa(-v2), MPNet, ...
    ("embeddings", "transformer.layer"),  # DistilBERT
    ("word_embedding", "layer"),          # XLNet
)
#: stage that belongs with the embeddings (ELECTRA projects small embeddings up to hidden size)
EMBEDDING_EXTRAS = ("embeddings_project",)


def model_type(backbone: nn.Module) -> str:
    return getattr(getattr(backbone, "config", None), "model_type", None) or type(backbone).__name__


def find_layers(backbone: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(embeddings, layers bottom to top), or a TextclfError naming the model type and what is missing."""
    kind = model_type(backbone)
    if kind == "albert" or type(backbone).__name__.startswith("Albert"):
        raise TextclfError(f"model type {kind!r} shares one set of layer weights across all its layers, so "
                           f"per-layer settings (optimizer.layer_decay, model.freeze_layers, model.reinit_layers) "
                           f"cannot apply to it; leave them at their defaults")
    for embeddings_name, layers_path in KNOWN_LAYOUTS:
        embeddings, layers = getattr(backbone, embeddings_name, None), _get_path(backbone, layers_path)
        if isinstance(embeddings, nn.Module) and isinstance(layers, nn.ModuleList) and len(layers):
            return _with_extras(backbone, embeddings), list(layers)
    layers = _largest_block_list(backbone)
    if layers is None:
        raise TextclfError(f"cannot find the layers of model type {kind!r}: it has no encoder.layer, "
                           f"transformer.layer or layer list, nor any nn.ModuleList of identical blocks; "
                           f"per-layer settings (optimizer.layer_decay, model.freeze_layers, model.reinit_layers) "
                           f"need one")
    embeddings = _generic_embeddings(backbone)
    if embeddings is None:
        raise TextclfError(f"cannot find the embeddings of model type {kind!r}: no child module named like "
                           f"'embed', no nn.Embedding child and no get_input_embeddings()")
    return embeddings, layers


def _layers_for(backbone: nn.Module, key: str, n: int) -> tuple[nn.Module, list[nn.Module]]:
    """find_layers(backbone), once `model.<key>=n` is checked against the backbone's depth."""
    if n < 0:
        raise TextclfError(f"model.{key} must be 0 or more, got {n}")
    emb, stack = find_layers(backbone)
    if n > len(stack):
        raise TextclfError(f"model.{key}={n} but model type {model_type(backbone)!r} has only "
                           f"{len(stack)} layers; use model.{key}={len(stack)} or less")
    return emb, stack


def freeze(backbone: nn.Module, embeddings: bool = False, layers: int = 0) -> None:
    """requires_grad=False on the embeddings and/or the lowest `layers` layers."""
    layers = int(layers)
    if not embeddings and layers == 0:
        return
    emb, stack = _layers_for(backbone, "freeze_layers", layers)
    modules = ([emb] if embeddings else []) + stack[:layers]
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)


def reinit_top_layers(backbone: nn.Module, n: int) -> None:
    """Give the top `n` layers fresh weights, drawn the way the backbone initialises itself."""
    n = int(n)
    if n == 0:
        return
    _, stack = _layers_for(backbone, "reinit_layers", n)
    init_fn = getattr(backbone, "_init_weights", None)
    for layer in stack[-n:]:
        # transformers 5 marks every loaded tensor `_is_hf_initialized`, and its init functions skip such
        # tensors: without clearing the mark, re-initialising a pretrained layer silently does nothing
        for t in list(layer.parameters()) + list(layer.buffers()):
            if getattr(t, "_is_hf_initialized", False):
                t._is_hf_initialized = False
        for module in layer.modules():
            if getattr(module, "_is_hf_initialized", False):
                module._is_hf_initialized = False
        with torch.no_grad():
            if callable(init_fn):
                layer.apply(init_fn)
            else:
                _reset_parameters(layer, backbone)


def _reset_parameters(layer: nn.Module, backbone: nn.Module) -> None:
    """Fallback for backbones without `_init_weights`: torch's own initialisation, where every module has one."""
    owners = [m for m in layer.modules() if any(True for _ in m.parameters(recurse=False))]
    missing = sorted({type(m).__name__ for m in owners if not hasattr(m, "reset_parameters")})
    if missing:
        raise TextclfError(f"cannot re-initialise layers of model type {model_type(backbone)!r}: it has no "
                           f"_init_weights and {', '.join(missing)} has no reset_parameters")
    for m in owners:
        m.reset_parameters()


def _get_path(root: nn.Module, path: str):
    node = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _with_extras(backbone: nn.Module, embeddings: nn.Module) -> nn.Module:
    extras = [getattr(backbone, name) for name in EMBEDDING_EXTRAS
              if isinstance(getattr(backbone, name, None), nn.Module)]
    return nn.ModuleList([embeddings, *extras]) if extras else embeddings


def _largest_block_list(backbone: nn.Module) -> list[nn.Module] | None:
    """The longest nn.ModuleList whose entries are all of one class (ties: the one with more parameters)."""
    best, best_key = None, None
    for module in backbone.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1 or len({id(block) for block in module}) != len(module):
            continue  # mixed blocks, or one block repeated (weights shared across layers)
        key = (len(module), sum(p.numel() for p in module.parameters()))
        if best_key is None or key > best_key:
            best, best_key = list(module), key
    return best


def _generic_embeddings(backbone: nn.Module) -> nn.Module | None:
    found = [m for name, m in backbone.named_children() if "embed" in name.lower() or isinstance(m, nn.Embedding)]
    if len(found) == 1:
        return found[0]
    if found:
        return nn.ModuleList(found)
    get = getattr(backbone, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        emb = None
    return emb if isinstance(emb, nn.Module) else None
