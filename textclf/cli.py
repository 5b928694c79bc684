"""`textclf <command>`: dispatch only. train/predict/info are Hydra apps whose config ships in textclf.conf;
report and ensemble read finished run folders (plain argparse)."""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

USAGE = """usage: textclf <command> [overrides ...]

commands:
  train     train a classifier (k-fold or holdout) and write a run folder
  predict   ensemble a run's folds over a new table: run_dir=... input=... output=... [backend=onnx]
  export    write a run's folds as ONNX models for ONNX Runtime: run_dir=... [quantize=int8] [output=...]
  info      parameters and forward FLOPs of the composed model (same overrides as train)
  validate  check the data and config as train would, without loading a model (same overrides as train)
  report    rank every run of a sweep (or run) folder: overrides, CV mean ± std, folds, time, status
  ensemble  blend runs trained on the same folds by their out-of-fold and test probabilities
  merge     assemble the folds of one run trained by separate jobs (kfold.folds=[k]) into one finished run

examples:
  textclf train                                     # embedded default: MiniLM-L6 on BBC News
  textclf train data=csv data.train_file=my.csv data.text_col=review data.label_col=stars
  textclf train kfold=stratified kfold.n_splits=5 pooling=cls
  textclf train -m pooling=mean,cls                 # Hydra multirun sweep (a failed job is recorded, not fatal)
  textclf train -m hparams_search=optuna hydra.sweeper.n_trials=20   # Optuna search
  textclf report multirun/2026-11-21/12-00-00       # the sweep's jobs, best first
  textclf ensemble outputs/a outputs/b --output blend
  textclf train -m kfold=stratified kfold.n_splits=3 kfold.folds=[0],[1],[2]   # one job per fold
  textclf merge multirun/2026-12-02/12-00-00 --output runs/cv                  # ... as one 3-fold run
  textclf train trainer.devices=2                   # two processes (DDP); torchrun -m textclf train also works
  textclf train resume=outputs/2026-11-21/12-00-00  # continue an interrupted run
  textclf validate data=csv data.train_file=my.csv  # the data checks alone
  textclf train --cfg job                           # print the composed config
  textclf train --help                              # every config group and option
  textclf predict run_dir=outputs/2026-11-21/12-00-00 input=new.csv output=preds.csv
  textclf export run_dir=outputs/2026-11-21/12-00-00 quantize=int8   # then predict ... backend=onnx
  textclf info pooling=attention model.max_length=256
"""

CONF = "pkg://textclf.conf"


def _dirname(overrides: str) -> str:
    """A multirun job folder name from its overrides: one path level, at most 120 characters."""
    name = overrides.replace("/", "_").replace("\\", "_") or "default"
    return name if len(name) <= 120 else name[:120] + "~"


def _direction(monitor: str) -> str:
    from textclf.commands.sweep import sweeper_direction

    return sweeper_direction(str(monitor))


OmegaConf.register_new_resolver("textclf_dirname", _dirname, replace=True)
OmegaConf.register_new_resolver("textclf_direction", _direction, replace=True)


def _run(fn, cfg: DictConfig):
    from textclf.errors import TextclfError, own_errors

    try:
        with own_errors():
            return fn(cfg)
    except TextclfError as e:
        from textclf.commands.sweep import log_to_files

        log_to_files(f"error: {e}")  # the run's log file; the console gets it once, on stderr
        print(f"textclf: error: {e}", file=sys.stderr)
        sys.exit(2)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float | None:
    from textclf.commands.sweep import run_job
    from textclf.commands.train import train

    return run_job(train, cfg)  # the CV score; in a multirun a failed job is recorded and returns None


@hydra.main(config_path=CONF, config_name="predict", version_base="1.3")
def predict_app(cfg: DictConfig) -> None:
    from textclf.commands.predict import predict

    return _run(predict, cfg)


@hydra.main(config_path=CONF, config_name="export", version_base="1.3")
def export_app(cfg: DictConfig) -> None:
    from textclf.commands.export import export

    return _run(export, cfg)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def info_app(cfg: DictConfig) -> None:
    from textclf.commands.info import info

    _run(info, cfg)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def validate_app(cfg: DictConfig) -> None:
    from textclf.commands.validate import validate_run_inputs

    _run(validate_run_inputs, cfg)


def report_command(argv: list[str]) -> int:
    from textclf.commands.report import main as report_main

    return report_main(argv)


def merge_command(argv: list[str]) -> int:
    from textclf.commands.merge import main as merge_main

    return merge_main(argv)


def ensemble_command(argv: list[str]) -> int:
    from textclf.commands.ensemble import main as ensemble_main

    return ensemble_main(argv)


COMMANDS = {"train": train_app, "predict": predict_app, "export": export_app, "info": info_app,
            "validate": validate_app}
PLAIN_COMMANDS = {"report": report_command, "ensemble": ensemble_command, "merge": merge_command}
PLUGINS = {"optuna": ("hydra_plugins.hydra_optuna_sweeper", "the Optuna sweeper"),
           "joblib": ("hydra_plugins.hydra_joblib_launcher", "the joblib launcher"),
           "slurm": ("hydra_plugins.hydra_submitit_launcher", "the submitit launcher", "slurm"),
           "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "the submitit launcher", "slurm")}


def _resume_folder(args: list[str]) -> list[str]:
    """`resume=<run folder>` is short for `resume=true hydra.run.dir=<run folder>`."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key == "resume" and value.lower() not in ("true", "false", ""):
            out += ["resume=true", f"hydra.run.dir={value}"]
        else:
            out.append(arg)
    return out


def _missing_plugin(args: list[str]) -> str | None:
    """hparams_search=optuna / launcher=joblib without their Hydra plugin: say what to install."""
    import importlib.util

    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") in ("hparams_search", "launcher", "hydra/sweeper", "hydra/launcher") and value in PLUGINS:
            module, what, *extra = PLUGINS[value]
            if importlib.util.find_spec(module) is None:
                return f"{arg} needs {what}: pip install 'textclf[{extra[0] if extra else 'sweep'}]'"
    return None


def _config_problem(command: str, args: list[str], seen: dict | None = None) -> str | None:
    """Compose the config once, as Hydra is about to, and return textclf's message for what is wrong with the
    command line or the config it composes (None: nothing, or nothing this check can judge, which Hydra then
    reports itself). Hydra's flags that only print (--help, --info, ...) or change where the config comes from
    skip it; --cfg checks only that the config composes."""
    import contextlib
    import io

    from hydra._internal.utils import get_args_parser  # the parser @hydra.main uses

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            flags = get_args_parser().parse_args(args)
    except SystemExit:  # --version, or a flag Hydra refuses: Hydra answers it
        return None
    if seen is not None:
        seen["flags"] = flags
    if flags.run + flags.multirun + (flags.cfg is not None) + flags.shell_completion + (flags.info is not None) > 1:
        return "one of -m/--multirun, --cfg, --info, --run and --shell-completion at a time"  # Hydra: a traceback
    if (flags.help or flags.hydra_help or flags.info or flags.shell_completion or flags.experimental_rerun
            or flags.config_path or flags.config_name):
        return None
    from textclf.config.schema import check_command_line  # late, as every import here: `textclf --help` needs none
    from textclf.errors import TextclfError

    try:
        check_command_line(command if command in ("predict", "export") else "train", flags.overrides, multirun=flags.multirun,
                           config_dir=flags.config_dir, values=flags.cfg is None, seen=seen)
    except TextclfError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - a fault of the check itself must never stop a valid command
        return None
    return None


def _train_as_rank(args: list[str], seen: dict) -> int:
    """One process of a multi-process run (torchrun, trainer.devices=N, a submitit task): join the process
    group, take rank 0's run folder, and on the other ranks have Hydra write nothing (rank 0 writes)."""
    from textclf.engine.launch import join_processes

    try:
        extra = join_processes(seen)
    except SystemExit as e:
        return int(e.code or 0)
    sys.argv = ["textclf-train", *args[1:], *extra]
    try:
        COMMANDS["train"]()
    finally:
        from textclf.engine.distributed import shutdown

        shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from textclf import __version__

        print(f"textclf {__version__}")
        return 0
    command = args[0]
    if command in PLAIN_COMMANDS:
        return PLAIN_COMMANDS[command](args[1:])
    if command not in COMMANDS:
        print(f"textclf: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    missing = _missing_plugin(args[1:])
    if missing:
        print(f"textclf: error: {missing}", file=sys.stderr)
        return 2
    if command == "train" and not {"-m", "--multirun"} & set(args) and any(
            a.startswith("hparams_search=") and not a.endswith("=null") for a in args):
        print("textclf: note: hparams_search only acts in a multirun: textclf train -m hparams_search=...",
              file=sys.stderr)
    if command == "train":
        args = _resume_folder(args)
    seen: dict = {}
    problem = _config_problem(command, args[1:], seen)
    if problem:
        from textclf.engine.callbacks import is_main

        if is_main():  # every process of a run finds the same problem: one says it
            print(f"textclf: error: {problem}", file=sys.stderr)
        return 2
    if command == "train":
        from textclf.engine.callbacks import launched
        from textclf.engine.launch import processes_wanted, start_processes

        wanted = processes_wanted(seen)
        if isinstance(wanted, str):
            print(f"textclf: error: {wanted}", file=sys.stderr)
            return 2
        if wanted > 1:
            return start_processes(wanted, args[1:], seen)
        if launched():
            return _train_as_rank(args, seen)
    # @hydra.main reads sys.argv: drop the subcommand so Hydra sees only its own arguments
    extra = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout", f"hydra.job.name={command}"] \
        if command in ("info", "validate") else []  # they write nothing
    sys.argv = [f"textclf-{command}", *args[1:], *extra]
    COMMANDS[command]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
