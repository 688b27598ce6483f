"""Engineering concerns of every fit, as Lightning callbacks (the engine adds them all)."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn

from ..fileio import atomic_write
from ..rundir import read_history, read_infoplane, write_history, write_infoplane

IDENTITY_KEY = "fewlabel_run"  # a checkpoint's architecture, class names and settings hash
PHASE_KEY = "fewlabel_phase"  # which fit a last.ckpt belongs to


class BatchSeed(L.Callback):
    """Reseed torch before every training batch from (seed, fit, epoch, batch): dropout then
    repeats exactly after ``--resume``, whatever consumed random numbers before."""

    def __init__(self, seed: int, fit_index: int) -> None:
        self.seed = seed
        self.fit_index = fit_index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        seed_batch(self.seed, self.fit_index, trainer.current_epoch, batch_idx, pl_module.device)


def seed_batch(seed: int, fit_index: int, epoch: int, batch_index: int, device: torch.device) -> None:
    """Seed torch's generators from (seed, fit, epoch, batch)."""
    value = ((seed * 1_000_003 + fit_index) * 10_007 + epoch) * 100_003 + batch_index
    if device.type == "cpu":  # torch.manual_seed would also queue CUDA seeding (slow)
        torch.default_generator.manual_seed(value)
    else:
        torch.manual_seed(value)


class EvalModeModules(L.Callback):
    """Keep frozen modules (and, when asked, BatchNorm layers) in eval mode while training, so
    their running statistics stay fixed; with small batches these statistics are noise."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for module in self.modules:
            module.eval()


class PhaseTag(L.Callback):
    """Write the fit's name into every checkpoint, so ``--resume`` knows which fit it continues."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[PHASE_KEY] = self.name


class Throughput(L.Callback):
    """Training images and the seconds spent on training batches (validation excluded), and the
    wall seconds of whole epochs; kept in the checkpoint, so a resumed fit counts its earlier
    epochs too. ``images`` counts every process's images."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self.wall = 0.0
        self._batches_started: float | None = None
        self._epoch_started = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._batches_started = self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        count = getattr(pl_module, "batch_images", None)
        self.images += (count(batch) if count else len(batch[0])) * trainer.world_size

    def _stop(self) -> None:
        if self._batches_started is not None:
            self.seconds += time.perf_counter() - self._batches_started
            self._batches_started = None

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training:
            self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()
        self.wall += time.perf_counter() - self._epoch_started

    def state_dict(self) -> dict:
        return {"images": self.images, "seconds": self.seconds, "wall": self.wall}

    def load_state_dict(self, state_dict: dict) -> None:
        self.images, self.seconds, self.wall = state_dict["images"], state_dict["seconds"], state_dict["wall"]


class HistoryWriter(L.Callback):
    """Append one row per epoch to history.csv (rewritten atomically by process 0); on resume,
    rows of epochs that will be redone are dropped first."""

    def __init__(self, run_dir: Path, phase: str) -> None:
        self.run_dir = run_dir
        self.phase = phase
        self._epoch_start = 0.0
        self.rows: list[dict] | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.rows is None:  # first epoch of this fit: after a resume, drop epochs to be redone
            self.rows = [
                r
                for r in read_history(self.run_dir)
                if not (r["phase"] == self.phase and int(r["epoch"]) >= trainer.current_epoch)
            ]
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        lr = trainer.optimizers[0].param_groups[-1]["lr"] if trainer.optimizers else float("nan")
        row = {
            "phase": self.phase,
            "epoch": trainer.current_epoch,
            "lr": f"{lr:.3g}",
            "seconds": f"{time.perf_counter() - self._epoch_start:.2f}",
        }
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            row[key] = f"{metrics[key]:.5f}" if key in metrics else ""
        self.rows.append(row)
        if trainer.is_global_zero:
            write_history(self.run_dir, self.rows)


class LastCheckpoint(L.Callback):
    """Save ``checkpoints/last.ckpt`` atomically at the end of the fit's first epoch and then of
    every epoch that ends ``every_seconds`` or more after the last save: an interruption loses
    at most that much training (a resumed fit redoes the epochs since, to the same result), and
    short epochs do not spend their time writing checkpoints. Process 0's clock decides for all."""

    def __init__(self, path: Path, identity: dict | None = None, every_seconds: float = 30.0) -> None:
        self.path = path
        self.identity = identity or {}
        self.every_seconds = every_seconds
        self._saved_at: float | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[IDENTITY_KEY] = self.identity  # what --resume checks the run against

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        due = self._saved_at is None or now - self._saved_at >= self.every_seconds
        if not trainer.strategy.broadcast(due, src=0):
            return
        self._saved_at = now
        if trainer.is_global_zero:
            atomic_write(self.path, lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
        else:  # every process must call it (it ends in a barrier); only process 0 writes
            trainer.save_checkpoint(self.path, weights_only=False)


def best_of_many_margin(margin: float, compared: int) -> float:
    """How much the best of ``compared`` validation scores must lead another to count as better,
    given one score's noise ``margin`` (one standard error): ``margin`` x sqrt(2 ln compared),
    about the expected maximum of that many independent standard normal draws. The best of many
    noisy scores is high partly by luck (the winner's curse): with 40 validation images and 70
    validated epochs the best epoch leads a run's last by 10 points on noise alone. Epochs of one
    fit are correlated, so this errs towards keeping what the run chose (a choice: the restore is
    for a fit that clearly wrecked the model, not for a lucky epoch)."""
    return margin * math.sqrt(2 * math.log(compared)) if compared > 2 else margin


class RunSelection:
    """The validation record of a whole run, over all its fits: every validated epoch
    (``history``), the best by ``key`` (``higher`` better; ties go to the lower validation
    loss) with its weights (on the CPU), and the last epoch's record."""

    def __init__(self, key: str = "val_loss", higher: bool = False) -> None:
        self.key, self.higher = key, higher
        self.best: dict | None = None
        self.last: dict | None = None
        self.weights: dict | None = None
        self.history: list[dict] = []

    def beats(self, record: dict, other: dict | None) -> bool:
        """Whether ``record`` scores better than ``other`` (None: nothing to beat)."""
        if other is None:
            return True
        score, before = record[self.key], other[self.key]
        if score != before:
            return score > before if self.higher else score < before
        return record.get("val_loss", float("inf")) < other.get("val_loss", float("inf"))

    def clearly_beats(self, record: dict, other: dict, margin: float) -> bool:
        """Whether ``record`` beats ``other`` by more than ``margin`` (with no margin, as
        :meth:`beats`): a difference within the noise of the validation images does not count."""
        if margin <= 0:
            return self.beats(record, other)
        gap = record[self.key] - other[self.key]
        return gap > margin if self.higher else -gap > margin

    def last_of(self, fits: set[str]) -> dict | None:
        """The last validated epoch among the fits named ``fits``."""
        return next((r for r in reversed(self.history) if r["fit"] in fits), None)

    def observe(self, record: dict, network: nn.Module) -> None:
        self.last = record
        self.history = [r for r in self.history if (r["fit"], r["epoch"]) != (record["fit"], record["epoch"])]
        self.history.append(record)
        if self.beats(record, self.best):
            self.best = record
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}

    def forget_best(self) -> None:
        """Start the choice of the best epoch again (the epochs seen stay in ``history``): a
        method whose earlier fits do not train the model asked for (qat's other precisions)."""
        self.best, self.weights = None, None

    def state_dict(self) -> dict:
        return {"best": self.best, "last": self.last, "weights": self.weights, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.last, self.weights = state["best"], state["last"], state["weights"]
        self.history = list(state.get("history", []))


class SelectionTracker(L.Callback):
    """Feed every validation epoch of a fit to the run's :class:`RunSelection` (kept in the
    checkpoint, so a fit resumed in the middle remembers its earlier epochs)."""

    def __init__(self, selection: RunSelection, network: nn.Module, fit: str) -> None:
        self.selection, self.network, self.fit = selection, network, fit

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or self.selection.key not in metrics:
            return
        record = {
            "fit": self.fit,
            "epoch": trainer.current_epoch,
            self.selection.key: float(metrics[self.selection.key]),
        }
        if "val_loss" in metrics:
            record["val_loss"] = float(metrics["val_loss"])
        self.selection.observe(record, self.network)

    def state_dict(self) -> dict:
        """The run's selection; its weights only when this fit holds the best epoch (else they
        are the engine's, saved after an earlier fit), which keeps every epoch's checkpoint small."""
        state = self.selection.state_dict()
        if not (self.selection.best and self.selection.best["fit"] == self.fit):
            state["weights"] = None
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        weights = state_dict["weights"] if state_dict["weights"] is not None else self.selection.weights
        self.selection.load_state_dict(state_dict | {"weights": weights})


class BestWeights(L.Callback):
    """Remember the weights of the epoch with the lowest validation loss; restore them when
    training ends (used with early stopping)."""

    def __init__(self) -> None:
        self.best_loss = float("inf")
        self.best_state: dict | None = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val_loss")
        if trainer.sanity_checking or loss is None:
            return
        if float(loss) < self.best_loss:
            self.best_loss = float(loss)
            self.best_state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_loss = state_dict["best_loss"]
        self.best_state = state_dict["best_state"]


class InfoPlaneTracker(L.Callback):
    """After every validation epoch of a fit, points of the information plane
    (:func:`fewlabel.audit.infoplane.plane`) from the softmax of the validation outputs the
    module returns, appended to the run's infoplane.json by process 0 (every process validates
    the whole split): the binning estimate after every epoch, the k-NN one after every epoch,
    after a fit's last epoch only, or never (``knn``: every, last, never; it costs about ten
    times the binning's, 0.6 s on 2,000 images on 2 CPU cores). On a resumed fit the points of
    epochs to be redone are dropped first. ``seconds`` counts the tracker's own time, so the
    report can print its cost."""

    def __init__(self, run_dir: Path, fit: str, bins: int, knn: str = "last", code: str = "top") -> None:
        self.run_dir, self.fit = run_dir, fit
        self.bins, self.knn, self.code = bins, knn, code
        self.record: dict | None = None
        self._outputs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._outputs, self._labels = [], []
        self._load(trainer.current_epoch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if isinstance(outputs, dict) and "logits" in outputs:
            started = time.perf_counter()
            self._outputs.append(torch.softmax(outputs["logits"].float(), -1).cpu())
            self._labels.append(outputs["labels"].cpu())
            self._count(started)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._outputs:
            return
        from ..audit.infoplane import plane, small_split_warning

        started = time.perf_counter()
        record = self.record  # loaded when the validation epoch started
        probabilities, labels = torch.cat(self._outputs).numpy(), torch.cat(self._labels).numpy()
        if not record["points"]:
            record["warning"] = small_split_warning(len(labels), probabilities.shape[1], self.bins)
        last = trainer.current_epoch + 1 >= trainer.max_epochs or trainer.should_stop
        knn = self.knn == "every" or (self.knn == "last" and last)
        for estimator in ("binning", "knn") if knn else ("binning",):
            point = plane(
                probabilities, labels, probabilities.shape[1], estimator=estimator, bins=self.bins, code=self.code
            )
            record["points"].append({"fit": self.fit, "epoch": trainer.current_epoch} | point)
        self._count(started)
        if trainer.is_global_zero:
            write_infoplane(self.run_dir, record)

    def _load(self, epoch: int) -> dict:
        """The run's record, read once per fit (after a resume: without the epochs to redo)."""
        if self.record is None:
            saved = read_infoplane(self.run_dir) or {"points": [], "seconds": 0.0}
            saved["points"] = [p for p in saved["points"] if not (p["fit"] == self.fit and p["epoch"] >= epoch)]
            self.record = saved
        return self.record

    def _count(self, started: float) -> None:
        self.record["seconds"] += time.perf_counter() - started
