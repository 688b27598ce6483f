"""``fewlabel audit uap``: build a universal perturbation against a trained classifier from
natural photos (black-box data: the paper's setting) or from the task's own images, and score
it and its random control on evaluation images; write ``uap.json`` and ``perturbation.npy``.

``compare`` scores the same perturbation against other runs' models (transfer, the paper's
question: another architecture, or the same one trained from scratch). ``uap.png`` shows the
perturbation, a few evaluation images clean and perturbed, and the rate per class; the run's
report gains a robustness section.

Decision: the audit runs every pass by default (``delta`` 0, where ART's default stops at 80%
of the building images fooled). Built from photos, the building images are fooled long before
the perturbation reaches its ball (on the Fashion-MNIST models of ``bench/uap.py``: within one
pass, at 70% of the radius, the same perturbation at every zeta), and an audit that stops there
understates the model's vulnerability. The record says how much of its ball the perturbation
fills, and a warning says when it stayed inside.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..errors import FewlabelError
from ..fileio import write_arrays, write_json
from ..outputs import audit_folder, register_output_kind
from .uap import (
    UAP,
    check_zeta,
    folded_for_inference,
    fooling_rate,
    lp_norms,
    pixel_forward,
    predict,
    radius_for,
    random_control,
    universal_perturbation,
)

log = logging.getLogger("fewlabel.audit")
UAP_FILE, PERTURBATION_FILE, FIGURE_FILE = "uap.json", "perturbation.npy", "uap.png"
UAP_OUTPUT = register_output_kind("UAP audit", (UAP_FILE, PERTURBATION_FILE, FIGURE_FILE), (UAP_FILE,))
EXAMPLES = 4
BALL_WARNING = 0.95  # warn when the perturbation's norm stays below this share of its radius


def audit_uap(
    run: str | Path,
    *,
    natural: str | Path | None = None,
    source: str | None = None,
    eval_data: str | None = None,
    norm: str = "l2",
    zeta: float = 0.04,
    target: str | None = None,
    step: float = 0.0005,
    delta: float = 0.0,
    max_passes: int = 10,
    images: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    out: str | Path | None = None,
    compare: list[str | Path] | None = None,
) -> dict:
    """Build the UAP of ``run``'s model from the photos in ``natural`` (or from DATA ``source``),
    score it and a random perturbation of the same norm on ``eval_data`` (default: the run's
    DATA test split), write ``out`` (default ``RUN/audit/uap``) and return the record."""
    from ..methods import load_network
    from ..rundir import model_dir, read_config
    from ..tasks import get_task

    zeta = _checked(zeta, natural, source, norm)
    model, card = load_network(model_dir(run))
    if card.task != "classification":
        raise FewlabelError(f"'{run}' is a {card.task} run; the UAP audit takes classification runs.")
    task, target_index = get_task(card.task), _target_index(target, card.class_names)
    eval_spec = eval_data or _default_eval(read_config(run), run)
    evaluation = task.load_split(eval_spec, card)
    eval_pixels = model_pixels(evaluation.images, card.img_size)
    building, built_from = _building_images(task, card, natural, source, eval_pixels.shape[1], images, seed)
    forward = pixel_forward(folded_for_inference(model), card.mean, card.std)
    started = time.perf_counter()
    uap = universal_perturbation(
        forward, building, norm=norm, zeta=zeta, step=step, target=target_index, delta=delta,
        max_passes=max_passes, batch_size=batch_size, seed=seed, radius=radius_for(eval_pixels, norm, zeta),
    )  # fmt: skip
    control = random_control(uap.perturbation.shape, norm, uap.radius, torch.Generator().manual_seed(seed))
    eval_predicted = _predictions(forward, eval_pixels, uap.perturbation, control)
    building_predicted = (uap.clean, uap.predicted, predict(forward, building, control))  # the loop made the two first
    record = {
        "norm": norm,
        "zeta": zeta,
        "radius_pixels": uap.radius,
        "radius_scale": "[0, 1] pixels (the paper's [-1, 1] scale: twice this), zeta x the evaluation images' "
        "mean norm (not centred, as the paper's code)",
        "target": target,
        "step": step,
        "built_from": built_from,
        "building_images": len(building),
        "passes": uap.passes,
        "perturbation_norm_pixels": (length := float(lp_norms(uap.perturbation[None], norm)[0])),
        "ball_filled": _ball_filled(uap, length),
        "eval_data": eval_spec,
        "eval_images": len(evaluation),
        "building": _rates(forward, building, uap.perturbation, control, target_index, building_predicted),
        "evaluation": _rates(forward, eval_pixels, uap.perturbation, control, target_index, eval_predicted),
        "per_class": _per_class(*eval_predicted[:2], evaluation.labels, card.class_names),
        "seconds": time.perf_counter() - started,
    }
    if compare:
        v = uap.perturbation
        record["compare"] = {str(other): _transfer(other, v, control, eval_pixels, target) for other in compare}
    target = Path(out) if out is not None else Path(run) / "audit" / "uap"
    with audit_folder(target, UAP_OUTPUT.name) as folder:
        write_arrays(folder / PERTURBATION_FILE, uap.perturbation.numpy())
        write_json(folder / UAP_FILE, record)
        _write_figure(folder / FIGURE_FILE, forward, eval_pixels, uap.perturbation, card.class_names,
                      record["per_class"])  # fmt: skip
    folder = target
    if folder.resolve() == (Path(run) / "audit" / "uap").resolve() and (Path(run) / "report.html").is_file():
        from ..report import write_report

        write_report(run)  # the report gains its robustness section
    return record


def _ball_filled(uap: UAP, length: float) -> float:
    """The perturbation's norm ``length`` as a share of its radius; warns when it stayed well inside."""
    filled = length / uap.radius
    if filled < BALL_WARNING:
        log.warning(
            "the perturbation reached %.0f%% of its radius after %d passes: the fooling rates understate what "
            "the budget allows; give more photos (--images), passes (--max-passes) or a larger --step",
            100 * filled, uap.passes,
        )  # fmt: skip
    return filled


def _write_figure(path: Path, forward, pixels: torch.Tensor, v: torch.Tensor, class_names, per_class) -> None:
    """uap.png: the perturbation, a few evaluation images clean and perturbed, the rate per class."""
    import base64

    from ..fileio import atomic_write
    from ..report.figures import uap_figure

    shown = pixels[torch.linspace(0, len(pixels) - 1, min(EXAMPLES, len(pixels))).long()]  # spread over the set
    perturbed = (shown + v).clamp(0, 1)
    before, after = predict(forward, shown).tolist(), predict(forward, perturbed).tolist()
    examples = [
        (c.permute(1, 2, 0).numpy(), p.permute(1, 2, 0).numpy(), class_names[b], class_names[a])
        for c, p, b, a in zip(shown, perturbed, before, after, strict=True)
    ]
    png = base64.b64decode(uap_figure(v.numpy(), examples, per_class))
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))


def _checked(zeta: float, natural, source, norm: str) -> float:
    try:
        zeta = check_zeta(zeta)
    except ValueError as exc:
        raise FewlabelError(f"--zeta: {exc}.") from None
    if (natural is None) == (source is None):
        raise FewlabelError("Give the building images: either --natural PHOTOS (a folder) or --source DATA, not both.")
    if norm not in ("l2", "linf"):
        raise FewlabelError(f"--norm must be l2 or linf, got '{norm}'.")
    return zeta


def _default_eval(config: dict, run) -> str:
    data = config.get("data")
    if not data:
        raise FewlabelError(f"'{run}' has no config.yaml naming its DATA: pass --eval DATA:split.")
    return data if ":" in str(data) else f"{data}:test"


def _building_images(task, card, natural, source, channels: int, count: int | None, seed: int):
    """([0, 1] pixels to build from, what they are)."""
    if natural is not None:
        from ..data.natural import natural_crops

        return natural_crops(natural, card.img_size, channels, count, seed), f"natural photos in {natural}"
    pixels = model_pixels(task.load_split(source, card).images, card.img_size)
    if count is not None and count < len(pixels):
        pixels = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))[:count]]
    return pixels, f"DATA {source}"


def model_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images as [0, 1] pixels at the model's input size, resized as the model's own
    evaluation transform resizes them (built-in sets keep their stored size until then)."""
    import torch.nn.functional as F

    pixels = images.float() / 255
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return pixels


def _target_index(target: str | None, class_names: list[str]) -> int | None:
    if target is None:
        return None
    if target not in class_names:
        raise FewlabelError(f"--target '{target}' is not a class of this model; its classes: {', '.join(class_names)}.")
    return class_names.index(target)


def _predictions(forward, pixels: torch.Tensor, v: torch.Tensor, control: torch.Tensor) -> tuple:
    """Predicted classes of ``pixels`` clean, with the UAP and with the random control."""
    return predict(forward, pixels), predict(forward, pixels, v), predict(forward, pixels, control)


def _rates(forward, pixels, v, control, target: int | None, predicted: tuple | None = None) -> dict:
    """Fooling rate (targeted: success rate) of the UAP and of the random control on ``pixels``
    (``predicted``: their :func:`_predictions`, when already computed)."""
    clean, perturbed, controlled = predicted or _predictions(forward, pixels, v, control)
    key = "fooling_rate" if target is None else "targeted_success_rate"
    return {
        key: fooling_rate(clean, perturbed, target),
        f"random_control_{key}": fooling_rate(clean, controlled, target),
    }


def _transfer(other, v: torch.Tensor, control: torch.Tensor, pixels: torch.Tensor, target: str | None) -> dict:
    """The rates of the same perturbation and control against another run's model on the same
    evaluation images (both resized when its input size differs, which the record says)."""
    import torch.nn.functional as F

    from ..methods import load_network
    from ..rundir import model_dir

    model, card = load_network(model_dir(other))
    if card.task != "classification":
        raise FewlabelError(f"--compare '{other}' is a {card.task} run; the UAP audit compares classifiers.")
    record = {"arch": card.arch, "pretrained": card.pretrained, "img_size": card.img_size}
    if card.img_size != pixels.shape[-1]:

        def resize(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=(card.img_size,) * 2, mode="bilinear", align_corners=False)

        pixels, v, control = resize(pixels), resize(v[None])[0], resize(control[None])[0]
        record["resized"] = f"images and perturbation resized to {card.img_size} px"
    target_index = card.class_names.index(target) if target in card.class_names else None
    if target is not None and target_index is None:
        record["note"] = f"class '{target}' is not one of this model's: untargeted rates"
    forward = pixel_forward(folded_for_inference(model), card.mean, card.std)
    return record | _rates(forward, pixels, v, control, target_index)


def _per_class(clean: torch.Tensor, perturbed: torch.Tensor, labels: torch.Tensor, class_names: list[str]):
    """The untargeted fooling rate among the evaluation images of each true class, from their
    clean and perturbed predictions."""
    return {
        name: fooling_rate(clean[labels == c], perturbed[labels == c]) if bool((labels == c).any()) else None
        for c, name in enumerate(class_names)
    }
