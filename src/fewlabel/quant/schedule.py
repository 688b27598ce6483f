"""Precision schedules of quantization-aware training: the stages, each a precision, a number
of epochs and a learning rate, over a fixed total of epochs.

* ``direct``: one stage at the target precision, at ``lr`` with the run's schedule.
* ``progressive``: 8, 4, ... bits (halving, each of weights and activations no lower than its
  target) down to the target, an even share of the epochs each, at ``lr`` with the run's
  schedule (the fine-tuning-based quantization HLHL was compared against).
* ``hlhl`` (Shin, Park, Boo and Sung, AAAI 2020): high, low, high, low precision, ending at the
  target. The paper changes the learning rate abruptly at each stage, coarse tuning at high
  precision and fine tuning at low; it leaves open the high precision, the stage lengths and
  the rates. Choices (each a parameter): high = ``high_bits`` (8) for weights and activations;
  four even stages; a constant rate per stage, ``lr`` at each high stage and ``lr *
  low_lr_factor`` (0.1) at each low stage. Summaries of the paper differ on which stages get
  the coarse (high) rate; ``low_lr_factor`` above 1 puts it at low precision instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import FewlabelError
from .layers import BitSpec


@dataclass(frozen=True)
class QuantStage:
    """One stage: its fit's name, precision, epochs, learning rate, and whether that rate
    follows the run's schedule (else it stays constant)."""

    name: str
    weight_bits: int
    act_bits: int
    epochs: int
    lr: float
    run_schedule: bool = True

    def spec(self, first_last_bits: int) -> BitSpec:
        return BitSpec(self.weight_bits, self.act_bits, first_last_bits)

    def record(self) -> dict:
        return asdict(self)


def split_epochs(total: int, stages: int, given: str | None, schedule: str) -> list[int]:
    """Epochs per stage: ``given`` (checked against the count and the total) or an even split,
    the remainder going to the last stages."""
    if given:
        epochs = [int(p) for p in given.split(",")]
        if len(epochs) != stages or sum(epochs) != total:
            raise FewlabelError(
                f"stage_epochs '{given}': qat_schedule {schedule} has {stages} stage(s) here and the run "
                f"{total} epoch(s); give {stages} numbers summing to {total}."
            )
        return epochs
    if total < stages:
        raise FewlabelError(
            f"qat_schedule {schedule} has {stages} stages: --epochs must be at least {stages} (got {total})."
        )
    base, extra = divmod(total, stages)
    return [base + (1 if i >= stages - extra else 0) for i in range(stages)]


def progressive_bits(target_weight: int, target_act: int, start: int = 8) -> list[tuple[int, int]]:
    """(weight, activation) bits from ``start`` halving down to the targets."""
    steps, bits = [], start
    while True:
        step = (max(bits, target_weight), max(bits, target_act))
        if not steps or steps[-1] != step:
            steps.append(step)
        if step == (target_weight, target_act):
            return steps
        bits = max(bits // 2, 1)


def plan_stages(opts, epochs: int, lr: float) -> list[QuantStage]:
    """The stages of ``opts.qat_schedule`` over ``epochs`` at base learning rate ``lr``."""
    target = (opts.weight_bits, opts.act_bits)
    if opts.qat_schedule == "direct":
        precisions, rates, follow = [target], [lr], True
    elif opts.qat_schedule == "progressive":
        precisions = progressive_bits(*target)
        rates, follow = [lr] * len(precisions), True
    else:
        high = (max(opts.high_bits, target[0]), max(opts.high_bits, target[1]))
        precisions = [high, target, high, target]
        low_lr = lr * opts.low_lr_factor
        rates, follow = [lr, low_lr, lr, low_lr], False
    lengths = split_epochs(epochs, len(precisions), opts.stage_epochs, opts.qat_schedule)
    return [
        QuantStage(f"qat-{i + 1}-W{w}A{a}", w, a, n, rate, follow)
        for i, ((w, a), n, rate) in enumerate(zip(precisions, lengths, rates, strict=True))
    ]
