"""The engine: every fit of every method — a strategy's phase, a semi-supervised round — is one
Lightning ``Trainer.fit`` here, so mixed precision, DDP, loggers, callbacks, checkpoints,
resume and timing are written once. The research code stays in the modules and functionals.

A method calls :meth:`Engine.fit` once per fit, in a fixed order, with a function that builds
the fit (module and data) only when it runs. After each finished fit the engine saves the
network and the method's state (``checkpoints/state.pt``); an interrupted run resumed with
``--resume`` skips the finished fits, restores that state, and continues the interrupted fit
from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn

from ..config import CONFIG_KEYS_FREE_ON_RESUME, TrainConfig, loss_terms
from ..distributed import is_rank_zero
from ..errors import FewlabelError
from ..fileio import atomic_write, write_tensors
from ..rundir import LAST_CHECKPOINT, LOGS, STATE, STATE_WEIGHTS
from .callbacks import (
    IDENTITY_KEY,
    PHASE_KEY,
    BatchSeed,
    BestWeights,
    EvalModeModules,
    HistoryWriter,
    InfoPlaneTracker,
    LastCheckpoint,
    PhaseTag,
    RunSelection,
    SelectionTracker,
    Throughput,
)
from .datamodule import EngineDataModule
from .inference import FeatureCache
from .module import EngineModule, GeometryTerms, NonFiniteLossError

log = logging.getLogger("fewlabel.train")
# Lightning notices that say nothing to a fewlabel user (small data, no validation set, resumes).
for _pattern in (
    ".*treespec.*LeafSpec.*",
    ".*smaller than the logging interval.*",
    ".*Total length of .* is zero.*",
    ".*Experiment logs directory .* exists.*",
    ".*does not have many workers.*",
    ".*`weights_only` was not set.*",
):
    warnings.filterwarnings("ignore", message=_pattern)
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)


@dataclass
class Fit:
    """One fit: the module that trains, its data, and the modules kept in eval mode (frozen
    layers, BatchNorm whose statistics stay fixed)."""

    module: EngineModule
    data: EngineDataModule
    eval_modules: list[nn.Module] = field(default_factory=list)


def freezes_batchnorm(cfg: TrainConfig) -> bool:
    """Whether the backbone's BatchNorm statistics stay fixed while it trains. ``auto`` freezes
    them for pretrained backbones: on Fashion-MNIST (20 labels per class, EfficientNet-Lite0)
    batch statistics in train mode sent the fine-tuning loss from 0.3 to 10 and accuracy to 30%,
    against 78% with frozen statistics. From scratch (``pretrained=none``) the running
    statistics mean nothing yet, so they train."""
    if cfg.freeze_bn == "auto":
        return cfg.pretrained != "none"
    return cfg.freeze_bn == "yes"


def eval_mode_modules(network: nn.Module, freeze_bn: bool, trained_heads: list[nn.Module] = ()) -> list[nn.Module]:
    """Modules of ``network`` to keep in eval mode: those whose parameters are all frozen, and
    with ``freeze_bn`` every BatchNorm outside ``trained_heads`` (heads' own norms train)."""
    frozen = [
        m
        for m in network.modules()
        if list(m.parameters(recurse=False)) and not any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    if freeze_bn:
        head_ids = {id(m) for head in trained_heads for m in head.modules()}
        frozen += [
            m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_ids
        ]
    return frozen


def geometry_terms(cfg: TrainConfig) -> GeometryTerms:
    """The latent-geometry terms ``--regularize lgg-smooth`` and ``--loss ...+lgg-target`` add
    to every fit's training loss."""
    return GeometryTerms(
        smooth_weight=cfg.reg_weight if cfg.regularize == "lgg-smooth" else 0.0,
        target_weight=cfg.target_weight if "lgg-target" in loss_terms(cfg.loss) else 0.0,
        k=cfg.smooth_k,
        power=cfg.smooth_power,
        layers=cfg.smooth_layers,
    )


def resolve_accelerator(cfg: TrainConfig) -> tuple[str, torch.device, str]:
    """(Lightning accelerator, torch device, precision) for this machine."""
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = "16-mixed" if device.type == "cuda" else "32-true"
    return accelerator, device, precision


def check_logger_available(logger: str) -> None:
    """Refuse, before any work, a logger whose package is not installed."""
    package = {"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(logger)
    if package and importlib.util.find_spec(package) is None:
        raise FewlabelError(f"--logger {logger} needs the '{package}' package: pip install 'fewlabel[{package}]'.")


def save_torch(obj: dict, path: Path) -> None:
    """torch.save through a handle: a full disk is then an OSError (torch's own path writer
    raises an unnamed RuntimeError)."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def finished_fit_weights(run_dir: Path) -> Path | None:
    """checkpoints/weights.safetensors, the network after the last finished fit for a new run's
    --pretrained: written from state.pt when a message names it (a NaN loss, a refused resume),
    not after every fit (state.pt already holds them). None when no fit finished."""
    try:
        weights = torch.load(run_dir / STATE, map_location="cpu", weights_only=True)["weights"]
    except Exception:  # none yet, or unreadable: nothing to start from
        return None
    return write_tensors(run_dir / STATE_WEIGHTS, weights)


def run_identity(cfg: TrainConfig, class_names: list[str] | None) -> dict:
    """What a checkpoint must share with the run that resumes it: the architecture, the class
    names, and a hash of every setting that shapes the weights (all but those free on resume)."""
    settings = {k: v for k, v in cfg.to_yaml_dict().items() if k not in CONFIG_KEYS_FREE_ON_RESUME}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"arch": cfg.model, "class_names": list(class_names or []), "settings_sha256": digest}


def check_identity(path: Path, saved: dict | None, identity: dict) -> None:
    """Refuse a checkpoint written by another run, in one line naming the first field that differs."""
    if saved is None:
        log.warning("%s records no architecture or classes (written before fewlabel kept them); resuming", path)
        return
    for key, wanted in identity.items():
        if saved.get(key) != wanted:
            what = "the settings that shape the weights differ" if key == "settings_sha256" else f"{saved.get(key)!r}"
            raise FewlabelError(
                f"--resume: checkpoint '{path}' belongs to another run ({key}: {what}; this run: {wanted!r}); "
                "resume with the run's own settings or start a new --out."
            )


def checkpoint_phase(path: Path, identity: dict | None = None) -> str | None:
    """The fit a last.ckpt belongs to (loaded with weights_only=True), checked against ``identity``."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FewlabelError(
            f"Checkpoint '{path}' cannot be read ({type(exc).__name__}); delete it to redo the fit it holds "
            f"from the last finished one{_finished_fits(path.parent)}."
        ) from None
    if identity is not None:
        check_identity(path, saved.get(IDENTITY_KEY), identity)
    return saved.get(PHASE_KEY)


def _finished_fits(folder: Path) -> str:
    return f" ({STATE} holds it)" if (folder.parent / STATE).is_file() else " (none finished yet: the run restarts)"


class Engine:
    """Runs the fits of one seed's run, writing into ``run_dir``."""

    def __init__(
        self,
        cfg: TrainConfig,
        seed: int,
        run_dir: Path,
        callbacks: list[L.Callback] | None = None,
        resume: bool = False,
        monitor: tuple[str, bool] = ("val_loss", False),
        identity: dict | None = None,
    ) -> None:
        self.cfg = cfg
        self.identity = identity if identity is not None else run_identity(cfg, None)
        self.seed = seed
        self.run_dir = Path(run_dir)
        self.extra_callbacks = callbacks or []
        self.resume = resume
        self.accelerator, self.device, self.precision = resolve_accelerator(cfg)
        self.cache = FeatureCache(cfg.feature_cache)
        self.network: nn.Module | None = None
        self.records: dict[str, dict] = {}  # finished fits: images, seconds, wall, on_features
        self.method_state: dict = {}  # JSON-able state a method keeps across fits (saved with them)
        self.saved_weights: dict[str, dict[str, torch.Tensor]] = {}  # weights a method keeps (saved with them)
        self.selection = RunSelection(*monitor)
        self._fits_called = 0
        self._state_restored = False

    def start(self, network: nn.Module, fits_prefix: str = "") -> bool:
        """Attach the run's network; with ``resume``, restore the state saved after the last
        finished fit (once per run: a second network, a refit's, keeps the state in memory),
        and its weights when that fit's name starts with ``fits_prefix`` (a refit's new network
        takes only its own fits' weights). Returns whether weights were restored."""
        self.network = network
        path = self.run_dir / STATE
        if not (self.resume and path.is_file()):
            return False
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FewlabelError(
                f"Checkpoint '{path}' cannot be read ({type(exc).__name__}); it holds the fits finished so far: "
                "delete the run's checkpoints folder to train it again from the start."
            ) from None
        check_identity(path, json.loads(saved[IDENTITY_KEY]) if IDENTITY_KEY in saved else None, self.identity)
        try:
            last_fit = list(json.loads(saved["records"]))[-1:]
            restores = bool(last_fit) and last_fit[0].startswith(fits_prefix)
            if restores:
                network.load_state_dict(saved["weights"])
        except Exception as exc:
            raise FewlabelError(
                f"Checkpoint '{path}' does not fit this run's network ({type(exc).__name__}); "
                "resume with the run's own settings or start a new --out."
            ) from None
        if not self._state_restored:
            self._restore_state(saved)
        return restores

    def _restore_state(self, saved: dict) -> None:
        self._state_restored = True
        self.records = json.loads(saved["records"])
        self.method_state = json.loads(saved["method_state"])
        self.saved_weights = saved.get("saved_weights", {})
        if "selection" in saved:
            self.selection.load_state_dict(saved["selection"])
        log.info("resuming after %s", ", ".join(self.records) or "nothing")

    def finished(self, name: str) -> bool:
        return name in self.records

    def fit(
        self,
        name: str,
        epochs: int,
        build: Callable[[], Fit],
        *,
        after: Callable[[], None] | None = None,
        on_features: bool = False,
    ) -> None:
        """Run the fit ``name`` for ``epochs`` unless it finished before a resume. ``build`` makes
        it (only when it runs); ``after`` runs once it finished, before the state is saved."""
        if epochs <= 0:
            return
        index = self._fits_called  # seeds the fit's batches: the same on a resumed run
        self._fits_called += 1
        if self.finished(name):
            return
        started = time.perf_counter()
        fit = build()
        built = time.perf_counter() - started
        fit.module.phase = name
        fit.module.add_geometry(geometry_terms(self.cfg))
        ckpt = self._resume_checkpoint(name)
        meter = Throughput()
        trainer = self._trainer(name, index, epochs, fit, meter, checkpoints=not on_features)
        fit.module.train()  # whatever ran before (inference) left; EvalModeModules then fixes the frozen
        try:
            trainer.fit(fit.module, datamodule=fit.data, ckpt_path=ckpt, weights_only=True if ckpt else None)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"{exc} {self._what_is_saved()}") from None
        fit.module.to("cpu")
        self.records[name] = {
            "images": meter.images,
            "seconds": meter.seconds,
            "wall": meter.wall + built,
            "on_features": on_features,
        }
        if after is not None:
            after()
        self._save_state()

    def fit_seconds(self, names: list[str]) -> float:
        """Wall seconds of the finished fits among ``names``."""
        return sum(self.records[n]["wall"] for n in names if n in self.records)

    def restore_best(self) -> None:
        """Load the weights of the best validated epoch of the run into the network (nothing
        when no fit was validated); the runner records which epoch that was."""
        if self.selection.best is not None and self.network is not None:
            self.network.load_state_dict(self.selection.weights)

    def timing(self) -> dict:
        """``train_seconds``: every fit's wall time; ``train_images``: images the fits on images
        trained on (every process's; on cached features when no fit ran on images);
        ``train_images_per_second``: those images over their training batches' seconds."""
        records = list(self.records.values())
        on_images = [r for r in records if not r["on_features"]] or records
        seconds = sum(r["seconds"] for r in on_images)
        images = sum(r["images"] for r in on_images)
        return {
            "train_seconds": sum(r["wall"] for r in records),
            "train_images": images,
            "train_images_per_second": images / seconds if seconds else 0.0,
        }

    def _what_is_saved(self) -> str:
        """After a failed fit: which checkpoints exist, and how to train again with other settings."""
        weights = finished_fit_weights(self.run_dir)
        saved = [str(p) for p in (self.run_dir / LAST_CHECKPOINT, weights) if p is not None and p.is_file()]
        kept = f"Kept: {', '.join(saved)}." if saved else "No checkpoint was kept."
        start = f" --pretrained {weights}" if weights is not None else ""
        return f"{kept} To retry with a lower --lr, start a new --out{start} (--resume keeps the run's settings)."

    def _resume_checkpoint(self, name: str) -> Path | None:
        path = self.run_dir / LAST_CHECKPOINT
        if self.resume and checkpoint_phase(path, self.identity) == name:
            log.info("resuming fit '%s' from %s", name, path)
            return path
        return None

    def _save_state(self) -> None:
        if not is_rank_zero() or self.network is None:
            return
        state = {
            "weights": {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()},
            "records": json.dumps(self.records),
            "method_state": json.dumps(self.method_state),
            "selection": self.selection.state_dict(),
            "saved_weights": self.saved_weights,
            IDENTITY_KEY: json.dumps(self.identity),
        }
        atomic_write(self.run_dir / STATE, lambda tmp: save_torch(state, tmp))

    def _trainer(self, name: str, index: int, epochs: int, fit: Fit, meter: Throughput, checkpoints: bool) -> L.Trainer:
        """The fit's Trainer. A fit on cached features (seconds long) writes no per-epoch
        checkpoint: interrupted, it reruns from its start, to the same result."""
        callbacks = [
            BatchSeed(self.seed, index),
            EvalModeModules(fit.eval_modules),
            meter,
            HistoryWriter(self.run_dir, name),
            PhaseTag(name),
            *([LastCheckpoint(self.run_dir / LAST_CHECKPOINT, self.identity)] if checkpoints else []),
            SelectionTracker(self.selection, self.network, name),
            *self.extra_callbacks,
        ]
        if self.cfg.track_infoplane and fit.data.has_validation:
            callbacks.append(
                InfoPlaneTracker(
                    self.run_dir, name, self.cfg.infoplane_bins, self.cfg.infoplane_knn, self.cfg.infoplane_code
                )
            )
        if self.cfg.early_stopping and fit.data.has_validation:
            callbacks += [EarlyStopping("val_loss", patience=self.cfg.early_stopping), BestWeights()]
        return L.Trainer(
            max_epochs=epochs,
            accelerator=self.accelerator,
            devices=int(self.cfg.devices) if self.cfg.devices.isdigit() else self.cfg.devices,
            num_nodes=self.cfg.num_nodes,
            strategy=self.cfg.distributed,
            use_distributed_sampler=False,  # EpochSampler shards itself
            precision=self.precision,
            logger=self._logger(name),
            callbacks=callbacks,
            enable_checkpointing=False,
            enable_progress_bar=self.cfg.progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=self.run_dir,
            log_every_n_steps=10,
        )

    def _logger(self, phase: str):
        """CSV (also under ``--logger mlflow``, whose record is written from the run's files)."""
        save_dir = self.run_dir / LOGS
        if self.cfg.logger == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            return TensorBoardLogger(save_dir, name=phase, version=0)
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir, name=phase, version=0)
