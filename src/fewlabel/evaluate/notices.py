"""Sentences a run says about itself, shown by the command line and at the top of the report:
what the automatic choices decided (augmentation, strategy, refit), which epoch's weights the
model holds, and warnings that a run learned nothing (pure functions of metrics.json's
records; :func:`run_sentences` gathers them for both the CLI and the report)."""

from __future__ import annotations

import math

FEW_VALIDATION_IMAGES = 50  # below this, a choice made on validation is called noisy


def selection_sentence(selection: dict, refitted: bool = False) -> str:
    """One sentence on the weights the model holds (``metrics['model_selection']``), or with
    ``refitted`` on the epoch the refit's plan was cut at."""
    key, best, last = selection["monitor"], selection["best"], selection["last"]
    images, margin = selection["val_images"], selection.get("margin", 0.0)
    basis = f"{images} validation images" + (" (few: the choice is noisy)" if images < FEW_VALIDATION_IMAGES else "")
    where = f"fit '{best['fit']}', epoch {best['epoch']}"
    held = f"fit '{last['fit']}', epoch {last['epoch']}"
    if selection["restored_best"]:
        text = (
            f"Model: the weights of {where} ({key} {best[key]:.4f}), the best on {basis}, restored: clearly better "
            f"than the {held} ({key} {last[key]:.4f})."
        )
        return text + (" The refit trains up to that epoch." if refitted else " Turn off with --no-keep-best.")
    if best == last:
        return f"Model: {held}, also the best on {basis} ({key} {last[key]:.4f})."
    if selection["keep_best"]:
        return (
            f"Model: {held} ({key} {last[key]:.4f}); the best on {basis}, {where} ({key} {best[key]:.4f}), was within "
            f"noise of it (±{margin:.4f}), so the later weights were kept."
        )
    kept = f"Model: {held} ({key} {last[key]:.4f}; --no-keep-best)"
    return f"{kept}; the best on {basis} was {where} ({key} {best[key]:.4f})."


def run_sentences(metrics: dict) -> list[str]:
    """What the run decided for itself, in the order it decided it (metrics.json's records)."""
    sentences = []
    if metrics.get("augment_decision"):
        sentences.append(augment_sentence(metrics["augment_decision"]))
    if metrics.get("strategy_search"):
        sentences.append(search_sentence(metrics["strategy_search"]))
    refit = metrics.get("refit") or {}
    if metrics.get("model_selection"):
        sentences.append(selection_sentence(metrics["model_selection"], refitted=bool(refit.get("refit"))))
    if refit and (refit.get("refit") or refit.get("asked") is not None or metrics.get("model_selection")):
        sentences.append(refit_sentence(refit))
    return sentences


def search_sentence(search: dict) -> str:
    """One sentence on what ``--strategy auto`` tried and chose (``metrics['strategy_search']``)."""
    key = search["monitor"]
    ran = [c for c in search["candidates"] if c["status"] in ("ran", "winner")]
    skipped = [c for c in search["candidates"] if c["status"] == "skipped"]
    unneeded = [c for c in search["candidates"] if c["status"] == "not needed"]
    winner = next((c for c in ran if c["status"] == "winner"), None)
    text = f"Strategy (auto): tried {len(ran)} candidates in {search['spent_seconds'] / 60:.1f} of "
    text += f"{search['budget_seconds'] / 60:.0f} budgeted minutes"
    if winner:
        text += f"; {winner['strategy']} at lr {winner['lr']:.3g} won ({key} {winner['score'][key]:.4f}"
        if search.get("margin"):
            text += f"; candidates within ±{search['margin']:.4f} of the top score on {search['val_images']} "
            text += "validation images count as tied, and the preferred one wins"
        text += ")"
    if unneeded:
        names = ", ".join(c["fit"] for c in unneeded)
        text += f"; not needed, since freeze-unfreeze clearly beat its linear probe: {names}"
        text += " (--gentle-candidates always tries them)"
    if skipped:
        text += f"; skipped for the budget: {', '.join(c['fit'] for c in skipped)}"
    if search.get("probes_exceeded_budget"):
        text += "; the budget was too small even for the linear probes, which ran anyway"
    return text + ". Choose one with --strategy, or give more time with --budget-minutes."


def refit_sentence(refit: dict) -> str:
    """One sentence on whether the chosen plan was retrained on all labelled images, and what
    that means for the evaluation score (``metrics['refit']``)."""
    if not refit.get("refit"):
        return f"No refit ({refit.get('why', '')})."
    pre = refit["pre_refit"]
    if "accuracy" in pre:
        score = f"accuracy {100 * pre['accuracy']:.1f}%"
    else:  # another task: its first metric
        name = next((k for k, v in pre.items() if isinstance(v, float)), None)
        score = f"{name} {pre[name]:.4g}" if name else "(no score)"
    text = (
        f"Refit ({refit['why']}): the chosen plan was retrained on all {refit['images']} labelled images, validation "
        f"included, so the validation score above is of the model before the refit; before the refit the model "
        f"scored {score} on the {pre['eval_data']} data."
    )
    if refit.get("eval_trained_on"):
        text += (
            " The evaluation images are the held-out validation images, which the final model trained on: its score "
            "on them is not an unbiased estimate; the pre-refit score is."
        )
    return text + " Turn off with --no-refit."


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
    ln(number of classes) (the loss of a uniform guess; with an accuracy above chance that
    says the probabilities, not the ranking, are worthless)."""
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
        uniform = f"the evaluation loss {nll:.3f} is close to ln({classes}) = {math.log(classes):.3f}, a uniform guess"
        if warnings:
            warnings.append(f"{uniform}; {advice}.")
        else:  # the ranking is right, the probabilities are not
            warnings.append(
                f"{uniform}, although accuracy {100 * accuracy:.1f}% is above chance: the predicted probabilities "
                "are nearly flat (underconfident), so read them as a ranking, not as probabilities; more epochs "
                "or a higher learning rate for the head sharpen them."
            )
    return warnings
