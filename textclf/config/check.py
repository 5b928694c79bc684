"""When a composed config is checked: once per composition, by the first code that sees it, before anything is
written for it. Hydra composes (once, in @hydra.main); `validate` (textclf.config.schema) is the one check.

- ConfigCheck, a Hydra callback (first in train.yaml's hydra.callbacks): a single run of train, validate or info is
  checked as soon as Hydra has composed it, before Hydra makes the run folder and writes .hydra/ and the log, and
  before the folder is locked, so a refused command writes nothing. `textclf validate` and `textclf train` make
  exactly this call (the task function is too late for train: Hydra has written into the run folder by then).
- checked(fn, cfg): a multirun's sweep composes each job's config itself and makes the job's folder first; the
  job checks it as its first step, so a refusal is that job's recorded failure and the sweep goes on.
- predict and export check their options as the first step of their task functions (they write nothing into
  Hydra's folder).

What only the data or the backbone can tell (the loss against the task, ...) is checked later, once, by
textclf.commands.validate.preflight, which both commands run.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from textclf.config.schema import validate
from textclf.errors import Refused, TextclfError


class ConfigCheck(Callback):
    """Hydra callback: check a single run's composed config before Hydra writes anything for it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        task = copy.deepcopy(config)  # what the task function will get: the config without its hydra node
        with read_write(task), open_dict(task):
            del task["hydra"]
        HydraConfig.instance().set_config(config)  # ${hydra:runtime.cwd} in a value resolves (run_job sets it too)
        try:
            validate(task, lenient=True)  # lenient: ${hydra:runtime.output_dir} exists only once the run starts
        except TextclfError as e:
            raise Refused(e) from None  # Hydra would turn an Exception raised here into a warning and go on


def checked(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """fn(cfg), the config checked first when it is a multirun job's (a single run's was checked by ConfigCheck)."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        validate(cfg)
    return fn(cfg)
