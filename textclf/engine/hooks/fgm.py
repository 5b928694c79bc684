"""FGM: one gradient-sized step on the word embeddings, and the loss there added to the step's gradients."""
from __future__ import annotations

from textclf.engine.hooks import check_auto
from textclf.engine.hooks.attack import Attack, auto_epsilon


class FGM(Attack):
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
