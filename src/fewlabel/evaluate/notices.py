"""Sentences a run says about itself, shown by the command line and at the top of the report:
which epoch's weights the model holds, and warnings that a run learned nothing (pure
functions of numbers; the task gathers them)."""

from __future__ import annotations

import math

FEW_VALIDATION_IMAGES = 50  # below this, a choice made on validation is called noisy


def selection_sentence(selection: dict) -> str:
    """One sentence on the weights the model holds (``metrics['model_selection']``)."""
    key, best, last = selection["monitor"], selection["best"], selection["last"]
    images = selection["val_images"]
    basis = f"{images} validation images" + (" (few: the choice is noisy)" if images < FEW_VALIDATION_IMAGES else "")
    where = f"fit '{best['fit']}', epoch {best['epoch']}"
    if selection["restored_best"]:
        return (
            f"Model: the weights of {where} ({key} {best[key]:.4f}), the best on {basis}, restored; the last epoch "
            f"(fit '{last['fit']}', epoch {last['epoch']}) scored {last[key]:.4f}. Turn off with --no-keep-best."
        )
    if selection["keep_best"] or best == last:
        return f"Model: the last epoch's weights, also the best on {basis} ({key} {last[key]:.4f})."
    return (
        f"Model: the last epoch's weights ({key} {last[key]:.4f}; --no-keep-best); the best on {basis} was {where} "
        f"({key} {best[key]:.4f})."
    )


def augment_sentence(decision: dict) -> str:
    """One sentence on what ``augment: auto`` chose and the mirror tests behind it."""
    chosen = {"light": "crop and horizontal flip", "crop": "crop without horizontal flip"}.get(
        decision["augment"], decision["augment"]
    )
    parts = [f"Augmentation (auto): {chosen}{', plus vertical flip' if decision['vflip'] else ''}."]
    for name in ("horizontal_flip", "vertical_flip"):
        test = decision.get(name)
        if test:
            verdict = "keeps classes" if test["allowed"] else "changes classes here"
            if not test.get("conclusive", True):
                verdict = "left out: the test is inconclusive (the features barely separate the classes)"
            parts.append(
                f"{name.replace('_', ' ').capitalize()} {verdict}: mirrored labelled images were predicted "
                f"{100 * test['mirrored_accuracy']:.0f}% right against {100 * test['accuracy']:.0f}% unmirrored "
                f"({test['images']} images, tolerance {100 * test['tolerance']:.0f} points)."
            )
    return " ".join(parts) + " Choose a preset with --augment to override."


def feature_map_warning(map_side: int | None, img_size: int) -> list[str]:
    """A warning when the backbone's last feature map is smaller than 2 x 2 at ``img_size``."""
    if map_side is None or map_side >= 2:
        return []
    return [
        f"at --img-size {img_size} the backbone's last feature map is {map_side}x{map_side}: too small to hold "
        f"spatial detail; use at least --img-size {img_size * 2 // max(map_side, 1)}."
    ]


def chance_warnings(accuracy: float, nll: float, class_counts: list[int]) -> list[str]:
    """Warnings that a classifier learned nothing: accuracy within two binomial standard errors
    of the majority-class share of the evaluation images, or a mean log loss above 90% of
    ln(number of classes) (the loss of a uniform guess)."""
    n = sum(class_counts)
    classes = len(class_counts)
    if not n or classes < 2:
        return []
    chance = max(class_counts) / n
    noise = 2 * math.sqrt(chance * (1 - chance) / n)
    warnings = []
    advice = "try a larger --img-size, another --strategy (e.g. linear-probe) or another --lr"
    if accuracy <= chance + noise:
        warnings.append(
            f"accuracy {100 * accuracy:.1f}% is within noise of chance ({100 * chance:.1f}% ± {100 * noise:.1f}% "
            f"on {n} images): nothing was learned; {advice}."
        )
    if nll >= 0.9 * math.log(classes):
        warnings.append(
            f"the evaluation loss {nll:.3f} is close to ln({classes}) = {math.log(classes):.3f}, a uniform guess; "
            f"{advice}."
        )
    return warnings
