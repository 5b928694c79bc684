"""`textclf <command>`: dispatch only. train/predict/export/info/validate are Hydra apps whose config ships in
textclf.conf; report, ensemble and merge read finished run folders (plain argparse).

A Hydra command composes its config once, in @hydra.main, and checks it once (textclf.config.check says where).
Hydra runs with HYDRA_FULL_ERROR=1, so a command line it cannot compose reaches main() as an exception instead of
being printed: only then does textclf compose again, to say what is wrong in its own words (with the nearest valid
names). A sweep (-m) is checked once more before it starts, as its first job would only fail after the sweep began.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
from functools import partial

import hydra
from omegaconf import DictConfig, OmegaConf

USAGE = """usage: textclf <command> [overrides ...]

commands:
  train     train a classifier (k-fold or holdout) and write a run folder
  predict   ensemble a run's folds over a new table: run_dir=... input=... output=... [backend=onnx]
  export    write a run's folds as ONNX models for ONNX Runtime: run_dir=... [quantize=int8] [output=...]
  info      parameters and forward FLOPs of the composed model (same overrides as train)
  validate  check the data and config as train would, without loading a model (same overrides as train)
  distill   train one model on a finished run's fold-ensemble outputs: textclf distill <run folder> [overrides]
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
  textclf distill outputs/2026-11-21/12-00-00 data.unlabeled_file=more_texts.csv   # one model from 5 folds
  textclf train pseudo_label=default pseudo_label.teacher=outputs/2026-11-21/12-00-00 data.unlabeled_file=u.csv
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
    from textclf.io import file_fault

    try:
        with own_errors(), _stop_on_sigterm():
            return fn(cfg)
    except (TextclfError, OSError) as e:
        message = str(e) if isinstance(e, TextclfError) else file_fault(e)
        if message is None:
            raise
        from textclf.commands.sweep import log_to_files

        log_to_files(f"error: {message}")  # the run's log file; the console gets it once, on stderr
        print(f"textclf: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: every file is written atomically, none is left half-written
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        print(f"textclf: interrupted ({signal.Signals(signum).name}): nothing half-written was left; run the same "
              f"command again to start it over", file=sys.stderr)
        sys.exit(128 + int(signum))


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM (a scheduler, `kill`) stops predict and export as Ctrl-C does: a KeyboardInterrupt carrying the signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _plain(fn, argv: list[str]) -> int:
    """report, merge, ensemble: a file fault (no space, read-only, ...) or a Ctrl-C is one line, not a traceback."""
    from textclf.io import file_fault

    try:
        return fn(argv)
    except OSError as e:
        if file_fault(e) is None:
            raise
        print(f"textclf: error: {file_fault(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textclf: interrupted (SIGINT): every file is written atomically, none was left half-written; run "
              "the same command again", file=sys.stderr)
        return 130


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def train_app(cfg: DictConfig) -> float | None:
    from textclf.commands.sweep import run_job
    from textclf.commands.train import train
    from textclf.config.check import checked

    return run_job(partial(checked, train), cfg)  # the CV score; in a multirun a failed job is recorded: None


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
    from textclf.config.check import checked

    _run(partial(checked, info), cfg)


@hydra.main(config_path=CONF, config_name="train", version_base="1.3")
def validate_app(cfg: DictConfig) -> None:
    from textclf.commands.validate import validate_run_inputs
    from textclf.config.check import checked

    _run(partial(checked, validate_run_inputs), cfg)


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


#: what a student of `textclf distill` takes from its teacher's config unless the command line gives it
INHERITED = ("data.train_file", "data.valid_file", "data.test_file", "data.text_col", "data.text_pair_col",
             "data.label_col", "data.label_sep", "data.group_col", "data.exclude_rows", "data.encoding",
             "data.encoding_errors", "task", "positive_label", "model.max_length")


def _hydra_literal(value) -> str:
    """A config value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_literal(v) for v in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _distill_args(args: list[str]) -> list[str] | str:
    """`textclf distill <teacher run> [overrides]` as the train command line it stands for: one model
    (kfold=none) learning the teacher's outputs (distill=default), on the teacher's data and task settings
    (INHERITED) unless the overrides give them; a message when the teacher cannot be read."""
    from pathlib import Path

    if not args or "=" in args[0] or args[0].startswith("-"):
        return "textclf distill needs the teacher's run folder first: textclf distill <run folder> [overrides]"
    from textclf.run.folder import CONFIG

    teacher, overrides = Path(args[0]).expanduser(), args[1:]
    config = teacher / CONFIG
    if not config.is_file():
        return (f"textclf distill {args[0]}: no finished run there ({config} is missing): give the folder "
                f"textclf train wrote")
    cfg = OmegaConf.load(config)
    given = {a.partition("=")[0].lstrip("+~") for a in overrides}
    inherited = []
    for key in INHERITED:
        value = OmegaConf.select(cfg, key, default=KeyError)
        if key in given or value is KeyError:
            continue
        if OmegaConf.is_config(value):  # several label columns: a list
            value = OmegaConf.to_container(value)
        inherited.append(f"{key}={_hydra_literal(value)}")
    fixed = [a for a in ("kfold=none", "distill=default") if a.partition("=")[0] not in given]
    return ["train", *inherited, *fixed, f"distill.teacher={_hydra_literal(str(teacher.resolve()))}", *overrides]


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


#: Hydra's own flags, as @hydra.main parses them (hydra/_internal/utils.py get_args_parser)
HYDRA_FLAGS = ((("--help", "-h"), {"action": "store_true"}), (("--hydra-help",), {"action": "store_true"}),
               (("--version",), {"action": "store_true"}), (("--cfg", "-c"), {"choices": ["job", "hydra", "all"]}),
               (("--resolve",), {"action": "store_true"}), (("--package", "-p"), {}),
               (("--run", "-r"), {"action": "store_true"}), (("--multirun", "-m"), {"action": "store_true"}),
               (("--shell-completion", "-sc"), {"action": "store_true"}), (("--config-path", "-cp"), {}),
               (("--config-name", "-cn"), {}), (("--config-dir", "-cd"), {}), (("--experimental-rerun",), {}),
               (("--info", "-i"), {"nargs": "?", "const": "all",
                                   "choices": ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]}),
               (("overrides",), {"nargs": "*"}))


def hydra_flags(args: list[str]) -> argparse.Namespace | None:
    """Hydra's flags and overrides on a command line, or None where Hydra refuses them (it says why itself)."""
    parser = argparse.ArgumentParser(add_help=False)
    for names, options in HYDRA_FLAGS:
        parser.add_argument(*names, **options)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return parser.parse_args(args)
    except SystemExit:
        return None


def _config_name(command: str) -> str:
    return command if command in ("predict", "export") else "train"


def _elsewhere(flags: argparse.Namespace) -> bool:
    """The config comes from somewhere textclf does not compose (or Hydra only prints): Hydra alone answers."""
    return bool(flags.help or flags.hydra_help or flags.version or flags.info or flags.shell_completion
                or flags.experimental_rerun or flags.config_path or flags.config_name)


def _before_hydra(command: str, flags: argparse.Namespace | None) -> str | None:
    """What textclf refuses before Hydra starts: flags that do not go together, and a sweep whose fixed values,
    options or keys are wrong (each job would fail only after the sweep began)."""
    from textclf.engine.callbacks import launched

    if flags is None:
        return None
    if flags.run + flags.multirun + (flags.cfg is not None) + flags.shell_completion + (flags.info is not None) > 1:
        return "one of -m/--multirun, --cfg, --info, --run and --shell-completion at a time"  # Hydra: a traceback
    if not flags.multirun or _elsewhere(flags):
        return None
    if launched():
        return ("-m (multirun) inside a multi-process launch: run the sweep with launcher=submitit_local or "
                "launcher=slurm (hydra.launcher.tasks_per_node=N), or torchrun one run")
    return _sweep_problem(command, flags)


def _sweep_problem(command: str, flags: argparse.Namespace) -> str | None:
    from textclf.config.schema import check_command_line
    from textclf.engine.launch import processes_wanted
    from textclf.errors import TextclfError

    try:
        cfg = check_command_line(_config_name(command), flags.overrides, multirun=True, config_dir=flags.config_dir)
        wanted = processes_wanted(cfg, multirun=True) if command == "train" and cfg is not None else 1
    except TextclfError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - a fault of the check itself must never stop a valid command
        return None
    return wanted if isinstance(wanted, str) else None


def _composition_problem(command: str, flags: argparse.Namespace | None) -> str | None:
    """Hydra could not compose this command line: textclf's message for it (every problem, the nearest valid
    names), or None where it cannot judge (Hydra's own message is then shown)."""
    from textclf.config.schema import check_command_line
    from textclf.errors import TextclfError

    if flags is None or _elsewhere(flags):
        return None
    try:
        check_command_line(_config_name(command), flags.overrides, multirun=flags.multirun,
                           config_dir=flags.config_dir, values=flags.cfg is None)
    except TextclfError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - a fault of the check itself: Hydra's message is shown instead
        return None
    return None


def _refuse(message: str) -> int:
    from textclf.engine.callbacks import is_main

    if is_main():  # every process of a run finds the same problem: one says it
        print(f"textclf: error: {message}", file=sys.stderr)
    return 2


def _run_hydra_app(command: str, flags: argparse.Namespace | None) -> int:
    """Run the Hydra app of `command` on sys.argv; its exit status. Hydra composes the config once; with
    HYDRA_FULL_ERROR=1 it raises what it would otherwise print, so a composition error gets textclf's message and
    a Refused (the config check, trainer.devices) is printed here, once."""
    from hydra.errors import CompactHydraException, ConfigCompositionException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    from textclf.engine.callbacks import launched
    from textclf.errors import Refused

    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        COMMANDS[command]()
    except Refused as e:
        return _refuse(str(e.error))
    except CompactHydraException as e:
        problem = _composition_problem(command, flags) if isinstance(
            e, (ConfigCompositionException, OverrideParseException)) else None
        if problem:
            return _refuse(problem)
        print(e, file=sys.stderr)  # as Hydra prints it
        if isinstance(e.__cause__, OmegaConfBaseException):
            print(e.__cause__, file=sys.stderr)
        return 1
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before
        if launched():  # a process of a multi-process run joined the process group (textclf.engine.launch)
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
    if command == "distill":
        args = _distill_args(args[1:])
        if isinstance(args, str):
            print(f"textclf: error: {args}", file=sys.stderr)
            return 2
        command = "train"
    if command in PLAIN_COMMANDS:
        return _plain(PLAIN_COMMANDS[command], args[1:])
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
    flags = hydra_flags(args[1:])
    problem = _before_hydra(command, flags)
    if problem:
        return _refuse(problem)
    # @hydra.main reads sys.argv: drop the subcommand so Hydra sees only its own arguments
    extra = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout", f"hydra.job.name={command}"] \
        if command in ("info", "validate") else []  # they write nothing
    sys.argv = [f"textclf-{command}", *args[1:], *extra]
    return _run_hydra_app(command, flags)


if __name__ == "__main__":
    sys.exit(main())
