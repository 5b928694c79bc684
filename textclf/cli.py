"""`textclf <command>`: dispatch only. Each command is a Hydra app whose config ships in textclf.conf."""
from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

USAGE = """usage: textclf <command> [overrides ...]

commands:
  train     train a classifier (k-fold or holdout) and write a run folder
  predict   ensemble a run's folds over a new table: run_dir=... input=... output=...
  info      parameters and forward FLOPs of the composed model (same overrides as train)

examples:
  textclf train                                     # embedded default: MiniLM-L6 on BBC News
  textclf train data=csv data.train_file=my.csv data.text_col=review data.label_col=stars
  textclf train kfold=stratified kfold.n_splits=5 pooling=cls
  textclf train -m pooling=mean,cls                 # Hydra multirun sweep
  textclf train --cfg job                           # print the composed config
  textclf train --help                              # every config group and option
  textclf predict run_dir=outputs/2026-11-21/12-00-00 input=new.csv output=preds.csv
  textclf info pooling=attention model.max_length=256
"""

log = logging.getLogger("textclf")
CONF = "pkg://textclf.conf"


def _dirname(overrides: str) -> str:
    """A multirun job folder name from its overrides: one path level, at most 120 characters."""
    name = overrides.replace("/", "_").replace("\\", "_") or "default"
    return name if len(name) <= 120 else name[:120] + "~"


OmegaConf.register_new_resolver("textclf_dirname", _dirname, replace=True)


def _run(fn, cfg: DictConfig):
    from .errors import TextclfError, own_errors

    try:
        with own_errors():
            return fn(cfg)
    except TextclfError as e:
        _log_to_files(f"error: {e}")
        print(f"textclf: error: {e}", file=sys.stderr)
        sys.exit(2)


def _log_to_files(message: str) -> None:
    """Record the error in the run's log file; the console gets it once, on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float:
    from .train import train

    return _run(train, cfg)


@hydra.main(config_path=CONF, config_name="predict", version_base="1.3")
def predict_app(cfg: DictConfig) -> None:
    from .predict import predict

    return _run(predict, cfg)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def info_app(cfg: DictConfig) -> None:
    from .info import info

    _run(info, cfg)


COMMANDS = {"train": train_app, "predict": predict_app, "info": info_app}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"textclf {__version__}")
        return 0
    command = args[0]
    if command not in COMMANDS:
        print(f"textclf: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # @hydra.main reads sys.argv: drop the subcommand so Hydra sees only its own arguments
    extra = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.job.name=info"] \
        if command == "info" else []  # info writes nothing
    sys.argv = [f"textclf-{command}", *args[1:], *extra]
    COMMANDS[command]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
