"""`textclf export optimize=true`: ONNX Runtime's transformer optimizer on a fold's graph.

The optimizer fuses each encoder layer's attention (the Q, K and V projections, the scaled dot product, the mask
and the softmax) into one `Attention` node, residual + LayerNorm into `SkipLayerNormalization` and bias + GELU into
`BiasGelu` (contrib ops of the `com.microsoft` domain: ONNX Runtime runs them, other runtimes do not; optimize=false
exports standard ONNX ops only). Its patterns were written for BERT-family graphs, so the graph is exported in the
shape they match:
  * eager attention instead of SDPA (the same arithmetic: `softmax(QK^T * scale + mask) V`);
  * the padding mask handed to the backbone as the 4D additive mask BERT has always built, `(1 - mask) * -10000`,
    instead of transformers' boolean mask construction;
  * two rewrites of the exported graph that change no value: the scale `QK^T * (1/sqrt(d))` as `QK^T / sqrt(d)`,
    and the mask's one two-axis Unsqueeze as two one-axis Unsqueezes.
The fused graph is then checked against the unchanged PyTorch model with export's tolerance; a family the optimizer
has no patterns for, a graph where no attention fused, or a fused graph that differs, gets a message and the plain
graph instead (export.json records which, per fold).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

#: backbone families (the config's model_type) whose graphs ONNX Runtime's "bert" optimizer fuses
FAMILIES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
#: the additive mask value for padded positions, as BERT's original code and the optimizer's patterns use it
MASK_VALUE = -10000.0
#: the fused operators export.json reports, by the optimizer's names
REPORTED = ("Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization")


def unsupported(config) -> str | None:
    """Why a backbone's graph is not fused, or None when the optimizer has patterns for its family."""
    family = getattr(config, "model_type", "")
    if family not in FAMILIES:
        return (f"ONNX Runtime's transformer optimizer has no fusion patterns for {family or 'this'} backbones "
                f"(it fuses {', '.join(sorted(FAMILIES))})")
    return None


@contextlib.contextmanager
def fusable(model: torch.nn.Module):
    """The classifier with its backbone set up for export in the optimizer's shape (eager attention, the 4D
    additive mask); restored on exit. The pooling still sees the 2D mask."""
    backbone = model.backbone
    before = backbone.config._attn_implementation
    forward = backbone.forward

    def with_additive_mask(*args, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 2:
            mask = attention_mask.to(torch.float32)
            attention_mask = (1.0 - mask[:, None, None, :]) * MASK_VALUE
        return forward(*args, attention_mask=attention_mask, **kwargs)

    backbone.set_attn_implementation("eager")
    backbone.forward = with_additive_mask
    try:
        yield model
    finally:
        del backbone.forward  # the class's forward again
        backbone.set_attn_implementation(before)


def rewrite(graph) -> None:
    """The two value-preserving rewrites the optimizer's attention pattern needs, found from each Softmax:
    its input is Add(QK^T * scale, mask) with mask = Mul(Sub(1, Unsqueeze(mask, [1, 2])), -10000)."""
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    split = {}  # the two-axis Unsqueeze's name -> the new one-axis Unsqueeze that goes before it
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        add = producer.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            continue
        for mul in (producer.get(name) for name in add.input):
            if mul is None or mul.op_type != "Mul" or len(mul.input) != 2:
                continue
            source = producer.get(mul.input[0])
            scale = initializers.get(mul.input[1])
            if source is not None and source.op_type == "MatMul" and scale is not None:
                value = numpy_helper.to_array(scale)
                if value.size == 1:  # QK^T * c -> QK^T / (1 / c)
                    inverse = numpy_helper.from_array((1.0 / value).astype(value.dtype), f"{mul.name}_inverse_scale")
                    graph.initializer.append(inverse)
                    mul.op_type, mul.input[1] = "Div", inverse.name
            elif source is not None and source.op_type == "Sub":
                unsqueeze = producer.get(source.input[1])
                axes = initializers.get(unsqueeze.input[1]) if unsqueeze is not None and \
                    unsqueeze.op_type == "Unsqueeze" and len(unsqueeze.input) == 2 else None
                if axes is not None and numpy_helper.to_array(axes).size == 2 and unsqueeze.name not in split:
                    first, second = numpy_helper.to_array(axes).tolist()
                    names = [f"{unsqueeze.output[0]}_axis{i}" for i in (0, 1)]
                    graph.initializer.extend(numpy_helper.from_array(np.array([a], np.int64), n)
                                             for a, n in zip((first, second), names))
                    middle = f"{unsqueeze.output[0]}_first"
                    split[unsqueeze.name] = helper.make_node("Unsqueeze", [unsqueeze.input[0], names[0]], [middle],
                                                             name=f"{unsqueeze.name}_first")
                    unsqueeze.input[0], unsqueeze.input[1] = middle, names[1]
    if split:  # each new node goes right before the one it feeds, so the graph stays in topological order
        nodes = []
        for node in graph.node:
            if node.name in split:
                nodes.append(split[node.name])
            nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)


def optimize(source: Path, target: Path, config, *, large: bool) -> dict:
    """Rewrite and fuse the graph at `source` into `target`; the count of each fused operator (REPORTED).
    opt_level=0: the optimizer's Python fusions only; ONNX Runtime applies its own graph optimizations when a
    session loads the model, for the machine it runs on. The optimizer logs what it tries, counts and saves:
    export runs this inside its quiet context."""
    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model = onnx.load(str(source))
    rewrite(model.graph)
    fused = optimizer.optimize_model(model, model_type="bert", num_heads=int(config.num_attention_heads),
                                     hidden_size=int(config.hidden_size), opt_level=0,
                                     optimization_options=FusionOptions("bert"))
    counts = fused.get_fused_operator_statistics()
    fused.save_model_to_file(str(target), use_external_data_format=large)
    return {name: int(counts.get(name, 0)) for name in REPORTED}
