"""Training hooks: no-op events that tricks (FGM, PGD, AWP, EMA) override.

Per fit (one fold, fresh hooks) the Trainer calls: on_fit_start once; after_backward after each micro-batch's
backward, before the optimizer step; after_step after each optimizer step; before_evaluate / after_evaluate
around each evaluation (the best checkpoint is saved between the two, so it holds whatever weights the model
holds while it is evaluated). A hook calls the trainer's own `compute_loss` and `backward`, so autocast, loss
scaling and accumulation live in one place.
"""
from __future__ import annotations

import contextlib
import logging
import math

import torch

from textclf.errors import TextclfError

log = logging.getLogger(__name__)


class Hook:
    def on_fit_start(self, trainer) -> None: ...
    def after_backward(self, trainer, batch) -> None: ...
    def after_step(self, trainer) -> None: ...
    def before_evaluate(self, trainer) -> None: ...
    def after_evaluate(self, trainer) -> None: ...
    # True when after_backward backwards this micro-batch again (several processes: only its last backward
    # all-reduces the gradients, so the plain one does not)
    def backwards_again(self, trainer) -> bool: return False
    # what a resumed fold needs back (checkpoints are taken between optimizer steps)
    def state_dict(self) -> dict: return {}
    def load_state_dict(self, state: dict) -> None: ...


def build_hooks(*nodes) -> list[Hook]:
    """Instantiate the config nodes that name a `_target_`; an empty node (a group's `none`) builds nothing."""
    from hydra.utils import instantiate

    from textclf.errors import own_errors

    with own_errors():  # a hook's own TextclfError, not Hydra's InstantiationException around it
        return [instantiate(node) for node in nodes if node is not None and node.get("_target_")]


# ----------------------------------------------------------------------------- adversarial training
class _Attack(Hook):
    """What FGM, PGD and AWP share: the attacked parameters (by name), this micro-batch's gradient of them,
    a backup and a bit-exact restore. The adversarial loss goes through `trainer.backward`, so its gradients
    add to the plain ones before the optimizer step.

    With gradient accumulation, `.grad` after a backward holds the whole group's gradient so far; the direction
    of the attack is this micro-batch's own gradient, so the gradients so far are kept while more micro-batches
    of the group follow (one copy of the attacked parameters' gradients, only when accumulating).
    """

    #: start=auto: the share of the fold's optimizer steps trained plainly before the attack begins. Half: on the
    #: kaomoji tags (2 epochs) FGM from 10% of the steps scored 10 points of macro-F1 below plain, from 50% above it
    AUTO_START = 0.5

    def __init__(self, param_name: str, start: float | str = "auto"):
        if not isinstance(param_name, str) or not param_name:
            raise TextclfError(f"adversarial.param_name must be a non-empty string, got {param_name!r}")
        self.param_name = param_name
        self.start = check_start("adversarial.start", start)
        self.start_step = 0  # resolved at on_fit_start from the fold's number of optimizer steps
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self._prev: list[torch.Tensor | None] | None = None
        self._seen = 0

    def on_fit_start(self, trainer) -> None:
        model = trainer.model
        named = [(n, p) for n, p in model.named_parameters() if self.param_name in n]
        option = type(self).__name__.lower()
        if not named:
            raise TextclfError(f"adversarial={option}: param_name={self.param_name!r} matches no parameter of the "
                               f"model; {_embedding_hint(model)}")
        trainable = [(n, p) for n, p in named if p.requires_grad]
        if not trainable:
            raise TextclfError(f"adversarial={option}: every parameter matching {self.param_name!r} is frozen "
                               f"({', '.join(n for n, _ in named[:3])}), so there is no gradient to attack along; "
                               f"unfreeze it (model.freeze_embeddings=false) or choose another param_name")
        self.names = [n for n, _ in trainable]
        self.params = [p for _, p in trainable]
        self._prev, self._seen = None, 0
        self.start_step = start_step(self.start, self.AUTO_START, total_steps(trainer))
        self.resolve(trainer)
        log.info("adversarial=%s: %s; from optimizer step %d of %s", option, self.describe(), self.start_step,
                 total_steps(trainer) or "?")

    def resolve(self, trainer) -> None:
        """Budget-aware values (`auto`) from the run the hook is in; explicit ones stay."""

    def describe(self) -> str:
        return ""

    def active(self, trainer) -> bool:
        return getattr(trainer, "global_step", 0) >= self.start_step

    def after_step(self, trainer) -> None:
        self._prev, self._seen = None, 0  # the optimizer step cleared the gradients

    def backwards_again(self, trainer) -> bool:
        return self.active(trainer)

    def _directions(self, trainer=None) -> tuple[list, list, list[float]]:
        """(parameters, this micro-batch's gradients, their norms) for the attacked parameters. With several
        processes the gradients are each rank's own until the step's all-reduce: the direction is their average
        (what one process would see over the global batch), one all-reduce of the attacked parameters only."""
        pairs = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        grads = [p.grad for _, p in pairs]
        if self._prev is not None and grads:
            prev = [self._prev[i] for i, _ in pairs]
            if all(t is not None for t in prev):
                grads = torch._foreach_sub(grads, prev)
            else:
                grads = [g if t is None else g - t for g, t in zip(grads, prev)]
        return usable([p for _, p in pairs], averaged(trainer, grads))

    def _perturbed_backward(self, trainer, batch, perturb) -> None:
        """The frame of a one-shot attack (FGM, AWP): `perturb(params, grads, norms, originals)` moves the usable
        attacked parameters in place (under no_grad), the loss there is backwarded so its gradients add to the
        plain ones, and the exact weights are restored."""
        params, grads, norms = self._directions(trainer)
        if params:
            originals = copy_of(params)
            with torch.no_grad():
                perturb(params, grads, norms, originals)
            trainer.backward(trainer.compute_loss(batch))
            restore(params, originals)
        self._remember(trainer)

    def _remember(self, trainer) -> None:
        """Keep the gradients so far when more micro-batches of this accumulation group follow."""
        self._seen += 1
        if self._seen >= getattr(trainer, "group_size", 1):
            self._prev = None
            return
        grads = [p.grad for p in self.params]
        have = [g for g in grads if g is not None]
        copies = copy_of(have)
        it = iter(copies)
        self._prev = [None if g is None else next(it) for g in grads]


def averaged(trainer, grads: list) -> list:
    """The gradients averaged over a multi-process run's ranks (Trainer.average_across_ranks; the same tensors in
    one process, or with a trainer that has no ranks); None entries (no gradient) stay None."""
    average = getattr(trainer, "average_across_ranks", None)
    present = [g for g in grads if g is not None]
    if average is None or not present:
        return grads
    it = iter(average(present))
    return [None if g is None else next(it) for g in grads]


def usable(params: list, grads: list) -> tuple[list, list, list[float]]:
    """Drop parameters whose gradient norm is zero (nothing to follow) or not finite (an fp16 overflow: the
    scaler skips this step anyway). The norm is scale-invariant in direction, so scaled gradients are fine.
    One host sync for all of them."""
    if not grads:
        return [], [], []
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads)]).tolist()
    keep = [k for k, n in enumerate(norms) if n > 0 and math.isfinite(n)]
    return [params[k] for k in keep], [grads[k] for k in keep], [norms[k] for k in keep]


def copy_of(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Detached copies, made with one fused copy rather than a clone per tensor."""
    copies = [torch.empty_like(t) for t in tensors]
    if tensors:
        with torch.no_grad():
            torch._foreach_copy_(copies, tensors)
    return copies


@torch.no_grad()
def restore(params: list, originals: list[torch.Tensor]) -> None:
    torch._foreach_copy_(params, originals)  # a copy, not `w - r`: bit-exact


def _embedding_hint(model) -> str:
    names = [n for n, _ in model.named_parameters()]
    weight = None
    for module in model.modules():
        if hasattr(module, "get_input_embeddings"):
            with contextlib.suppress(Exception):
                weight = module.get_input_embeddings().weight
                break
    for n, p in model.named_parameters():
        if weight is not None and p is weight:
            short = n.rsplit(".", 2)[-2] if n.count(".") >= 1 else n
            return f"this model's input embeddings are {n!r} (use adversarial.param_name={short})"
    embeddings = [n for n in names if "embed" in n.lower()][:5] or names[:5]
    return f"parameters include: {', '.join(embeddings)}"


class FGM(_Attack):
    """Fast gradient method (Miyato et al. 2017): after the plain backward, add r = ε·g/‖g‖ to the word
    embeddings, backward the loss at that point (gradients add up), restore the exact weights. One extra
    forward and backward per micro-batch (from the start step on); none when the gradient is zero or not finite.

    epsilon=auto: AUTO_EPSILON·√(hidden/768), the embedding width of the model attacked (the literature's 1.0 is
    for BERT-base's 768 and long fine-tunes; at a few hundred steps it costs accuracy, see the README's ablation).
    start=auto: the attack begins after AUTO_START (half) of the fold's optimizer steps: an attack slows fitting,
    which a short run cannot afford early on (README, ablation)."""

    AUTO_EPSILON = 0.3

    def __init__(self, epsilon: float | str = "auto", param_name: str = "word_embeddings",
                 start: float | str = "auto"):
        super().__init__(param_name, start)
        self.epsilon_setting = check_auto("adversarial.epsilon", epsilon)
        self.epsilon = 0.0 if epsilon == "auto" else float(epsilon)

    def resolve(self, trainer) -> None:
        if self.epsilon_setting == "auto":
            self.epsilon = auto_epsilon(self.AUTO_EPSILON, self.params)

    def describe(self) -> str:
        return f"epsilon={self.epsilon:.3g}" + (" (auto: scaled to the embedding width)"
                                                if self.epsilon_setting == "auto" else "")

    def after_backward(self, trainer, batch) -> None:
        if self.active(trainer):
            self._perturbed_backward(trainer, batch, self._perturb)

    def _perturb(self, params, grads, norms, originals) -> None:
        for p, g, n in zip(params, grads, norms):  # usually one parameter: in place, no temporary
            p.add_(g, alpha=self.epsilon / n)


class PGD(_Attack):
    """Projected gradient descent (Madry et al. 2018), the shape Kaggle NLP solutions use: `steps` moves of
    α·g/‖g‖ on the word embeddings, each projected onto the ε-ball around the original weights; the gradients
    of the last adversarial loss add to the plain ones; the weights are restored exactly.

    The intermediate steps need only the embeddings' own gradient, so they use `torch.autograd.grad`: no
    gradient of any weight is touched, nothing has to be backed up and zeroed, and the weight-gradient part of
    those backwards is skipped. The result equals the usual back-up/zero/restore loop: plain + last adversarial.
    """

    #: half of FGM's: three steps aimed by the adversarial gradient travel about as far as FGM's one (0.9·ε), so PGD
    #: at FGM's ε is the stronger attack; at 0.3 it scored 0.7 points of macro-F1 below plain on the kaomoji tags,
    #: at 0.1 (MiniLM; 0.15·√(384/768) = 0.106) 0.5 above. alpha=auto is 0.3·epsilon (the common 1.0 / 0.3 ratio)
    AUTO_EPSILON = 0.15

    def __init__(self, epsilon: float | str = "auto", alpha: float | str = "auto", steps: int = 3,
                 param_name: str = "word_embeddings", start: float | str = "auto"):
        super().__init__(param_name, start)
        self.epsilon_setting = check_auto("adversarial.epsilon", epsilon)
        self.alpha_setting = check_auto("adversarial.alpha", alpha)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise TextclfError(f"adversarial.steps must be an integer >= 1, got {steps!r}")
        self.epsilon = 0.0 if epsilon == "auto" else float(epsilon)
        self.alpha = 0.0 if alpha == "auto" else float(alpha)
        self.steps = steps
        if self.epsilon_setting != "auto" and self.alpha_setting == "auto":
            self.alpha = 0.3 * self.epsilon

    def resolve(self, trainer) -> None:
        if self.epsilon_setting == "auto":
            self.epsilon = auto_epsilon(self.AUTO_EPSILON, self.params)
        if self.alpha_setting == "auto":
            self.alpha = 0.3 * self.epsilon

    def describe(self) -> str:
        return (f"epsilon={self.epsilon:.3g}, alpha={self.alpha:.3g}, steps={self.steps}"
                + (" (auto: scaled to the embedding width)" if self.epsilon_setting == "auto" else ""))

    def after_backward(self, trainer, batch) -> None:
        if not self.active(trainer):
            return
        moving, grads, norms = self._directions(trainer)
        if moving:
            attacked = list(moving)
            originals = copy_of(attacked)
            for k in range(self.steps):
                with torch.no_grad():
                    for p, g, n in zip(moving, grads, norms):  # a zero or non-finite gradient: no move
                        p.add_(g, alpha=self.alpha / n)
                    self._project(attacked, originals)
                loss = trainer.compute_loss(batch, last=k == self.steps - 1)
                if k == self.steps - 1:
                    trainer.backward(loss)
                    break
                found = torch.autograd.grad(trainer.scaler.scale(loss), attacked, allow_unused=True)
                found = averaged(trainer, list(found))
                pairs = [(p, g) for p, g in zip(attacked, found) if g is not None]
                moving, grads, norms = usable([p for p, _ in pairs], [g for _, g in pairs])
            restore(attacked, originals)
        self._remember(trainer)

    def _project(self, params: list, originals: list) -> None:
        delta = torch._foreach_sub(params, originals)
        norms = torch.stack([n.float() for n in torch._foreach_norm(delta)]).tolist()
        torch._foreach_mul_(delta, [min(1.0, self.epsilon / n) if n > 0 else 1.0 for n in norms])
        torch._foreach_copy_(params, torch._foreach_add(originals, delta))


class AWP(_Attack):
    """Adversarial weight perturbation (Wu et al. 2020), as in the Feedback Prize solutions: from the start step
    on, move each matching weight w by lr·g/‖g‖·‖w‖, clamped to [w − ε|w|, w + ε|w|], backward the loss there
    (gradients add up), restore the exact weights.

    start=auto: after AUTO_START of the fold's optimizer steps (the solutions start it once the validation score
    is decent, an epoch or two into 3-5). start_epoch (0-based), when set, wins: the older way to say it."""

    def __init__(self, lr: float = 1.0, epsilon: float = 0.001, start: float | str = "auto", param_name: str = "weight",
                 start_epoch: int | None = None):
        super().__init__(param_name, start)
        _positive("adversarial.lr", lr)
        _positive("adversarial.epsilon", epsilon)
        if start_epoch is not None and (isinstance(start_epoch, bool) or not isinstance(start_epoch, int)
                                        or start_epoch < 0):
            raise TextclfError(f"adversarial.start_epoch must be an integer >= 0 or null, got {start_epoch!r}")
        self.lr, self.epsilon, self.start_epoch = float(lr), float(epsilon), start_epoch

    def resolve(self, trainer) -> None:
        if self.start_epoch is not None:  # before the start is logged, so the log says the step it starts at
            self.start_step = self.start_epoch * int(getattr(trainer, "steps_per_epoch", 0) or 0)

    def active(self, trainer) -> bool:
        if self.start_epoch is not None:
            return getattr(trainer, "epoch", 0) >= self.start_epoch
        return super().active(trainer)

    def describe(self) -> str:
        return f"lr={self.lr:g}, epsilon={self.epsilon:g}" + (
            f", start_epoch={self.start_epoch}" if self.start_epoch is not None else "")

    def after_backward(self, trainer, batch) -> None:
        if not self.active(trainer):
            return
        self._perturbed_backward(trainer, batch, self._perturb)

    def _perturb(self, params, grads, norms, originals) -> None:
        w_norms = torch.stack([n.float() for n in torch._foreach_norm(originals)]).tolist()
        step = torch._foreach_mul(grads, [self.lr * (w + 1e-6) / (n + 1e-6) for n, w in zip(norms, w_norms)])
        bound = torch._foreach_abs(originals)
        torch._foreach_mul_(bound, self.epsilon)
        torch._foreach_minimum_(step, bound)
        torch._foreach_neg_(bound)
        torch._foreach_maximum_(step, bound)
        torch._foreach_add_(params, step)


# ----------------------------------------------------------------------------- budget-aware values
def total_steps(trainer) -> int | None:
    """The fold's optimizer steps (Trainer.total_steps); None for a trainer that does not say."""
    n = getattr(trainer, "total_steps", None)
    return int(n) if n else None


def check_start(name: str, value):
    """auto, a share of the fold's optimizer steps in [0, 1), or a step number (an integer >= 1)."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            isinstance(value, float) and value >= 1):
        raise TextclfError(f"{name} must be auto, a share of the optimizer steps in [0, 1) (0.2) or a step number "
                           f"(an integer, 100), got {value!r}")
    return value


def start_step(value, auto_share: float, total: int | None) -> int:
    """The optimizer step a trick starts at: a share of the fold's steps (auto: auto_share), or the step given."""
    share = auto_share if value == "auto" else value
    if isinstance(share, float) or value == "auto":
        return int(math.ceil(float(share) * total)) if total else 0
    return int(share)


def check_auto(name: str, value):
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TextclfError(f"{name} must be auto or a positive number, got {value!r}")
    return float(value)


def auto_epsilon(base: float, params: list) -> float:
    """base·√(width/768): the attacked embedding's width against BERT-base's, for which the common values were
    found (the perturbation's norm grows with the square root of the width at equal per-coordinate size)."""
    width = int(params[0].shape[-1]) if params else 768
    return base * math.sqrt(width / 768)


def auto_ema_decay(total: int | None, share: float) -> float:
    """An EMA that averages over about `share` of the fold's steps: 1 − 1/(share·steps), in [0.9, 0.9999]."""
    if not total:
        return 0.999
    return min(0.9999, max(0.9, 1.0 - 1.0 / max(1.0, share * total)))


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TextclfError(f"{name} must be a positive number, got {value!r}")


# ----------------------------------------------------------------------------- weight averaging
class EMA(Hook):
    """Exponential moving average of the weights: shadow = decay·shadow + (1 − decay)·param after each optimizer
    step from `start_step` on (before it the shadow follows the live weights). Evaluation, and so the saved
    best checkpoint, see the shadow; training goes on with the live weights.

    warmup=true uses min(decay, (1 + n) / (10 + n)) for the n-th update (TensorFlow's num_updates rule): a short
    fine-tune of a few hundred steps would otherwise average mostly the pretrained weights at decay 0.999.
    The update is one fused lerp over all parameters; the shadow costs one copy of the trainable weights.

    decay=auto: an average over about AUTO_SHARE of the fold's optimizer steps, 1 − 1/(AUTO_SHARE·steps) within
    [0.9, 0.9999] (0.92 for a 126-step fold, 0.998 for 5,000 steps): a fixed 0.999 averages over 1,000 steps,
    longer than most fine-tunes. start_step: a step number, a share of the fold's steps (0.5) or auto (AUTO_START).
    """

    AUTO_SHARE = 0.1
    #: start_step=auto: the share of the fold's optimizer steps before the average begins (the shadow follows the
    #: live weights until then). Half, as the attacks: on the tweets (2 epochs) EMA from step 0 scored 0.3 points
    #: of macro-F1 below plain on every seed, from half of the steps within noise of it (ablation, README)
    AUTO_START = 0.5

    def __init__(self, decay: float | str = "auto", start_step: int | float | str = 0, warmup: bool = False):
        if decay != "auto" and (isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1):
            raise TextclfError(f"ema.decay must be auto or a number in [0, 1), got {decay!r}")
        self.start = check_start("ema.start_step", start_step)
        if not isinstance(warmup, bool):
            raise TextclfError(f"ema.warmup must be true or false, got {warmup!r}")
        self.decay_setting = decay
        self.decay, self.warmup = 0.999 if decay == "auto" else float(decay), warmup
        self.start_step = 0 if start_step == "auto" or isinstance(start_step, float) else int(start_step)
        self.names: list[str] = []
        self.params: list[torch.nn.Parameter] = []
        self.shadow: list[torch.Tensor] = []
        self.updates = 0
        self._live: list[torch.Tensor] | None = None

    def on_fit_start(self, trainer) -> None:
        named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad and p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = copy_of([p.detach() for p in self.params])
        self.updates, self._live = 0, None
        self.start_step = start_step(self.start, self.AUTO_START, total_steps(trainer))
        if self.decay_setting == "auto":
            self.decay = auto_ema_decay(total_steps(trainer), self.AUTO_SHARE)
        log.info("ema: decay=%.4g%s, from step %d%s", self.decay,
                 f" (auto: about {self.AUTO_SHARE:.0%} of the fold's {total_steps(trainer)} steps)"
                 if self.decay_setting == "auto" else "", self.start_step, ", warmup" if self.warmup else "")

    def state_dict(self) -> dict:
        return {"shadow": [t.detach().cpu() for t in self.shadow], "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.shadow, [t.to(s.device) for t, s in zip(state["shadow"], self.shadow)])
        self.updates = int(state["updates"])

    def decay_now(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def after_step(self, trainer) -> None:
        self._follow_device()
        if trainer.global_step < self.start_step:
            torch._foreach_copy_(self.shadow, self.params)
            return
        torch._foreach_lerp_(self.shadow, self.params, 1.0 - self.decay_now())
        self.updates += 1

    def before_evaluate(self, trainer) -> None:
        self._follow_device()
        self._live = self._swap_in(self.params)

    def after_evaluate(self, trainer) -> None:
        if self._live is not None:
            restore(self.params, self._live)
            self._live = None

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module | None = None):
        """`with ema.swapped(model):` the model holds the shadow weights inside, its live weights after."""
        params = self.params if model is None else self._params_of(model)
        live = self._swap_in(params)
        try:
            yield model
        finally:
            restore(params, live)

    def shadow_state(self) -> dict[str, torch.Tensor]:
        """The shadow weights by parameter name (they share memory with the hook's shadow)."""
        return dict(zip(self.names, self.shadow))

    def _swap_in(self, params: list) -> list[torch.Tensor]:
        live = copy_of([p.detach() for p in params])
        restore(params, self.shadow)
        return live

    def _params_of(self, model: torch.nn.Module) -> list:
        named = dict(model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise TextclfError(f"ema: the model has no parameter {missing[0]!r}: it is not the model this EMA "
                               f"averaged")
        return [named[n] for n in self.names]

    def _follow_device(self) -> None:
        if self.shadow and self.shadow[0].device != self.params[0].device:
            self.shadow = [s.to(p.device) for s, p in zip(self.shadow, self.params)]
