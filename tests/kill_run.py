"""A training run that kills its own process (SIGKILL: no cleanup, no finally) at a chosen point.

Used by test_faults.py: ``python tests/kill_run.py DATA OUT POINT [--resume|--overwrite]`` trains
the battery's tiny run; POINT ``none`` runs to the end and writes OUT's metrics as the parent
reads them. Each point patches one place the run passes through:

- ``epoch``: in the middle of the second epoch of the fine-tuning fit;
- ``checkpoint``: inside the first write of last.ckpt, after the temporary file is written and
  before it is renamed (a ``.tmp`` is left behind);
- ``between-fits``: right after state.pt is saved at the end of the first fit;
- ``final``: after the model files are written, before metrics.json.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # the same numbers in every process of the battery

import fewlabel  # noqa: E402
from conftest import FAST  # noqa: E402
from fewlabel import fileio, runner  # noqa: E402
from fewlabel.train import callbacks, engine  # noqa: E402

OPTIONS = FAST | {"strategy": "freeze-unfreeze", "epochs": 3, "head_epochs": 2, "feature_cache": "off"}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillInEpoch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.phase == "finetune" and trainer.current_epoch == 1 and batch_idx == 1:
            die()


def kill_in_checkpoint_write() -> None:
    def write_then_die(path, write):
        if Path(path).name == "last.ckpt":

            def written(tmp):
                write(tmp)
                die()

            return fileio.atomic_write(path, written)
        return fileio.atomic_write(path, write)

    callbacks.atomic_write = write_then_die


def kill_after_first_state() -> None:
    save = engine.Engine._save_state

    def save_then_die(self):
        save(self)
        die()

    engine.Engine._save_state = save_then_die


def kill_before_metrics() -> None:
    runner.write_metrics = lambda *args, **kwargs: die()


def main(data: str, out: str, point: str, flag: str = "") -> None:
    extra = []
    if point == "epoch":
        extra.append(KillInEpoch())
    elif point == "checkpoint":
        kill_in_checkpoint_write()
    elif point == "between-fits":
        kill_after_first_state()
    elif point == "final":
        kill_before_metrics()
    elif point != "none":
        raise SystemExit(f"unknown kill point {point}")
    fewlabel.train(data, out, callbacks=extra, resume=flag == "--resume", overwrite=flag == "--overwrite", **OPTIONS)


if __name__ == "__main__":
    main(*sys.argv[1:])
