"""Low-bit networks: BatchNorm folding, Brevitas quantization, precision schedules, the qat
method end to end (train, reload, export, deployment check), its bad inputs and the CLI."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import fewlabel
from conftest import FAST, make_image_folder
from fewlabel import FewlabelError
from fewlabel.cli.app import app
from fewlabel.config import make_config
from fewlabel.evaluate.predictions import read_predictions
from fewlabel.quant.export import checked_export, export_model, export_onnx, parity_images
from fewlabel.quant.layers import (
    BitSpec,
    calibrate,
    check_bits,
    fold_batchnorm,
    quantizable_layers,
    quantize_layers,
    signed_inputs,
)
from fewlabel.quant.options import QatOptions
from fewlabel.quant.schedule import plan_stages, progressive_bits
from fewlabel.stepwise.recipe import run_recipe

QUICK = FAST | {"robustness_images": 0, "labels_per_class": 6}
HLHL = QUICK | dict(epochs=4, weight_bits=4, act_bits=4, qat_schedule="hlhl", calibration_images=8)


def folded_net(arch: str = "test_efficientnet") -> nn.Module:
    torch.manual_seed(0)
    net = timm.create_model(arch, num_classes=3).eval()
    for m in net.modules():  # statistics far from the identity, so that a wrong fold shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net


# --- folding and quantizing -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_resnet"])
def test_folding_batchnorm_keeps_the_eval_outputs_and_leaves_no_batchnorm(arch):
    net = folded_net(arch)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        pairs = fold_batchnorm(net)
        after = net(x)
    assert pairs and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert torch.allclose(before, after, atol=1e-4)


def test_inputs_after_a_relu_get_an_unsigned_quantizer_and_the_others_a_signed_one():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 28 * 28, 2))
    signed = signed_inputs(net, torch.randn(2, 3, 32, 32))
    assert signed == ["0", "4"]  # the image and a convolution's output; the second conv reads a ReLU
    net[2].weight.data.zero_()
    net[2].bias.data.fill_(1.0)  # a convolution whose output is never negative
    assert signed_inputs(net, torch.randn(2, 3, 32, 32)) == ["0"]


def test_quantizing_replaces_every_layer_at_its_precision_and_requantizing_keeps_the_float_weights():
    from brevitas.nn import QuantConv2d, QuantLinear

    net = folded_net()
    fold_batchnorm(net)
    names = quantizable_layers(net)
    quantize_layers(net, BitSpec(4, 3, first_last_bits=8), [])
    layers = [net.get_submodule(n) for n in names]
    assert all(isinstance(m, (QuantConv2d, QuantLinear)) for m in layers)
    weight_bits = [int(m.weight_quant.bit_width()) for m in layers]
    act_bits = [int(m.input_quant.bit_width()) for m in layers]
    assert weight_bits == [8] + [4] * (len(names) - 2) + [8]
    assert act_bits == [8] + [3] * (len(names) - 2) + [8]
    weights = {n: net.get_submodule(n).weight.detach().clone() for n in names}
    quantize_layers(net, BitSpec(2, 2, first_last_bits=6), [])
    assert [int(net.get_submodule(n).weight_quant.bit_width()) for n in names][:2] == [6, 2]
    assert all(torch.equal(weights[n], net.get_submodule(n).weight) for n in names)


def test_fewer_bits_move_the_outputs_further_from_the_float_network():
    net = folded_net()
    fold_batchnorm(net)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        reference = net(x)
    errors = {}
    for bits in (8, 4, 2):
        signed = signed_inputs(net, x)
        quantized = quantize_layers(copy.deepcopy(net), BitSpec(bits, bits, first_last_bits=bits), signed)
        calibrate(quantized, x, 8)
        with torch.no_grad():
            errors[bits] = float((quantized.eval()(x) - reference).abs().mean())
    assert errors[8] < errors[4] < errors[2]
    assert errors[8] < 0.05 * float(reference.abs().mean())


def test_a_layer_brevitas_cannot_stand_for_is_refused_by_name():
    net = nn.Sequential(timm.layers.Conv2dSame(3, 4, 3, stride=2), nn.Flatten())
    with pytest.raises(FewlabelError, match=r"layer '0' is a Conv2dSame, which cannot be quantized"):
        quantize_layers(net, BitSpec(4, 4), [])


@pytest.mark.parametrize("value", [1, 17, 2.5, "4", True])
def test_bit_widths_outside_2_to_16_or_not_whole_are_refused(value):
    with pytest.raises(FewlabelError, match="weight_bits .* is not accepted: an integer from 2 to 16"):
        check_bits("weight_bits", value)
    if not isinstance(value, str | bool):
        with pytest.raises(FewlabelError, match="method.weight_bits"):
            make_config({"data": "x", "method": "qat", "pretrained": "r/model.safetensors", "weight_bits": value})


# --- schedules ----------------------------------------------------------------------------------


def test_schedules_share_the_epochs_and_end_at_the_target_precision():
    for schedule in ("direct", "progressive", "hlhl"):
        opts = QatOptions(weight_bits=2, act_bits=2, qat_schedule=schedule)
        stages = plan_stages(opts, 9, 1e-3)
        assert sum(s.epochs for s in stages) == 9
        assert (stages[-1].weight_bits, stages[-1].act_bits) == (2, 2)
    hlhl = plan_stages(QatOptions(weight_bits=2, act_bits=4, qat_schedule="hlhl", low_lr_factor=0.2), 8, 1e-3)
    assert [(s.weight_bits, s.act_bits) for s in hlhl] == [(8, 8), (2, 4), (8, 8), (2, 4)]
    assert [s.lr for s in hlhl] == pytest.approx([1e-3, 2e-4, 1e-3, 2e-4])
    assert not any(s.run_schedule for s in hlhl) and [s.epochs for s in hlhl] == [2, 2, 2, 2]
    assert progressive_bits(2, 4) == [(8, 8), (4, 4), (2, 4)]
    assert progressive_bits(8, 8) == [(8, 8)]
    given = plan_stages(QatOptions(qat_schedule="hlhl", weight_bits=4, act_bits=4, stage_epochs="1,3,1,3"), 8, 1e-3)
    assert [s.epochs for s in given] == [1, 3, 1, 3]
    coarse_low = plan_stages(QatOptions(qat_schedule="hlhl", weight_bits=2, act_bits=2, low_lr_factor=10), 4, 1e-4)
    assert [s.lr for s in coarse_low] == pytest.approx([1e-4, 1e-3, 1e-4, 1e-3])  # the high rate at low precision
    with pytest.raises(ValueError, match="low_lr_factor"):
        QatOptions(low_lr_factor=101)


def test_stage_epochs_that_do_not_fit_the_schedule_are_refused():
    with pytest.raises(FewlabelError, match=r"stage_epochs '1,2': qat_schedule hlhl has 4 stage\(s\) here"):
        plan_stages(QatOptions(qat_schedule="hlhl", stage_epochs="1,2"), 3, 1e-3)
    with pytest.raises(FewlabelError, match="--epochs must be at least 4"):
        plan_stages(QatOptions(qat_schedule="hlhl"), 3, 1e-3)
    with pytest.raises(ValueError, match="not a list of positive whole numbers"):
        QatOptions(stage_epochs="2,x")


# --- the method end to end -----------------------------------------------------------------------


def bias_widths(net: nn.Module) -> set[int]:
    """The bit widths the bias quantizers of ``net`` clamp to."""
    quantizers = [
        m.bias_quant for m in net.modules() if getattr(m, "bias", None) is not None and hasattr(m, "bias_quant")
    ]
    return {int(q.tensor_quant.msb_clamp_bit_width_impl()) for q in quantizers}


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    data = make_image_folder(root / "data", per_class=10)
    fewlabel.train(str(data), root / "float", **QUICK, strategy="full")
    return data, root / "float"


@pytest.fixture(scope="module")
def hlhl_run(float_run, tmp_path_factory):
    """(result, folder) of a W4A4 hlhl run: checked whole, and the reference a resumed run must match."""
    data, parent = float_run
    out = tmp_path_factory.mktemp("hlhl") / "q"
    return fewlabel.quantize(parent, str(data), out, **HLHL), out


def test_hlhl_trains_saves_reloads_exports_and_measures(float_run, hlhl_run):
    _, parent = float_run
    result, q = hlhl_run
    quant = json.loads((q / "quant.json").read_text())
    assert [s["label"] for s in quant["stages"]] == ["W8A8", "W4A4", "W8A8", "W4A4"]
    assert [h["fit"] for h in quant["history"]] == ["qat-1-W8A8", "qat-2-W4A4", "qat-3-W8A8", "qat-4-W4A4"]
    card = json.loads((q / "model.json").read_text())
    assert card["method"] == "qat" and card["extras"]["weight_bits"] == 4
    assert card["extras"]["quant"]["float_parent"] == str(parent)
    saved = read_predictions(q / "predictions.csv")
    reloaded = fewlabel.load(q).predict_proba(saved.ids)
    assert torch.allclose(reloaded, saved.probs.float(), atol=1e-5)
    assert bias_widths(fewlabel.methods.load_network(q)[0]) == {21}
    card["extras"]["quant"].pop("bias_bits")  # a run saved before biases took 21 bits rebuilds at 32
    (q / "model.json").write_text(json.dumps(card))
    assert bias_widths(fewlabel.methods.load_network(q)[0]) == {32}
    deploy = quant["deployment"]
    assert deploy["argmax_agreement"]["float"] >= 0.99  # onnxruntime runs the float export as PyTorch does
    assert deploy["size_bytes"]["quantized_onnx"] < deploy["size_bytes"]["float_onnx"]
    assert "QLinearConv" not in deploy["onnxruntime_kernels"]["quantized"]  # 4 bits: simulated in float
    assert set(deploy["latency_ms"]) == {"pytorch_float", "onnxruntime_float", "onnxruntime_quantized"}
    html = (q / "report.html").read_text()
    assert "Quantization (W4A4, hlhl)" in html and "onnxruntime float" in html
    assert result.metrics["method"] == "qat"


def test_an_8_bit_export_runs_on_integer_kernels_and_agrees_with_pytorch(float_run, tmp_path):
    _, parent = float_run
    net, card = fewlabel.methods.load_network(parent)
    fold_batchnorm(net)
    quantize_layers(net, BitSpec(8, 8), signed_inputs(net, parity_images(card, 8)))
    calibrate(net, parity_images(card, 32, seed=1), 8)
    record = export_model(net, card, tmp_path / "q8.onnx")
    assert record["quantized"] and record["onnxruntime_kernels"].get("QLinearConv", 0) > 0
    assert record["argmax_agreement"] >= 0.95
    float_net, _ = fewlabel.methods.load_network(parent)
    float_record = export_model(float_net, card, tmp_path / "f.onnx")
    assert float_record["argmax_agreement"] == 1.0 and float_record["max_abs_logit_difference"] < 1e-3
    assert record["size_bytes"] < float_record["size_bytes"] / 2


def test_channels_with_vanishing_weights_still_export_and_agree_with_pytorch(tmp_path):
    """A BatchNorm folded with a scale near 0 leaves a channel of tiny weights and a bias of
    millions of input x weight steps, past what float32 holds to the unit (Brevitas refused it).
    The export must agree with PyTorch as closely as the same network without those channels:
    onnxruntime's integer kernels differ by CPU (7-8% of the logit range on an AVX2 CPU without
    VNNI, most likely their documented u8 x s8 saturation; 5e-7 on another machine), so the bound
    is that network's own difference, not a fixed tolerance."""
    differences = {}
    for vanishing in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 32, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 30 * 30, 3)
        )
        with torch.no_grad():
            if vanishing:
                net[2].weight[:16].mul_(3.5e-5)
            net[2].bias.uniform_(0.5, 1.5)
        x = torch.randn(16, 3, 32, 32)
        quantize_layers(net, BitSpec(4, 4), signed_inputs(net, x))
        calibrate(net, x, 8)
        check = checked_export(net.eval(), x, tmp_path / f"w4-{vanishing}.onnx")
        assert check.agreement == 1.0
        scale = float(check.expected.abs().max())
        differences[vanishing] = float((check.got - check.expected).abs().max()) / scale
    assert differences[True] <= 1.5 * differences[False] + 1e-3


def test_an_export_that_fails_names_the_layer(tmp_path):
    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).abs()

    net = nn.Sequential(nn.Conv2d(3, 3, 1), Unexportable(), nn.Flatten())
    with pytest.raises(FewlabelError, match=r"ONNX export of the float network failed in layer '1' \(Unexportable\)"):
        export_onnx(net, torch.randn(1, 3, 8, 8), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("hook", ["on_train_epoch_start", "on_train_epoch_end"])
def test_a_resumed_hlhl_run_matches_an_uninterrupted_one(float_run, hlhl_run, tmp_path, hook):
    """Cut before the third stage trained (resumed from the state after the second) and after its
    epoch (resumed from its checkpoint): both end where the uninterrupted run ended."""
    import lightning as L

    def cut(trainer, pl_module) -> None:
        if pl_module.phase.startswith("qat-3"):
            raise RuntimeError("simulated power cut")

    data, parent = float_run
    reference, reference_dir = hlhl_run
    probs = read_predictions(reference_dir / "predictions.csv").probs.float()
    assert probs.std(0).max() > 0.05  # its outputs vary between images: constant ones would match anything
    with pytest.raises(RuntimeError, match="power cut"):
        crash = type("Crash", (L.Callback,), {hook: staticmethod(cut)})()
        fewlabel.quantize(parent, str(data), tmp_path / "cut", callbacks=[crash], **HLHL)
    resumed = fewlabel.quantize(parent, str(data), tmp_path / "cut", resume=True, **HLHL)
    assert resumed.metrics["nll"] == pytest.approx(reference.metrics["nll"], rel=1e-5)
    assert resumed.metrics["confusion_matrix"] == reference.metrics["confusion_matrix"]


def test_quantizing_a_quantized_run_or_a_non_run_or_other_classes_is_refused(float_run, tmp_path):
    data, parent = float_run
    fewlabel.quantize(parent, str(data), tmp_path / "q", **(QUICK | {"epochs": 1}))
    with pytest.raises(FewlabelError, match=rf"holds a quantized network .* float parent '{parent}'"):
        fewlabel.quantize(tmp_path / "q", str(data), tmp_path / "qq", **(QUICK | {"epochs": 1}))
    with pytest.raises(FewlabelError, match="pretrained: method 'qat' starts from a trained fewlabel run"):
        fewlabel.train(str(data), tmp_path / "x", **QUICK, method="qat")
    other = make_image_folder(tmp_path / "other", per_class=6, classes=("cat", "dog", "owl"))
    with pytest.raises(FewlabelError, match="predicts classes blue, green, red; the data has cat, dog, owl"):
        fewlabel.quantize(parent, str(other), tmp_path / "y", **(QUICK | {"epochs": 1}))
    with pytest.raises(FewlabelError, match="quantize keeps the run's architecture"):
        fewlabel.quantize(parent, str(data), tmp_path / "z", **QUICK | {"model": "resnet18"})


def test_a_recipe_quantizes_its_previous_stage(float_run, tmp_path):
    data, _ = float_run
    defaults = dict(QUICK) | {"epochs": 1, "head_epochs": 1}
    stages = [
        {"name": "float", "data": str(data), "strategy": "full"},
        {"name": "w4", "data": str(data), "method": {"name": "qat", "weight_bits": 4, "act_bits": 4}},
    ]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"defaults": defaults, "stages": stages}))
    summary = run_recipe(path, tmp_path / "out")
    assert [s["precision"] for s in summary["stages"]] == ["float", "W4A4 direct"]
    assert "<td>W4A4 direct</td>" in (tmp_path / "out" / "report.html").read_text()
    config = yaml.safe_load((tmp_path / "out" / "seed-0" / "w4" / "config.yaml").read_text())
    assert config["pretrained"].endswith("seed-0/float/model.safetensors")
    assert json.loads((tmp_path / "out" / "seed-0" / "w4" / "model.json").read_text())["method"] == "qat"


def test_the_cli_quantizes_and_exports(float_run, tmp_path):
    data, parent = float_run
    runner = CliRunner()
    out = tmp_path / "q"
    args = ["quantize", str(parent), str(data), "--out", str(out), "--weight-bits", "2", "--act-bits", "4"]
    args += ["--schedule", "progressive", "--epochs", "3", "--img-size", "32", "--batch-size", "8"]
    args += ["--no-progress", "--robustness-images", "0", "--labels-per-class", "6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    stages = json.loads((out / "quant.json").read_text())["stages"]
    assert [s["label"] for s in stages] == ["W8A8", "W4A4", "W2A4"]
    result = runner.invoke(app, ["export", str(out), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "quantized (QCDQ)" in result.output and (tmp_path / "m.onnx").is_file()
    result = runner.invoke(app, ["export", str(parent), "--format", "tflite"])
    assert result.exit_code != 0 and "tflite" in result.output
    bad = ["quantize", str(parent), str(data), "--weight-bits", "1", "--out", str(tmp_path / "b")]
    result = runner.invoke(app, bad)
    assert isinstance(result.exception, FewlabelError) and "method.weight_bits" in str(result.exception)


# --- the recurrent case --------------------------------------------------------------------------


def test_the_language_model_keeps_its_weights_across_precisions_and_trains_by_schedule():
    from fewlabel.quant.language import CharCorpus, CharLM, at_precision, corpus, perplexity, train_schedule

    text = corpus()
    assert len(text) > 100_000 and "lambda" in text  # Python's documentation topics, offline
    data = CharCorpus.from_text(text[:20_000])
    torch.manual_seed(0)
    model = CharLM(len(data.vocabulary), hidden=16, embed=8)
    before = perplexity(model, data.val[:600], seq_len=32)
    assert before == pytest.approx(len(data.vocabulary), rel=0.3)  # an untrained model guesses uniformly
    there_and_back = at_precision(at_precision(model, BitSpec(4, 4), len(data.vocabulary)), None, len(data.vocabulary))
    assert perplexity(there_and_back, data.val[:600], seq_len=32) == pytest.approx(before, rel=1e-5)
    opts = QatOptions(weight_bits=2, act_bits=2, qat_schedule="hlhl")
    quantized, stages = train_schedule(model, data, opts, blocks=4, block=3, lr=1e-2, seq_len=16, batch=8, seed=0)
    assert [(s["weight_bits"], s["steps"]) for s in stages] == [(8, 3), (2, 3), (8, 3), (2, 3)]
    assert quantized.bits == BitSpec(2, 2) and perplexity(quantized, data.val[:600], seq_len=32) < before
