"""Poolings: (hidden states, attention mask) -> one vector per row. Padding never takes part.

Every pooling takes the backbone's `hidden_size` (and, optionally, its `num_hidden_layers`) and exposes
`output_dim`, so a new one is a class plus a YAML file in conf/pooling/. Padding may sit on either side
(XLNet pads on the left and puts its summary token last): poolings locate real tokens through the mask
only, never by position.
"""
from __future__ import annotations

import torch
from torch import nn

from textclf.errors import TextclfError


class Pooling(nn.Module):
    #: whether forward needs all layers' hidden states (output_hidden_states=True)
    needs_all_layers = False
    #: whether forward needs the backbone's pooler output (BERT-style models only)
    needs_pooler_output = False

    def __init__(self, hidden_size: int, summary_last: bool = False, num_hidden_layers: int | None = None):
        super().__init__()
        self.output_dim = hidden_size
        self.summary_last = summary_last
        self.num_hidden_layers = num_hidden_layers

    def forward(self, last_hidden: torch.Tensor, mask: torch.Tensor, outputs=None) -> torch.Tensor:
        raise NotImplementedError


class MeanPooling(Pooling):
    """Mean of the real tokens' vectors."""

    def forward(self, last_hidden, mask, outputs=None):
        return masked_mean(last_hidden, mask)


class ClsPooling(Pooling):
    """The summary token: the first real token (BERT family) or the last real one (XLNet)."""

    def forward(self, last_hidden, mask, outputs=None):
        return summary_vectors(last_hidden, mask, self.summary_last)


class PoolerPooling(Pooling):
    """The backbone's own pooler output (BERT: tanh(Linear(CLS)), trained by next-sentence prediction)."""

    needs_pooler_output = True

    def forward(self, last_hidden, mask, outputs=None):
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise TextclfError("pooling=pooler: this backbone has no pooler output; use pooling=cls")
        return pooled


class MaxPooling(Pooling):
    """Element-wise maximum over the real tokens."""

    def forward(self, last_hidden, mask, outputs=None):
        return masked_extreme(last_hidden, mask, largest=True)


class MinPooling(Pooling):
    """Element-wise minimum over the real tokens."""

    def forward(self, last_hidden, mask, outputs=None):
        return masked_extreme(last_hidden, mask, largest=False)


class MeanMaxPooling(Pooling):
    """[mean, max] of the real tokens, concatenated (2 x hidden_size)."""

    def __init__(self, hidden_size: int, summary_last: bool = False, num_hidden_layers: int | None = None):
        super().__init__(hidden_size, summary_last, num_hidden_layers)
        self.output_dim = 2 * hidden_size

    def forward(self, last_hidden, mask, outputs=None):
        return torch.cat([masked_mean(last_hidden, mask), masked_extreme(last_hidden, mask, largest=True)], dim=-1)


class AttentionPooling(Pooling):
    """Weighted sum of the real tokens; the weights are a softmax over learned scores
    (Linear -> LayerNorm -> GELU -> Linear) in which padding gets exactly zero weight."""

    def __init__(self, hidden_size: int, summary_last: bool = False, num_hidden_layers: int | None = None,
                 hidden_dim: int = 512):
        super().__init__(hidden_size, summary_last, num_hidden_layers)
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise TextclfError(f"pooling.hidden_dim: must be an integer >= 1, got {hidden_dim!r}")
        self.score = nn.Sequential(nn.Linear(hidden_size, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
                                   nn.Linear(hidden_dim, 1))

    def attention_weights(self, last_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, L) weights summing to 1 over each row's real tokens, exactly 0 on padding."""
        real = mask.bool()
        # softmax in float32: bf16/fp16 scores lose the small weights; finfo.min (not -inf) keeps a row
        # without real tokens finite, and the final masked_fill makes padding exactly 0 whatever happens
        scores = self.score(last_hidden).squeeze(-1).float()
        scores = scores.masked_fill(~real, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=1).masked_fill(~real, 0.0)

    def forward(self, last_hidden, mask, outputs=None):
        weights = self.attention_weights(last_hidden, mask).to(last_hidden.dtype)
        hidden = last_hidden.masked_fill(~mask.bool().unsqueeze(-1), 0.0)
        return torch.einsum("nl,nlh->nh", weights, hidden)


class GeMPooling(Pooling):
    """Generalised mean of the real tokens, per dimension: (mean of clamp(x, eps)^p)^(1/p), with p learned.
    p = 1 is the mean of the clamped values and a large p approaches their maximum, so the model picks its
    place between mean and max pooling. Hidden states can be negative: they are clamped to `eps` first, as
    GeM always does. Computed in float32 (x^p under- and overflows in bf16/fp16); p is kept >= 1."""

    def __init__(self, hidden_size: int, summary_last: bool = False, num_hidden_layers: int | None = None,
                 p: float = 3.0, eps: float = 1e-6, learn_p: bool = True):
        super().__init__(hidden_size, summary_last, num_hidden_layers)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 1 <= p <= 100:
            raise TextclfError(f"pooling.p: must be a number from 1 to 100, got {p!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise TextclfError(f"pooling.eps: must be a number between 0 and 1, got {eps!r}")
        self.eps = float(eps)
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=bool(learn_p))

    def forward(self, last_hidden, mask, outputs=None):
        p = self.p.clamp(min=1.0)
        powered = last_hidden.float().clamp(min=self.eps).pow(p)
        return masked_mean(powered, mask).clamp(min=self.eps).pow(1.0 / p).to(last_hidden.dtype)


REDUCTIONS = ("cls", "mean")


class WeightedLayerPooling(Pooling):
    """Learned softmax-normalised weights over the hidden states from `layer_start` (0 = the embeddings'
    output) to the last layer; each layer is first reduced to one vector per row (`reduce`: the summary
    token, as in the Kaggle recipe, or the mean of real tokens). The weights start equal."""

    needs_all_layers = True

    def __init__(self, hidden_size: int, summary_last: bool = False, num_hidden_layers: int | None = None,
                 layer_start: int = 4, reduce: str = "cls"):
        super().__init__(hidden_size, summary_last, num_hidden_layers)
        if num_hidden_layers is None:
            raise TextclfError("pooling=weighted_layer needs the backbone's number of layers (num_hidden_layers) "
                               "at build time")
        if isinstance(layer_start, bool) or not isinstance(layer_start, int) or layer_start < 0:
            raise TextclfError(f"pooling.layer_start: must be an integer >= 0, got {layer_start!r}")
        num_states = num_hidden_layers + 1  # hidden_states = (embeddings, layer 1, ..., layer N)
        if layer_start >= num_states:
            raise TextclfError(f"pooling.layer_start={layer_start} is past the last layer: this backbone has "
                               f"{num_hidden_layers} layers, so layer_start must be at most {num_hidden_layers} "
                               f"(0 = the embeddings)")
        if reduce not in REDUCTIONS:
            raise TextclfError(f"pooling.reduce: must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        self.layer_start, self.reduce = layer_start, reduce
        self.layer_weights = nn.Parameter(torch.zeros(num_states - layer_start))

    def forward(self, last_hidden, mask, outputs=None):
        states = all_hidden_states(outputs, "weighted_layer")
        if len(states) != self.layer_start + len(self.layer_weights):
            raise TextclfError(f"pooling=weighted_layer was built for {self.num_hidden_layers} layers "
                               f"({self.num_hidden_layers + 1} hidden states) but the backbone returned "
                               f"{len(states)} hidden states")
        if self.reduce == "cls":
            vectors = [summary_vectors(h, mask, self.summary_last) for h in states[self.layer_start:]]
        else:
            vectors = [masked_mean(h, mask) for h in states[self.layer_start:]]
        stacked = torch.stack(vectors)  # (layers, N, H)
        weights = torch.softmax(self.layer_weights.float(), dim=0).to(stacked.dtype)
        return torch.einsum("l,lnh->nh", weights, stacked)


class ConcatLast4Pooling(Pooling):
    """Summary-token vectors of the last four hidden states, concatenated last layer first (4 x hidden_size)."""

    needs_all_layers = True

    def __init__(self, hidden_size: int, summary_last: bool = False, num_hidden_layers: int | None = None):
        super().__init__(hidden_size, summary_last, num_hidden_layers)
        if num_hidden_layers is not None and num_hidden_layers + 1 < 4:
            raise TextclfError(_too_few_layers(num_hidden_layers + 1))
        self.output_dim = 4 * hidden_size

    def forward(self, last_hidden, mask, outputs=None):
        states = all_hidden_states(outputs, "concat_last4")
        if len(states) < 4:
            raise TextclfError(_too_few_layers(len(states)))
        return torch.cat([summary_vectors(h, mask, self.summary_last) for h in states[:-5:-1]], dim=-1)


def _too_few_layers(num_states: int) -> str:
    return (f"pooling=concat_last4 needs at least 4 hidden states (3 layers), this backbone has {num_states} "
            f"({num_states - 1} layers); use pooling=weighted_layer or pooling=cls")


# ----------------------------------------------------------------------------- masked reductions
def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens. masked_fill (not a multiply by 0) so inf/nan in padding cannot leak."""
    real = mask.bool().unsqueeze(-1)
    total = hidden.masked_fill(~real, 0.0).sum(dim=1)
    return total / real.sum(dim=1).clamp(min=1).to(hidden.dtype)


def masked_extreme(hidden: torch.Tensor, mask: torch.Tensor, *, largest: bool) -> torch.Tensor:
    """Max (or min) over the real tokens: padding is set to the dtype's lowest (highest) finite value, so it
    never wins unless a row has no real token at all, and that row comes out as zeros."""
    real = mask.bool().unsqueeze(-1)
    info = torch.finfo(hidden.dtype)
    filled = hidden.masked_fill(~real, info.min if largest else info.max)
    values = filled.max(dim=1).values if largest else filled.min(dim=1).values
    return values.masked_fill(~real.any(dim=1), 0.0)


def summary_vectors(hidden: torch.Tensor, mask: torch.Tensor, last: bool) -> torch.Tensor:
    """(N, H) vectors of each row's summary token (first real token, or last real one when `last`)."""
    return hidden[torch.arange(mask.size(0), device=mask.device), summary_positions(mask, last)]


def summary_positions(mask: torch.Tensor, last: bool) -> torch.Tensor:
    """Index of the first (or last) real token per row, whichever side the padding is on."""
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    real = mask.bool()
    if last:
        return torch.where(real, positions, -1).max(dim=1).values
    return torch.where(real, positions, mask.size(1)).min(dim=1).values


def all_hidden_states(outputs, name: str) -> tuple:
    states = getattr(outputs, "hidden_states", None)
    if states is None:
        raise TextclfError(f"pooling={name} needs every layer's hidden states: call the backbone with "
                           f"output_hidden_states=True")
    return states
