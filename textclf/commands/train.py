"""`textclf train`: the run recipe. It reads top to bottom as its stages:

  1. setup     every check (textclf.commands.validate.preflight), the run folder (resume or start over), the folds,
               one tokenization for the whole run, the loggers
  2. folds     per fold: build (model, loaders, optimizer, hooks), fit (the Trainer loop), keep its
               out-of-fold outputs; a fold finished by an earlier run into the same folder is kept
  3. assemble  out-of-fold outputs and metrics, calibration, tuned thresholds, test predictions (the folds
               ensembled)
  4. write     oof.csv, test_predictions.csv, plots, metrics.json, labels.json, the error analysis
               (label_issues.csv, data_checks.json), then run.json last

The run folder (Hydra's output directory) and every file in it: textclf.run.folder.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from textclf.data.augment import Augmented, build_augmenter
from textclf.commands.teach import Taught, teach
from textclf.commands.validate import Checked, preflight
from textclf.config.options import chosen
from textclf.data.tables import Collator, EpochBatches, Encoded, LabelSpace, balanced_weights, sorted_batches, tokenize_with
from textclf.engine import distributed
from textclf.engine.time_limit import Costs, Plan
from textclf.errors import TextclfError
from textclf.engine.callbacks import Callback, Callbacks, RunContext, is_main
from textclf.run import folder
from textclf.run.checkpoint import (FoldCheckpoint, data_changes, fault_point, finished_fold, finished_run_score,
                                    input_fingerprints, prepare_run_dir, save_fold_outputs, tensorboard_dirs)
from textclf.run.signals import StopSignals
from textclf.engine.kfold import Fold, FoldOutputs, FoldResult, free_memory, make_folds
from textclf.inference.ensemble import ensemble
from textclf.inference.torch_folds import torch_folds
from textclf.io import save_weights, write_csv, write_json, write_text
from textclf.observe.analysis import Rows, data_checks, examine_labels, label_strings, over_max_length
from textclf.observe.html_report import write_html_report
from textclf.engine.optim import describe_learning_rates

log = logging.getLogger(__name__)

#: trainer.time_limit's measurement: optimizer steps timed (after one that warms up), validation batches timed
PROBE_STEPS, PROBE_EVAL_BATCHES = 3, 3
#: seconds set aside for the run's end (out-of-fold assembly, error analysis, plots, report)
END_S = 15.0


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> float:
    """Train every fold; return the monitored metric's mean across folds (what a sweep optimises)."""
    return TrainRun(cfg, Path(run_dir) if run_dir is not None else output_dir()).run()


@dataclass
class RunData:
    """The run's tokenized inputs: training and validation rows together (validation-file rows after the training
    file's), then the augmented copies of training-file rows (augment=eda|mlm), which only ever train."""

    encoded: Encoded
    y: np.ndarray
    n_train_file: int  # rows from data.train_file; the rest came from data.valid_file (and augmentation)
    test: Encoded | None
    #: for each added row (they sit at n_rows, n_rows + 1, ...): the training-file row an augmented copy was made
    #: from, or -1 for a row every fold trains on (pseudo-labels, distill's unlabelled texts)
    augmented_from: np.ndarray | None = None
    #: distill: every row's training target (the teacher's outputs mixed with the labels); None: the labels
    soft: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """The original rows (training and validation files): the only ones validated and scored."""
        return len(self.y) - (0 if self.augmented_from is None else len(self.augmented_from))

    def with_copies(self, rows: np.ndarray) -> np.ndarray:
        """A fold's training rows followed by the augmented copies of exactly those rows and the rows every fold
        trains on."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.augmented_from is None:
            return rows
        added = np.isin(self.augmented_from, rows) | (self.augmented_from < 0)
        return np.concatenate([rows, self.n_rows + np.flatnonzero(added)])


class TrainRun:
    def __init__(self, cfg: DictConfig, run_dir: Path, *, merging: bool = False):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        #: textclf merge: every fold is finished already (copied from the fold jobs); nothing is trained
        self.merging = merging
        self.main = is_main()  # the one decision of who writes files and logs to loggers
        self.callbacks: Callback = Callbacks()
        self.stop = StopSignals()  # installed by run(); until then it never asks to stop
        self.finished_score: float | None = None  # set by setup() when the folder holds this run, finished
        self.started = time.time()  # trainer.time_limit counts from here
        self.plan: Plan | None = None  # trainer.time_limit's plan (textclf.engine.time_limit), set before the folds

    def run(self) -> float:
        # one process at a time in the folder (several processes of one run: rank 0 holds it for them), taken here
        # only when no entry above took it (train() called directly, merge); SIGINT / SIGTERM stop at the next safe
        # point (engine.interrupt)
        with folder.hold(self.run_dir) if self.main else contextlib.nullcontext(), StopSignals() as self.stop:
            if self.main:  # a folder holding the user's files is refused before anything is written
                folder.adopt(self.run_dir, overwrite=bool(self.cfg.overwrite))
            return self._run()

    def _run(self) -> float:
        status = "failed"
        try:
            self.setup()
            if self.finished_score is not None:
                status = "ok"
                return self.finished_score
            outputs = FoldOutputs(len(self.data.y), len(self.labels.classes))
            self.plan_time()
            trained = []
            for fold in self.folds:
                self.stop.check(f"before fold {fold.index}", "every finished fold is saved")
                if trained and self.plan is not None and time.time() > self.started + self.plan.deadline_s:
                    log.warning("trainer.time_limit reached before fold %d: folds %s are not trained; the out-of-fold "
                                "outputs cover the %d trained fold(s)", fold.index,
                                ", ".join(str(f.index) for f in self.folds[len(trained):]), len(trained))
                    break
                outputs.add(self.train_fold(fold))
                trained.append(fold)
                free_memory()
            self.folds = trained  # the test predictions ensemble the folds trained
            self.stop.check("after the last fold", "every fold is saved")
            summary, oof = self.assemble(outputs)
            if self.main:
                self.write(summary, oof, outputs)
            status = "ok"
            return float(summary["score"])
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.callbacks.close(status)

    # ------------------------------------------------------------------------- 1. setup
    def setup(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        checked = preflight(self.cfg)  # every check textclf validate makes, before anything heavy loads
        cfg = self.cfg = checked.cfg
        self.checked, self.labels, self.monitor = checked, checked.labels, checked.monitor
        self.device = distributed.shared_device(checked.device)  # several processes on GPUs: each its own (LOCAL_RANK)
        # an earlier run in this folder with the same settings and data is continued (or, finished, kept and not
        # trained again); an unfinished one with others starts over; a finished one is replaced only by overwrite=true.
        # Several processes: rank 0 decides (and writes the run files), the others follow its decision
        inputs, state = distributed.on_main(lambda: self.prepare(cfg, checked))
        self.resuming, self.finished_score = state == "resume", None
        if state == "finished":
            self.finished_score = finished_run_score(self.run_dir)
            return
        self.folds, folds_frame = checked.folds, checked.folds_frame
        distributed.barrier()  # rank 0 may have removed an earlier run's folds.csv
        if (self.run_dir / folder.FOLDS).exists():  # a rerun validates on identical splits
            from hydra.utils import instantiate

            valid = checked.splits.get("valid")
            self.folds, folds_frame = make_folds(instantiate(cfg.kfold), self.labels, checked.y,
                                                 len(valid) if valid else 0, data_cfg=cfg.data, run_dir=self.run_dir,
                                                 rows=checked.splits["train"].rows)
        if self.main:  # recorded before they are written: textclf's own, to resume, replace or remove
            folder.claim(self.run_dir, [f"{folder.fold_dir(self.run_dir, f.index).name}/" for f in self.folds]
                         + [f"{d}/" for d in tensorboard_dirs([OmegaConf.to_container(cfg, resolve=True)])])
        log.info("task %s, %d %s: %s", self.labels.task, len(self.labels.classes),
                 "targets" if self.labels.task == "regression" else "classes", ", ".join(self.labels.names[:20]))
        seed_everything(int(cfg.trainer.seed), bool(cfg.trainer.deterministic))
        log_processes(cfg.trainer)
        if self.main:
            save_run_files(self.run_dir, cfg, checked.tokenizer, checked.backbone_config)
            write_json(self.run_dir / folder.INPUTS, inputs)
            write_csv(self.run_dir / folder.FOLDS, folds_frame)
        augmented = augment_run(checked)
        taught = teach(checked, augmented, self.device)  # pseudo_label / distill: what the teacher run adds
        self.data = tokenize_run(checked, augmented, taught)
        if augmented is not None and self.main:
            write_json(self.run_dir / folder.AUGMENT, augment_report(checked, augmented, self.data, self.folds))
        if taught is not None and self.main:
            write_json(self.run_dir / taught.record_file, taught.record)
        self.callbacks = build_callbacks(cfg) if self.main else Callbacks()
        self.callbacks.on_run_start(RunContext(self.run_dir, OmegaConf.to_container(cfg, resolve=True),
                                               self.labels.task, self.monitor, len(self.folds),
                                               [str(n) for n in self.labels.names], sweep_info()))

    def prepare(self, cfg: DictConfig, checked: Checked) -> tuple[dict, str]:
        """The data files' fingerprints and how the run starts in its folder (engine.checkpoint.prepare_run_dir)."""
        inputs = input_fingerprints(cfg.data, checked.splits)
        if self.merging:  # the jobs' data must be the data of now: merge never trains, so it never starts over
            changed = data_changes(self.run_dir, inputs)
            if changed:
                raise TextclfError(f"cannot merge: {'; '.join(changed)}. The fold jobs were trained on other data "
                                   f"than the files hold now; merge joins finished folds only and never trains: "
                                   f"put the data back, or train the folds again")
        return inputs, prepare_run_dir(self.run_dir, cfg, inputs, resume=bool(cfg.resume) or self.merging,
                                       overwrite=bool(cfg.overwrite))

    def plan_time(self) -> None:
        """trainer.time_limit: measure what fold 0's steps and evaluations cost here, then fit the epochs (and the
        folds) into the budget (textclf.engine.time_limit); the plan is kept in time_plan.json so a resumed run follows
        it. Without a time limit, nothing."""
        from textclf.config.durations import parse_duration
        from textclf.engine.time_limit import Plan, plan

        if self.merging:  # merge joins finished folds: nothing is trained, nothing to plan
            return
        budget = parse_duration(self.cfg.trainer.time_limit)
        if budget is None:
            return
        path = self.run_dir / folder.TIME_PLAN
        if self.resuming and path.exists():
            self.plan = Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
            log.info("%s (kept from the run being resumed)", self.plan.describe())
        else:
            costs = self.measure_costs(self.folds[0])
            self.plan = distributed.on_main(lambda: plan(budget, time.time() - self.started, costs,
                                                         int(self.cfg.trainer.epochs), len(self.folds)))
            if self.main:
                write_json(path, self.plan.to_dict())
            log.info("%s", self.plan.describe())
        self.folds = self.folds[:self.plan.folds]

    def measure_costs(self, fold: Fold) -> Costs:
        """What one fold costs on this machine: a few optimizer steps of fold 0's model on its own training batches
        (the first one, which warms up, not counted), a few of its validation batches spread over their lengths, and
        building the fold. The model is thrown away: fold 0 then trains from its seed as it would without it."""
        import torch

        from textclf.engine.time_limit import Costs
        from textclf.engine.trainer import predict_logits

        t0 = time.perf_counter()
        trainer, loader = self.build_fold(dataclasses.replace(fold, train_rows=self.data.with_copies(fold.train_rows)))
        build_s = time.perf_counter() - t0
        steps_per_epoch = trainer.settings.steps_per_epoch or 1
        times = trainer.time_steps(loader, min(PROBE_STEPS + 1, steps_per_epoch))
        step_s = float(np.mean(times[1:] if len(times) > 1 else times))  # the first one warms up
        valid = list(trainer.evaluator.loader.batch_sampler)  # this process's batches
        picked = [valid[i] for i in np.unique(np.linspace(0, len(valid) - 1, min(PROBE_EVAL_BATCHES, len(valid)))
                                              .round().astype(int))] if len(valid) else []
        t = time.perf_counter()
        if picked:
            sample = torch.utils.data.DataLoader(trainer.evaluator.loader.dataset, batch_sampler=picked,
                                                 collate_fn=trainer.evaluator.loader.collate_fn)
            predict_logits(trainer.model, sample, self.device, str(self.cfg.trainer.precision), desc="time_limit")
        batch_s = (time.perf_counter() - t) / max(1, len(picked))
        eval_s = batch_s * len(valid)
        test = self.data.test
        test_batches = -(-len(test) // int(self.cfg.trainer.eval_batch_size)) if test is not None else 0
        s = trainer.settings
        evals = 1 + (int(s.evals_per_epoch) - 1 if s.evals_per_epoch and not s.eval_every_steps else 0) + \
            (steps_per_epoch // int(s.eval_every_steps) if s.eval_every_steps else 0)
        del trainer, loader
        free_memory()
        # the run's end: the ensemble's test predictions, out-of-fold assembly, analysis and plots (a few seconds)
        # average=top makes its soup with up to average_top_k more evaluations at the fold's end
        soup_evals = int(self.cfg.trainer.average_top_k) if str(self.cfg.trainer.average) == "top" else 0
        return Costs(step_s=step_s, steps_per_epoch=steps_per_epoch, eval_s=eval_s, evals_per_epoch=evals,
                     fold_s=build_s + test_batches * batch_s + soup_evals * eval_s, end_s=END_S)

    # ------------------------------------------------------------------------- 2. one fold
    def train_fold(self, fold: Fold) -> FoldResult:
        fold_dir = folder.fold_dir(self.run_dir, fold.index)
        kept = finished_fold(fold_dir, fold.index) if self.resuming else None
        if kept is not None:
            log.info("fold %d: finished before, kept", fold.index)
            self.callbacks.on_fold_end(fold.index, kept.result)
            return kept
        if self.merging:
            raise TextclfError(f"fold {fold.index} is not finished in the merged run folder {self.run_dir}; merge "
                               f"never trains: train it (kfold.folds=[{fold.index}]) and merge again")
        train_rows = self.data.with_copies(fold.train_rows)
        added = self.data.augmented_from[train_rows[len(fold.train_rows):] - self.data.n_rows] if len(
            train_rows) > len(fold.train_rows) else np.zeros(0, dtype=np.int64)
        copies = "".join(f" + {n} {what}" for n, what in (
            (int((added >= 0).sum()), "augmented copies of them"), (int((added < 0).sum()), "pseudo-labelled rows"
                                                                    if self.data.soft is None else "unlabelled texts"))
            if n)
        log.info("fold %d: %d training rows%s, %d validation rows", fold.index, len(fold.train_rows), copies,
                 len(fold.valid_rows))
        import torch

        torch.manual_seed(int(self.cfg.trainer.seed) + fold.index)
        checkpoint = FoldCheckpoint(fold_dir / folder.CHECKPOINT, int(self.cfg.trainer.checkpoint_every_steps or 0),
                                    tag=str(fold.index))
        if not self.resuming and self.main:
            checkpoint.clear()
        distributed.barrier()
        trainer, train_loader = self.build_fold(dataclasses.replace(fold, train_rows=train_rows))
        if distributed.active():  # the same initial weights everywhere (DDP checks), then each rank its own dropout
            torch.manual_seed(int(self.cfg.trainer.seed) + fold.index + 7919 * distributed.rank())
        labels = self.labels
        for evaluation in trainer.fit(train_loader, checkpoint=checkpoint, stop=self.stop):
            if evaluation.is_best and self.main:  # the evaluated weights (with ema=default, the average) are in now
                save_weights(fold_dir / folder.WEIGHTS, evaluation.model.state_dict())
        fit = trainer.result
        rows, logits = fit.best_valid_logits
        best = {k: v for k, v in fit.best_metrics.items() if k not in ("epoch", "step")}
        result = FoldResult(fold.index, {"fold": fold.index, "best_epoch": fit.best_epoch,
                                         "best_step": fit.best_metrics["step"], **best,
                                         "train_samples_per_s": fit.train_samples_per_s,
                                         "eval_samples_per_s": fit.eval_samples_per_s,
                                         **({"peak_gpu_memory_mb": fit.peak_gpu_memory_mb}
                                            if fit.peak_gpu_memory_mb is not None else {})},
                            rows, labels.outputs(logits), fold_curves(fit, self.monitor))
        if self.main:
            save_fold_outputs(fold_dir, result)
            checkpoint.clear()
        fault_point(f"fold:{fold.index}")
        chosen = self.selection_metric()
        log.info("fold %d: best at step %d (epoch %d), %s=%.4f%s", fold.index, result.result["best_step"],
                 fit.best_epoch, self.monitor, best[self.monitor],
                 f" (chosen by {chosen}={best[chosen]:.4f}, at thresholds tuned on the validation rows)"
                 if chosen != self.monitor else "")
        self.callbacks.on_fold_end(fold.index, result.result)
        return result

    def build_fold(self, fold: Fold):
        """A fresh model, loaders, optimizer, schedule, loss and hooks for one fold, joined in a Trainer."""
        import torch
        from hydra.utils import instantiate

        from textclf.engine.hooks import build_hooks
        from textclf.engine.evaluate import TaskEvaluator
        from textclf.engine.trainer import FitSettings, Trainer
        from textclf.models.losses import build_loss
        from textclf.models.classifier import build_classifier

        cfg, tcfg, data, device = self.cfg, self.cfg.trainer, self.data, self.device
        seed = int(tcfg.seed)
        model = build_classifier(cfg.model, cfg.pooling, cfg.head, self.labels.num_outputs,
                                 name_or_path=self.checked.name_or_path, backbone_config=self.checked.backbone_config,
                                 init_from=self.init_weights())
        if model.head.prior_bias and not cfg.model.init_from:  # the head records head.prior_bias
            prior_bias(model, self.labels, data.y[fold.train_rows])
        collate = Collator.for_tokenizer(self.checked.tokenizer, data.encoded, data.y)
        # distill: training batches carry the soft targets; validation scores against the labels
        train_collate = collate if data.soft is None else Collator.for_tokenizer(self.checked.tokenizer, data.encoded,
                                                                                 data.soft)
        # loaders draw their worker seeds from their own generator: each new iterator would otherwise take a number
        # from the global RNG (the dropout masks' source), and a resumed epoch, which makes its iterator after
        # restoring that RNG, would drift from the uninterrupted run
        loader = partial(torch.utils.data.DataLoader, range(len(data.encoded)), collate_fn=collate,
                         num_workers=int(tcfg.num_workers), pin_memory=device.type == "cuda",
                         generator=torch.Generator().manual_seed(seed))
        lengths, world = data.encoded.lengths, distributed.world_size() if distributed.active() else 1
        # trainer.batch_size is per process: the global batch (world x batch_size rows) is grouped, then dealt out
        train_seqs = data.encoded.seq_rows(fold.train_rows)
        weights = None
        if str(tcfg.sampler) == "balanced":  # class-balanced draws, length grouping kept
            weights = balanced_weights(data.encoded.seq_labels(data.y)[train_seqs], self.labels.task)
        batch = fold_batch_size(tcfg, len(train_seqs), world)
        train_batches = EpochBatches(train_seqs, lengths, batch * world, int(tcfg.length_window),
                                     seed=seed + 1000 * fold.index, weights=weights)
        valid_batches = sorted_batches(data.encoded.seq_rows(fold.valid_rows), lengths, int(tcfg.eval_batch_size))
        valid_batches = valid_batches[:limit_batches(tcfg.limit_eval_batches, len(valid_batches))]
        if world > 1:
            train_batches = distributed.ShardedBatches(train_batches, distributed.rank(), world)
            valid_batches = distributed.ShardedList(valid_batches, distributed.rank(), world)
        n_train = limit_batches(tcfg.limit_train_batches, len(train_batches))
        steps_per_epoch = -(-n_train // int(tcfg.grad_accum_steps))
        model.to(device)  # before the optimizer, so its state lives on the same device
        if tcfg.compile:
            model.compile(dynamic=True)  # in place: state_dict keys stay the same for saving and predict
        optimizer = instantiate(cfg.optimizer)(model)
        # trainer.time_limit: the schedule of the steps that will run (the plan's, the last epoch maybe cut short)
        epochs = self.plan.epochs if self.plan is not None else int(tcfg.epochs)
        max_steps = self.plan.steps if self.plan is not None else None
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=max_steps or steps_per_epoch * epochs)
        loss_fn = build_loss(cfg.loss, self.labels, data.y[fold.train_rows])
        eval_loss_fn = copy.deepcopy(loss_fn)  # scores logits on the CPU; the training copy stays on the device
        if data.soft is not None:  # distill: the student learns the soft targets; its validation loss is the task's
            from textclf.models.losses import SoftTargetLoss

            loss_fn = SoftTargetLoss(self.labels.task, self.labels.single_logit)
        hooks = build_hooks(cfg.get("adversarial"), cfg.get("ema"))  # fresh per fold; `none` ({}) builds nothing
        if str(tcfg.average) == "last":  # after EMA: it averages the weights EMA evaluates
            from textclf.engine.hooks.swa import SWA

            hooks.append(SWA(start=float(tcfg.average_start)))
        elif str(tcfg.average) == "top":  # last, so it keeps the weights each evaluation saw (EMA's too)
            from textclf.engine.hooks.soup import Soup

            hooks.append(Soup(k=int(tcfg.average_top_k), mode=str(tcfg.average_soup)))
        objective = (instantiate(cfg.rdrop, task=self.labels.task, single_logit=self.labels.single_logit)
                     if cfg.get("rdrop") else None)
        if self.main and not getattr(self, "_recipe_logged", False):  # once a run: the same for every fold
            self._recipe_logged = True
            lrs = describe_learning_rates(optimizer)
            if lrs:
                log.info("optimizer: learning rate by parameter group: %s", lrs)
            if objective is not None:
                log.info("rdrop: %s", objective.describe())
        settings = FitSettings(device=device, epochs=epochs, monitor=self.selection_metric(),
                               grad_accum_steps=int(tcfg.grad_accum_steps), max_grad_norm=tcfg.max_grad_norm,
                               precision=str(tcfg.precision), early_stopping_patience=tcfg.early_stopping_patience,
                               log_every_steps=int(tcfg.log_every_steps), eval_every_steps=tcfg.eval_every_steps,
                               evals_per_epoch=evals_per_epoch(tcfg), limit_train_batches=n_train,
                               steps_per_epoch=steps_per_epoch, fold=fold.index, desc=f"fold {fold.index}",
                               deadline=self.started + self.plan.deadline_s if self.plan is not None else None,
                               max_steps=max_steps)
        evaluator = TaskEvaluator(loader(batch_sampler=valid_batches), data.encoded, self.labels, data.y, settings,
                                  loss_fn=eval_loss_fn, aggregate=str(cfg.model.window_aggregate),
                                  tuned=self.selects_tuned(), threshold=float(cfg.threshold))
        trainer = Trainer(model, loss_fn.to(device), optimizer, scheduler, settings, evaluator, hooks=hooks,
                          objective=objective, callbacks=self.callbacks)
        return trainer, loader(batch_sampler=train_batches, collate_fn=train_collate)

    def init_weights(self):
        """model.init_from, the same weights for every fold; None without it. The first fold's build writes
        init_report.json (what loaded, what did not and why) into the run folder."""
        if not self.cfg.model.init_from:
            return None
        if getattr(self, "_init_from", None) is None:
            from textclf.models.init_from import InitFrom

            self._init_from = InitFrom(str(self.cfg.model.init_from),
                                       report_path=self.run_dir / folder.INIT_REPORT if self.main else None)
        return self._init_from

    # ------------------------------------------------------------------------- 3. assemble
    def assemble(self, outputs: FoldOutputs) -> tuple[dict, np.ndarray]:
        """Metrics of the folds and of the out-of-fold outputs (with their ECE); with calibrate=temperature, the
        out-of-fold outputs calibrated first (calibrate_oof), so the oof metrics, oof.csv and tuned thresholds are
        of calibrated probabilities; with tune_threshold, binary and multilabel thresholds tuned on them and scored
        out of sample (tune_oof_threshold)."""
        from textclf.engine.calibrate import expected_calibration_error
        from textclf.data.metrics import compute_metrics, per_class_report, summarize
        from textclf.data.tasks import THRESHOLD_TASKS

        labels, y = self.labels, self.data.y
        scored, oof = outputs.oof()
        results = [f.result for f in outputs.folds]
        summary = {"task": labels.task, "monitor": self.monitor, "folds": results}
        summary["mean"], summary["std"] = summarize(results)
        summary["score"] = summary["mean"][self.monitor]
        checked = getattr(self, "checked", None)  # set by setup(); tests assemble folds without one
        excluded = checked.splits["train"].excluded if checked is not None else None
        if excluded is not None:  # data.exclude_rows: the training rows left out
            summary["excluded_rows"] = int(len(excluded))
        if self.cfg.calibrate == "temperature":
            oof = self.calibrate_oof(summary, y[scored], oof)
        summary["oof"] = compute_metrics(labels, y[scored], oof)
        if labels.task != "regression":
            summary["oof"]["ece"] = expected_calibration_error(oof, y[scored], labels.task)
        decided = None  # the report's decisions: the tuned ones, scored as the tuned metrics are
        if labels.task in THRESHOLD_TASKS and tunes_threshold(self.cfg, labels.task):
            decided = self.tune_oof_threshold(summary, y[scored], oof, self.threshold_groups(outputs, scored))
        report = per_class_report(labels, y[scored], oof, decided)
        if report is not None:
            summary["oof_report"] = report
        self.scored = scored
        return summary, oof

    def calibrate_oof(self, summary: dict, y: np.ndarray, oof: np.ndarray) -> np.ndarray:
        """One temperature fitted on the out-of-fold logits becomes the run's (labels.json: predict, and this run's
        test predictions, divide each fold's logits by it before averaging); metrics.json's calibration records it.
        Returns the calibrated out-of-fold outputs. With kfold.repeats the logits are those of the rows' mean
        probabilities."""
        from textclf.engine.calibrate import temperature_scaling

        temperature, calibrated, record = temperature_scaling(self.labels, y, oof)
        self.labels = dataclasses.replace(self.labels, temperature=temperature)
        summary["calibration"] = record
        log.info("calibration: temperature T=%.2f fitted on %d out-of-fold rows; ECE %.3f -> %.3f", temperature,
                 len(y), record["ece_before"], record["ece_after"])
        return calibrated

    def selects_tuned(self) -> bool:
        """Multilabel with tune_threshold on: the run's decisions will be at tuned thresholds, so each evaluation
        also scores tuned_<metric> and the best evaluation is chosen by it (selection_metric)."""
        return self.labels.task == "multilabel" and tunes_threshold(self.cfg, self.labels.task)

    def selection_metric(self) -> str:
        """The metric that chooses a fold's best evaluation: trainer.monitor, or its tuned_ twin (selects_tuned).
        At 0.5 a briefly trained ten-label model's macro-F1 is ~0.1 at every evaluation (only the frequent labels
        cross it), so choosing by it is choosing by noise; at tuned thresholds it tracks what the run delivers."""
        from textclf.data.metrics import TUNED_METRICS

        return f"tuned_{self.monitor}" if self.selects_tuned() and self.monitor in TUNED_METRICS else self.monitor

    def tune_oof_threshold(self, summary: dict, y: np.ndarray, oof: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Thresholds chosen on every out-of-fold row become the run's (labels.json, for predict); the metrics
        in metrics.json's oof_tuned_threshold decide each fold's rows by thresholds chosen on the other folds'
        rows (one fold: in-sample, and labelled so). Returns those decisions."""
        from textclf.data.tasks import tuned_threshold_metrics

        tuned, decided = tuned_threshold_metrics(self.labels, y, oof, groups, default=float(self.cfg.threshold))
        self.labels = dataclasses.replace(self.labels, threshold=tuned["threshold"])
        summary["oof_tuned_threshold"] = tuned
        how = ("out-of-sample: each fold's rows decided by thresholds chosen on the other folds' rows"
               if tuned["evaluation"] == "out_of_sample"
               else "in-sample: one fold, the thresholds were chosen on the rows they are scored on (optimistic)")
        scores = "  ".join(f"{k}={v:.4f}" for k, v in tuned.items() if isinstance(v, float) and k != "threshold")
        log.info("tuned threshold(s) on out-of-fold predictions, saved for predict: %s; metrics %s: %s",
                 tuned["threshold"], how, scores)
        return decided

    @staticmethod
    def threshold_groups(outputs: FoldOutputs, scored: np.ndarray) -> np.ndarray:
        """For each scored row (in oof order), the first fold that validated it: the groups that out-of-sample
        threshold tuning holds out in turn (with kfold.repeats, the first repeat's folds)."""
        group = np.full(len(scored), -1, dtype=np.int64)
        for fold in outputs.folds:
            rows = np.asarray(fold.oof_rows, dtype=np.int64)
            group[rows[group[rows] < 0]] = fold.index
        return group[scored]

    def test_outputs(self) -> np.ndarray:
        """The test file's outputs: the run's folds ensembled, exactly as `textclf predict` does it."""
        from textclf.models.classifier import build_classifier

        cfg, checked = self.cfg, self.checked
        weights = [folder.fold_dir(self.run_dir, f.index) / folder.WEIGHTS for f in self.folds]
        folds = torch_folds(weights, lambda: build_classifier(cfg.model, cfg.pooling, cfg.head, self.labels.num_outputs,
                                                              name_or_path=checked.name_or_path, pretrained=False,
                                                              backbone_config=checked.backbone_config),
                            self.device, str(cfg.trainer.precision), lazy=True)
        return ensemble(folds, self.data.test, Collator.for_tokenizer(checked.tokenizer, self.data.test), self.labels,
                        batch_size=int(cfg.trainer.eval_batch_size), aggregate=str(cfg.model.window_aggregate))

    # ------------------------------------------------------------------------- 4. write
    def write(self, summary: dict, oof: np.ndarray, outputs: FoldOutputs) -> None:
        """oof.csv, test predictions, plots, metrics.json, then run.json last: a folder with run.json is a
        finished run (predict checks it)."""
        from textclf.run.manifest import write_manifest
        from textclf.data.metrics import compute_metrics

        labels, y, scored, run_dir = self.labels, self.data.y, self.scored, self.run_dir
        test = self.test_outputs() if self.data.test is not None else None
        if test is not None and self.checked.y_test is not None:
            summary["test"] = compute_metrics(labels, self.checked.y_test, test)
            log.info("test (%d rows, folds averaged): %s", len(test),
                     "  ".join(f"{k}={v:.4f}" for k, v in summary["test"].items()))
        mean, std = summary["mean"], summary["std"]
        log.info("done: %s = %.4f ± %.4f over %d fold(s); run folder %s", self.monitor, mean[self.monitor],
                 std[self.monitor], len(summary["folds"]), run_dir)
        if not self.main:
            return
        n_file = self.data.n_train_file
        source = np.array(["train"] * n_file + ["valid"] * (len(y) - n_file))
        # each row's number in its own file, as read: data.exclude_rows keeps the training rows' original numbers
        row_in_file = np.concatenate([self.checked.splits["train"].row_numbers(), np.arange(len(y) - n_file)])
        write_csv(run_dir / folder.OOF, labels.table(oof, y_true=y[scored],
                                                     extra={"source": source[scored], "row": row_in_file[scored]}))
        if test is not None:
            write_csv(run_dir / folder.TEST_PREDICTIONS, labels.table(test))
        plots = write_plots(run_dir, labels, y[scored], oof, outputs, self.monitor) if self.cfg.plots else []
        write_json(run_dir / folder.METRICS, summary)
        folder.write_labels(run_dir, labels)  # once, final: tuned thresholds, fitted temperature
        analysis = write_analysis(run_dir, self.checked, labels, self.data, scored, oof, row_in_file[:n_file])
        page = write_html_report(run_dir, self.scored_texts(source, row_in_file))
        # the loggers keep the run's files (MLflow as artifacts): report.html among them, so the page opens there too
        artifacts = [run_dir / n for n in (folder.METRICS, folder.CONFIG, folder.OOF)] + plots + analysis + [page]
        self.callbacks.on_run_end({**summary, "artifacts": [str(p) for p in artifacts if p.exists()]})
        write_manifest(run_dir)

    def scored_texts(self, source: np.ndarray, row_in_file: np.ndarray) -> dict:
        """{(source, row): text} of the out-of-fold rows, for report.html (the first text of a pair)."""
        splits = self.checked.splits
        texts = list(splits["train"].texts) + (list(splits["valid"].texts) if splits.get("valid") else [])
        return {(str(source[i]), int(row_in_file[i])): texts[i] for i in np.flatnonzero(self.scored) if i < len(texts)}


# ----------------------------------------------------------------------------- the pieces the stages use
def augment_run(checked: Checked) -> Augmented | None:
    """augment=eda|mlm: the augmented copies of the training file's rows (never data.valid_file's or the test
    file's), made once per run; None for augment=none. With text pairs only the first text is changed."""
    cfg = checked.cfg
    augmenter = build_augmenter(cfg.get("augment"))
    if augmenter is None:
        return None
    option = chosen("augment", cfg)
    train_split = checked.splits["train"]
    if train_split.pairs is not None:
        log.info("augment=%s changes data.text_col only; each copy keeps its row's data.text_pair_col as is", option)
    augmented = augmenter.augment(train_split.texts, seed=augment_seed(cfg), tokenizer=checked.tokenizer,
                                  name_or_path=checked.name_or_path, device=checked.device)
    log.info("augment=%s: %d %s of %d training rows -> %d augmented rows (tokenized once); each fold trains on "
             "its own rows' copies", option, augmenter.copies, "copy" if augmenter.copies == 1 else "copies",
             len(train_split), len(augmented.texts))
    return augmented


def augment_seed(cfg: DictConfig) -> int:
    """augment.seed, or trainer.seed when it is null."""
    seed = cfg.augment.seed
    return int(cfg.trainer.seed if seed is None else seed)


def augment_report(checked: Checked, augmented: Augmented, data: RunData, folds: list[Fold]) -> dict:
    """augment.json: what was made, how many rows each fold trains on, a few examples to read."""
    node = OmegaConf.to_container(checked.cfg.augment, resolve=True)
    texts, numbers = checked.splits["train"].texts, checked.splits["train"].row_numbers()
    node.pop("_target_")
    return {"augment": chosen("augment", checked.cfg), **node, "seed": augment_seed(checked.cfg),
            "source_rows": len(texts), "augmented_rows": len(augmented.texts),
            # copies identical to their text (nothing to change in it) are left out of training
            "unchanged_copies_left_out": int(node.get("copies", 1)) * len(texts) - len(augmented.texts),
            "folds": [{"fold": f.index, "train_rows": len(f.train_rows),
                       "augmented_train_rows": len(data.with_copies(f.train_rows)) - len(f.train_rows),
                       "valid_rows": len(f.valid_rows)} for f in folds],
            "examples": [{"row": int(numbers[s]), "text": texts[s], "augmented": t}
                         for s, t in list(zip(augmented.source.tolist(), augmented.texts))[:5]]}


def tokenize_run(checked: Checked, augmented: Augmented | None = None, taught: Taught | None = None) -> RunData:
    """One tokenization for the whole run (not per epoch or fold): training + validation rows, then the augmented
    copies of training rows (each with its source row's label, copied exactly), then the rows a teacher adds (every
    fold trains on them), and the test file."""
    mcfg, tokenizer, splits = checked.cfg.model, checked.tokenizer, checked.splits
    train_split, valid_split, test_split = splits["train"], splits.get("valid"), splits.get("test")
    texts = train_split.texts + (valid_split.texts if valid_split else [])
    pairs = (train_split.pairs + (valid_split.pairs if valid_split else [])) if train_split.pairs else None
    y = np.concatenate([checked.y, checked.y_valid]) if valid_split else checked.y
    if augmented is not None:
        texts = texts + augmented.texts
        pairs = pairs + [train_split.pairs[s] for s in augmented.source] if pairs is not None else None
        y = np.concatenate([y, checked.y[augmented.source]])
    added = [] if augmented is None else [np.asarray(augmented.source, dtype=np.int64)]
    if taught is not None and taught.texts:
        texts = texts + taught.texts
        pairs = pairs + taught.pairs if pairs is not None else None
        y = np.concatenate([y, taught.y])
        added.append(np.full(len(taught.texts), -1, dtype=np.int64))
    encoded = tokenize_with(tokenizer, texts, pairs, mcfg, desc="tokenize")
    lengths = encoded.lengths
    if encoded.doc is not None:
        log.info("tokenized %d texts once into %d windows of up to %d tokens (%.2f per text, at most %d); "
                 "window logits are %s-aggregated per text", encoded.n_docs, len(encoded), int(mcfg.max_length),
                 len(encoded) / max(encoded.n_docs, 1), int(np.bincount(encoded.doc).max()), mcfg.window_aggregate)
    else:
        log.info("tokenized %d texts once: mean %.1f tokens, %.1f%% cut to max_length=%d (truncation=%s)",
                 len(encoded), lengths.mean(), 100.0 * (lengths >= int(mcfg.max_length)).mean(),
                 int(mcfg.max_length), mcfg.truncation)
    test = (tokenize_with(tokenizer, test_split.texts, test_split.pairs, mcfg, desc="tokenize test")
            if test_split else None)
    return RunData(encoded, y, len(checked.y), test, np.concatenate(added) if added else None,
                   None if taught is None else taught.soft)


def log_processes(tcfg) -> None:
    """A multi-process run says what trainer.batch_size means in it."""
    if not distributed.active():
        return
    import torch.distributed as dist

    world, accum = distributed.world_size(), int(tcfg.grad_accum_steps)
    if tcfg.batch_size == "auto":
        log.info("%d processes (DistributedDataParallel, %s): trainer.batch_size=auto (%d per process, fewer on a "
                 "small fold), global batch %d rows%s", world, dist.get_backend(), AUTO_BATCH, AUTO_BATCH * world,
                 f" x {accum} accumulation steps" if accum > 1 else "")
        return
    b = int(tcfg.batch_size)
    log.info("%d processes (DistributedDataParallel, %s): trainer.batch_size=%d per process, global batch %d rows"
             "%s", world, dist.get_backend(), b, b * world,
             f" x {accum} accumulation steps = {b * world * accum} per optimizer step" if accum > 1 else "")


def tunes_threshold(cfg, task: str) -> bool:
    """tune_threshold: true / false, or auto: on for multilabel tasks. Briefly trained, a ten-label model's
    probabilities rank well long before rare labels reach 0.5: at a fixed 0.5 only the most frequent labels are
    ever predicted (macro-F1 0.07 on a ten-label table after one epoch, README)."""
    value = cfg.tune_threshold
    return task == "multilabel" if value == "auto" else bool(value)


def prior_bias(model, labels, y_train) -> None:
    """Multilabel: the output layer's bias starts at each label's log-odds in the fold's training rows (head.prior_bias,
    default true), so the first steps do not spend themselves pushing every label's probability down from 0.5."""
    import torch

    out = getattr(getattr(model, "head", None), "out", None)
    if labels.task != "multilabel" or not isinstance(out, torch.nn.Linear) or out.bias is None:
        return
    rate = np.clip(np.asarray(y_train, dtype=np.float64).mean(axis=0), 1e-4, 1 - 1e-4)
    with torch.no_grad():
        out.bias.copy_(torch.as_tensor(np.log(rate / (1 - rate)), dtype=out.bias.dtype))


#: trainer.batch_size=auto: AUTO_BATCH rows per process, halved (not below AUTO_MIN_BATCH) while the fold would take
#: fewer than AUTO_MIN_STEPS optimizer steps. On the 400-row news table (2 epochs, 50 steps at 16) batch 8 scored
#: 1.0 point of macro-F1 above batch 16 (3 seeds, README); tables of 1,000 rows and more keep 16
AUTO_BATCH, AUTO_MIN_BATCH, AUTO_MIN_STEPS = 16, 8, 100


def evals_per_epoch(tcfg) -> int | None:
    """trainer.evals_per_epoch; unset with average=top (and no eval_every_steps): 3, so the soup has candidates."""
    if tcfg.evals_per_epoch is None and tcfg.eval_every_steps is None and str(tcfg.get("average")) == "top":
        return 3
    return tcfg.evals_per_epoch


def fold_batch_size(tcfg, n_train: int, world: int = 1) -> int:
    """trainer.batch_size, or for auto the batch that gives a small fold enough optimizer steps (AUTO_* above)."""
    if tcfg.batch_size != "auto":
        return int(tcfg.batch_size)
    accum, epochs = int(tcfg.grad_accum_steps), int(tcfg.epochs)
    steps = lambda b: -(-(-(-n_train // (b * world))) // accum) * epochs  # noqa: E731 - ceil(ceil(n/bw)/accum)
    batch = AUTO_BATCH
    while batch // 2 >= AUTO_MIN_BATCH and steps(batch) < AUTO_MIN_STEPS:
        batch //= 2
    if batch != AUTO_BATCH:
        log.info("trainer.batch_size=auto: %d (the fold's %d training rows make %d optimizer steps at %d, fewer than "
                 "%d; %d at %d)", batch, n_train, steps(AUTO_BATCH), AUTO_BATCH, AUTO_MIN_STEPS, steps(batch), batch)
    return batch


def limit_batches(limit, n: int) -> int:
    """trainer.limit_*_batches: null (all n), a fraction of n (at least 1), or a number of batches."""
    if limit is None:
        return n
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(n * limit)) if n else 0
    return min(n, int(limit))


def fold_curves(fit, monitor: str) -> dict:
    """A fold's learning curves: training loss per step row, the monitored metric per evaluation."""
    return {"step": np.array([r["step"] for r in fit.steps], dtype=np.int64),
            "loss": np.array([r["loss"] for r in fit.steps], dtype=np.float64),
            "eval_step": np.array([r["step"] for r in fit.history], dtype=np.int64),
            "eval_value": np.array([r[monitor] for r in fit.history], dtype=np.float64)}


def write_analysis(run_dir: Path, checked: Checked, labels: LabelSpace, data: RunData, scored: np.ndarray,
                   oof: np.ndarray, numbers: np.ndarray) -> list[Path]:
    """label_issues.csv (the training labels that look wrong, or regression's largest residuals) and
    data_checks.json (duplicates, leakage into the test table, texts cut to max_length, class balance), computed
    once from what the run holds: the out-of-fold outputs and the one tokenization (textclf.observe.analysis).
    numbers: each training row's data row number, oof.csv's `row`. Returns the files written."""
    splits, n_file = checked.splits, data.n_train_file
    train = splits["train"]
    decided = labels.decide(oof) if labels.task != "regression" else None  # oof.csv's pred: the suggested labels
    examined = examine_labels(labels, data.y, np.flatnonzero(scored), oof, n_file, train.texts, train.pairs,
                              decided=decided, numbers=numbers)
    written = []
    if examined.table is not None:
        write_csv(run_dir / folder.LABEL_ISSUES, examined.table)
        written.append(run_dir / folder.LABEL_ISSUES)
    else:  # not this run's: an interrupted earlier write of the same run
        (run_dir / folder.LABEL_ISSUES).unlink(missing_ok=True)
    others = {name: (Rows(splits[name].texts, splits[name].pairs, None if y is None else label_strings(labels, y)), y)
              for name, y in (("valid", checked.y_valid), ("test", checked.y_test)) if splits.get(name) is not None}
    mcfg = checked.cfg.model
    checks = data_checks(labels, Rows(train.texts, train.pairs, label_strings(labels, checked.y), numbers), checked.y,
                         over_max_length(data.encoded, n_file, int(mcfg.max_length)), int(mcfg.max_length),
                         str(mcfg.truncation), others, examined.summary)
    write_json(run_dir / folder.DATA_CHECKS, checks)
    return [*written, run_dir / folder.DATA_CHECKS]


def write_plots(run_dir: Path, labels: LabelSpace, y_true, oof, outputs: FoldOutputs, monitor: str) -> list[Path]:
    from textclf.observe.plots import write_run_plots

    return write_run_plots(run_dir, labels, y_true, oof, {f.index: f.curves for f in outputs.folds}, monitor)


def build_callbacks(cfg: DictConfig) -> Callbacks:
    """Every logger of the composed `logger` group (logger=[csv,tensorboard,mlflow]), in that order."""
    from hydra.utils import instantiate

    from textclf.errors import own_errors

    nodes = cfg.get("logger") or {}
    with own_errors():
        return Callbacks(instantiate(node) for node in nodes.values() if node and node.get("_target_"))


def sweep_info() -> dict | None:
    """In a Hydra multirun: the sweep folder, this job's number and overrides (loggers group jobs by it)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    return {"dir": str(hc.sweep.dir), "job": int(hc.job.num), "overrides": list(hc.overrides.task)}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def save_run_files(run_dir: Path, cfg: DictConfig, tokenizer, backbone_config) -> None:
    """What predict needs to rebuild the model offline, besides the fold weights and labels.json (written last,
    when its thresholds and temperature are final)."""
    write_text(run_dir / folder.CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    backbone_dir = run_dir / folder.BACKBONE
    backbone_dir.mkdir(parents=True, exist_ok=True)
    backbone_config.save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
    # each file by name: replacing the run removes these, never a file of the user's put beside them
    folder.claim(run_dir, [str(p.relative_to(run_dir)) for p in backbone_dir.rglob("*") if p.is_file()])
