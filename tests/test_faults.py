"""The fault battery: nothing a user wrote is lost, an interrupted run resumes to the same result,
a full disk is one line, planted pickles run nothing, bad files are one line naming them."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import fewlabel
from conftest import FAST, make_image_folder
from fewlabel import fileio
from fewlabel.errors import FewlabelError
from fewlabel.outputs import MARKER, staging_path

LINEAR = FAST | {"strategy": "linear-probe"}
KILL_SCRIPT = Path(__file__).parent / "kill_run.py"


INTERRUPTED = FAST | {"strategy": "freeze-unfreeze", "feature_cache": "off"}


class CutInFinetune(L.Callback):
    """An interruption (an exception) at the end of the first fine-tuning epoch."""

    def on_train_epoch_end(self, trainer, pl_module):
        if pl_module.phase == "finetune":
            raise RuntimeError("cut")


def interrupt(data: Path, out: Path) -> None:
    """Train INTERRUPTED into ``out`` until the cut: its head fit finished, a checkpoint written."""
    with pytest.raises(RuntimeError, match="cut"):
        fewlabel.train(str(data), out, callbacks=[CutInFinetune()], **INTERRUPTED)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def data(tmp_path) -> Path:
    root = make_image_folder(tmp_path / "data")
    (root / "NOTES.txt").write_text("where the slides came from")
    return root


@pytest.fixture
def finished(data, tmp_path) -> Path:
    return fewlabel.train(str(data), tmp_path / "run", **LINEAR).run_dir


# --- overwrite cannot destroy what fewlabel did not write -----------------------------------------


def test_overwrite_never_touches_the_data_folder(data, tmp_path):
    before = snapshot(data)
    for out, said in ((data, "is the input"), (data / "run", "lies inside the input folder"),
                      (tmp_path, "holds the input")):  # fmt: skip
        with pytest.raises(FewlabelError, match=said) as err:
            fewlabel.train(str(data), out, overwrite=True, **LINEAR)
        assert "\n" not in str(err.value)
    assert snapshot(data) == before and not (data / "run").exists()


def test_overwrite_refuses_a_folder_fewlabel_did_not_write(data, tmp_path):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("mine")
    with pytest.raises(FewlabelError, match=r"'.*thesis' was not written by fewlabel \(chapter1.tex\)"):
        fewlabel.train(str(data), foreign, overwrite=True, **LINEAR)
    assert snapshot(foreign) == {"chapter1.tex": b"mine"}


def test_overwrite_refuses_a_run_holding_a_file_of_the_user(data, finished):
    (finished / "my-notes.txt").write_text("keep me")
    with pytest.raises(FewlabelError, match=r"holds files fewlabel did not write \(my-notes.txt\)"):
        fewlabel.train(str(data), finished, overwrite=True, **LINEAR)
    assert (finished / "my-notes.txt").read_text() == "keep me"


def test_overwrite_refuses_another_kind_of_output(data, tmp_path):
    from fewlabel.nuclei.synth import write_synthetic

    tiles = tmp_path / "tiles"
    write_synthetic(tiles, "breast-he", 2, size=32)
    with pytest.raises(FewlabelError, match="holds fewlabel's synthetic tiles output, not a run"):
        fewlabel.train(str(data), tiles, overwrite=True, **LINEAR)
    assert (tiles / "style.json").is_file()


def test_a_finished_run_overwritten_with_bad_data_is_intact(finished, tmp_path):
    before = snapshot(finished)
    one_class = make_image_folder(tmp_path / "bad", classes=("red",))
    with pytest.raises(FewlabelError, match="1 class"):
        fewlabel.train(str(one_class), finished, overwrite=True, **LINEAR)
    assert snapshot(finished) == before


def test_a_failed_overwrite_leaves_the_previous_run_and_keeps_the_new_one_for_resume(data, finished):
    import lightning as L

    class PowerCut(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raise RuntimeError("power cut")

    before = snapshot(finished)
    options = FAST | {"strategy": "full", "feature_cache": "off"}
    with pytest.raises(RuntimeError, match="power cut"):
        fewlabel.train(str(data), finished, overwrite=True, callbacks=[PowerCut()], **options)
    assert snapshot(finished) == before
    assert (staging_path(finished) / "checkpoints" / "last.ckpt").is_file()  # kept for --resume
    replaced = fewlabel.train(str(data), finished, overwrite=True, **options)
    assert replaced.metrics["method"] == "finetune" and "strategy: full" in (finished / "config.yaml").read_text()
    assert not staging_path(finished).parent.exists()


def test_a_new_run_that_fails_before_any_checkpoint_leaves_nothing(tmp_path):
    one_class = make_image_folder(tmp_path / "bad", classes=("red",))
    with pytest.raises(FewlabelError, match="1 class"):
        fewlabel.train(str(one_class), tmp_path / "run", **LINEAR)
    assert not (tmp_path / "run").exists()  # so the next attempt needs no --overwrite


def test_a_kill_between_the_two_renames_of_a_swap_is_finished_by_the_next_command(data, finished, tmp_path):
    """The state a kill -9 leaves in the middle of a swap: the old run moved aside, the complete
    new one not yet in place. The next command on the folder finishes the swap."""
    from fewlabel.outputs import aside_path, recover

    new = fewlabel.train(str(data), tmp_path / "new", **LINEAR).run_dir
    staged = staging_path(finished)
    staged.parent.mkdir()
    os.replace(new, staged)
    os.replace(finished, aside_path(finished))
    recover(finished, "run")
    assert json.loads((finished / MARKER).read_text())["complete"]
    assert not aside_path(finished).exists() and not staged.parent.exists()


# --- resume checks what it resumes -------------------------------------------------------------


def test_resume_needs_config_yaml_and_the_same_architecture(data, tmp_path):
    options = INTERRUPTED
    interrupt(data, tmp_path / "run")
    (tmp_path / "run" / "config.yaml").rename(tmp_path / "config.yaml")
    with pytest.raises(FewlabelError, match=r"config.yaml' is missing.*start a new run") as err:
        fewlabel.train(str(data), tmp_path / "run", resume=True, **options | {"model": "test_resnet"})
    assert "\n" not in str(err.value) and not (tmp_path / "run" / "config.yaml").exists()
    (tmp_path / "config.yaml").rename(tmp_path / "run" / "config.yaml")
    with pytest.raises(FewlabelError, match=r"model: 'test_efficientnet' -> 'test_resnet'.*--pretrained .*weights"):
        fewlabel.train(str(data), tmp_path / "run", resume=True, **options | {"model": "test_resnet"})


def test_a_checkpoint_of_another_run_is_refused_naming_the_field(data, tmp_path):
    from fewlabel.train.engine import check_identity

    identity = {"arch": "resnet18", "class_names": ["a", "b"], "settings_sha256": "0" * 16}
    check_identity(tmp_path / "state.pt", dict(identity), identity)
    for key, other in (("arch", "resnet34"), ("class_names", ["a", "c"]), ("settings_sha256", "1" * 16)):
        with pytest.raises(FewlabelError, match=rf"belongs to another run \({key}: "):
            check_identity(tmp_path / "state.pt", identity | {key: other}, identity)


def test_resume_after_changing_the_classes_is_refused(tmp_path):
    data = make_image_folder(tmp_path / "data")
    options = INTERRUPTED
    interrupt(data, tmp_path / "run")
    (data / "blue").rename(data / "cyan")  # the same config, other classes
    with pytest.raises(FewlabelError, match=r"belongs to another run \(class_names: \['blue'"):
        fewlabel.train(str(data), tmp_path / "run", resume=True, **options)


# --- kill -9 at several points, then --resume ---------------------------------------------------


def kill_run(data: Path, out: Path, point: str, flag: str = "") -> subprocess.CompletedProcess:
    args = [sys.executable, str(KILL_SCRIPT), str(data), str(out), point, *([flag] if flag else [])]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONHASHSEED": "0"})


def final_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def battery_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("battery")
    make_image_folder(root / "data" / "train", per_class=8, seed=1)
    make_image_folder(root / "data" / "val", per_class=3, seed=2)
    make_image_folder(root / "data" / "test", per_class=4, seed=3)
    return root


@pytest.fixture(scope="module")
def reference(battery_data) -> dict:
    done = kill_run(battery_data / "data", battery_data / "reference", "none")
    assert done.returncode == 0, done.stderr[-2000:]
    return final_metrics(battery_data / "reference")


@pytest.mark.parametrize("point", ["epoch", "checkpoint", "between-fits", "final"])
def test_kill_9_then_resume_ends_as_an_uninterrupted_run(battery_data, reference, point):
    out = battery_data / f"killed-{point}"
    killed = kill_run(battery_data / "data", out, point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "metrics.json").exists()
    if point == "checkpoint":
        assert list(out.rglob(".last.ckpt.*.tmp"))  # the interrupted write's temporary file
    resumed = kill_run(battery_data / "data", out, "none", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = final_metrics(out)
    assert metrics["confusion_matrix"] == reference["confusion_matrix"]
    assert metrics["nll"] == pytest.approx(reference["nll"], rel=1e-6)
    assert not list(out.rglob("*.tmp"))  # the stale temporary file was removed


def test_kill_9_during_an_overwrite_keeps_the_old_run_and_resume_finishes_the_new(battery_data, reference):
    out = battery_data / "overwritten"
    first = kill_run(battery_data / "data", out, "none")
    assert first.returncode == 0, first.stderr[-2000:]
    before = snapshot(out)
    killed = kill_run(battery_data / "data", out, "epoch", "--overwrite")
    assert killed.returncode == -9 and snapshot(out) == before and staging_path(out).is_dir()
    resumed = kill_run(battery_data / "data", out, "none", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert final_metrics(out)["nll"] == pytest.approx(reference["nll"], rel=1e-6)
    assert not staging_path(out).parent.exists()


# --- a full disk at each write ------------------------------------------------------------------


def test_disk_full_at_each_write_is_one_line_and_loses_nothing(data, finished, monkeypatch):
    """Every atomic write of an overwrite fails in turn with ENOSPC: the error names the file, and
    the finished run being replaced keeps every byte."""
    real = fileio.atomic_write
    written: list[str] = []

    def recording(path, write):
        written.append(Path(path).name)
        return real(path, write)

    monkeypatch.setattr(fileio, "atomic_write", recording)
    _patch_importers(monkeypatch, recording)
    fewlabel.train(str(data), finished, overwrite=True, **LINEAR)
    before, count = snapshot(finished), len(written)
    assert count >= 8 and {"metrics.json", "model.safetensors", "report.html"} <= set(written)
    for failing in range(count):
        calls = iter(range(count + 1))

        def full_disk(path, write, failing=failing, calls=calls):
            def fill(tmp):
                if next(calls) == failing:
                    raise OSError(errno.ENOSPC, "No space left on device")
                write(tmp)

            return real(path, fill)

        _patch_importers(monkeypatch, full_disk)
        with pytest.raises(FewlabelError, match=r"Cannot write '.*' \(No space left on device.*MB free there\)") as e:
            fewlabel.train(str(data), finished, overwrite=True, **LINEAR)
        assert "\n" not in str(e.value) and written[failing] in str(e.value)
        assert snapshot(finished) == before, f"write {failing} ({written[failing]}) lost the previous run"


def _patch_importers(monkeypatch, replacement) -> None:
    """Put ``replacement`` wherever a module imported atomic_write by name (and in fileio)."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("fewlabel") and getattr(module, "atomic_write", None):
            monkeypatch.setattr(module, "atomic_write", replacement)


def test_a_real_full_file_system_is_one_line(tmp_path):
    """/dev/full answers every write with ENOSPC, as a full disk does: each writer's error is one
    line naming the file (torch, safetensors and NumPy writers included)."""
    if not Path("/dev/full").exists():
        pytest.fail("this test needs /dev/full (Linux)")
    target = tmp_path / "out.bin"

    def to_dev_full(write):
        def into(tmp):
            tmp.unlink()
            tmp.symlink_to("/dev/full")
            write(tmp)

        return into

    writers = {
        "torch": lambda tmp: _torch_save({"w": torch.zeros(50_000)}, tmp),
        "safetensors": lambda tmp: tmp.write_bytes(__import__("safetensors.torch").torch.save({"w": torch.zeros(9)})),
        "text": lambda tmp: tmp.write_text("x" * 100_000),
    }
    for name, write in writers.items():
        with pytest.raises(FewlabelError, match=r"Cannot write '.*out.bin'") as err:
            fileio.atomic_write(target, to_dev_full(write))
        assert "\n" not in str(err.value), name
    assert not target.exists()


def _torch_save(obj, path) -> None:
    from fewlabel.train.engine import save_torch

    save_torch(obj, path)


# --- planted pickles run nothing ----------------------------------------------------------------


class Payload:
    """Unpickling this writes a file: evidence that a pickle ran."""

    def __init__(self, evidence: Path) -> None:
        self.evidence = evidence

    def __reduce__(self):
        return (Path.write_text, (self.evidence, "ran"))


def test_planted_pickles_run_nothing(data, finished, tmp_path):
    evidence = tmp_path / "evidence.txt"
    payload = pickle.dumps(Payload(evidence))
    (finished / "model.safetensors").write_bytes(payload)
    with pytest.raises(FewlabelError, match=r"model.safetensors' is not a readable safetensors file") as err:
        fewlabel.load(finished)
    assert "\n" not in str(err.value)
    with pytest.raises(FewlabelError, match="is not a readable safetensors file"):
        fewlabel.train(str(data), tmp_path / "from", **LINEAR | {"pretrained": str(finished / "model.safetensors")})
    options = INTERRUPTED
    interrupt(data, tmp_path / "cut")
    for name in ("checkpoints/last.ckpt", "checkpoints/state.pt"):
        torch.save({"state_dict": Payload(evidence)}, tmp_path / "cut" / name)
    with pytest.raises(FewlabelError, match="cannot be read"):
        fewlabel.train(str(data), tmp_path / "cut", resume=True, **options)
    (tmp_path / "cut" / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FewlabelError, match=r"state.pt' cannot be read"):
        fewlabel.train(str(data), tmp_path / "cut", resume=True, **options)
    assert not evidence.exists()


# --- one line, naming the file ------------------------------------------------------------------


def test_a_csv_saved_by_excel_loads_and_a_latin1_one_is_named(tmp_path):
    from fewlabel.data.sources import load_data

    make_image_folder(tmp_path / "imgs", per_class=2)
    rows = [f"imgs/{c}/{i}.png,{c}" for c in ("red", "green", "blue") for i in range(2)]
    (tmp_path / "excel.csv").write_text("path,label\n" + "\n".join(rows), encoding="utf-8-sig")
    assert len(load_data(str(tmp_path / "excel.csv"), 32)) == 6
    (tmp_path / "latin.csv").write_bytes(("path,label\n" + rows[0] + ",café\n").encode("latin-1"))
    with pytest.raises(FewlabelError, match=r"latin.csv' is not UTF-8 text \(byte 0xe9.*save it as UTF-8"):
        load_data(str(tmp_path / "latin.csv"), 32)


def test_bad_config_files_are_one_line_naming_the_file(data, tmp_path):
    cases = {
        "latin.yaml": ("lr: 0.01 # é\n".encode("latin-1"), r"latin.yaml' is not UTF-8 text"),
        "number-key.yaml": (b"1: 2\n", r"number-key.yaml: key 1 is not an option name"),
        "broken.yaml": (b"lr: [0.1\n", r"broken.yaml' is not valid YAML \(line"),
    }
    for name, (content, said) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FewlabelError, match=said) as err:
            fewlabel.train(str(data), tmp_path / "run", config=tmp_path / name)
        assert "\n" not in str(err.value)


def test_bad_model_files_are_one_line_naming_the_file(finished):
    card = finished / "model.json"
    good = json.loads(card.read_text())
    cases = [
        ("{not json", r"model.json' is not valid JSON \(line 1, column 2"),
        (json.dumps(good | {"arch": "resnet_imaginary"}), r"model.json: Unknown model 'resnet_imaginary'"),
        (json.dumps(good | {"img_size": "abc"}), r"model.json': img_size 'abc' is not accepted; expected a positive"),
        (json.dumps([1, 2]), r"model.json': expected a JSON object"),
    ]
    for text, said in cases:
        card.write_text(text)
        with pytest.raises(FewlabelError, match=said) as err:
            fewlabel.load(finished)
        assert "\n" not in str(err.value)
    card.write_text(json.dumps(good))
    weights = finished / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(FewlabelError, match=r"model.safetensors' is not a readable safetensors file"):
        fewlabel.load(finished)


def test_a_class_whose_images_are_all_unreadable_is_named(tmp_path):
    data = make_image_folder(tmp_path / "data")
    for image in (data / "green").iterdir():
        image.write_bytes(b"not an image")
    with pytest.raises(FewlabelError, match=r"class 'green'.*no readable image"):
        fewlabel.train(str(data), tmp_path / "run", **LINEAR)


def test_an_audit_replaces_its_own_earlier_output_and_refuses_a_foreign_folder(tmp_path):
    from fewlabel.audit.uap_audit import UAP_OUTPUT
    from fewlabel.outputs import audit_folder

    with audit_folder(tmp_path / "uap", UAP_OUTPUT.name) as folder:
        (folder / "uap.json").write_text("first")
    with audit_folder(tmp_path / "uap", UAP_OUTPUT.name) as folder:
        (folder / "uap.json").write_text("second")
    assert (tmp_path / "uap" / "uap.json").read_text() == "second"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "figure.png").write_bytes(b"a person's figure")
    refused = r"'.*mine' holds files that are not a UAP audit; choose an empty"
    with pytest.raises(FewlabelError, match=refused), audit_folder(tmp_path / "mine", UAP_OUTPUT.name):
        pass
    assert (tmp_path / "mine" / "figure.png").read_bytes() == b"a person's figure"


def test_export_replaces_an_earlier_export_but_not_another_file(finished, tmp_path):
    other = tmp_path / "notes.onnx"
    other.write_text("not a model")
    with pytest.raises(FewlabelError, match=r"notes.onnx' exists and is not an ONNX model"):
        fewlabel.export(finished, other)
    assert other.read_text() == "not a model"
    first = fewlabel.export(finished, tmp_path / "model.onnx")
    again = fewlabel.export(finished, tmp_path / "model.onnx")
    assert first["size_bytes"] == again["size_bytes"] > 0


def test_the_command_line_prints_one_line_naming_the_file(data, monkeypatch, capsys):
    import fewlabel.cli as cli

    monkeypatch.setattr(sys, "argv", ["fewlabel", "train", str(data), "--out", str(data), "--overwrite"])
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    printed = capsys.readouterr().err
    assert exit_code.value.code == 1 and "Traceback" not in printed
    error = [line for line in printed.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: --out") and "is the input" in error[0]

    def unreadable():
        raise PermissionError(13, "Permission denied", "/data/slides/001.png")

    monkeypatch.setattr(cli, "app", unreadable)
    with pytest.raises(SystemExit):
        cli.main()
    assert capsys.readouterr().err.strip() == "error: '/data/slides/001.png': Permission denied."


def test_after_a_nan_loss_a_new_run_starts_from_the_weights_it_names(data, tmp_path):
    class Poison(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if pl_module.phase == "finetune":
                with torch.no_grad():
                    next(pl_module.parameters()).fill_(float("nan"))

    with pytest.raises(FewlabelError, match=r"loss became nan.*--pretrained (\S+weights.safetensors)") as err:
        fewlabel.train(str(data), tmp_path / "run", callbacks=[Poison()], **INTERRUPTED)
    weights = str(err.value).split("--pretrained ")[1].split(" ")[0]
    retried = fewlabel.train(str(data), tmp_path / "retry", **INTERRUPTED | {"pretrained": weights, "lr": 1e-3})
    assert math.isfinite(retried.metrics["nll"])
    assert fewlabel.load(retried.run_dir).card.pretrained == weights


def test_a_resumed_run_that_fails_is_never_removed(data, finished):
    """A run resumed with nothing to resume from (no checkpoints) that then fails keeps its model,
    metrics, report and config (the fit it redid starts its own logs and history again)."""
    import shutil

    class Fail(L.Callback):
        def on_train_start(self, trainer, pl_module):
            raise RuntimeError("fails at once")

    shutil.rmtree(finished / "checkpoints", ignore_errors=True)
    before = snapshot(finished)
    with pytest.raises(RuntimeError, match="fails at once"):
        fewlabel.train(str(data), finished, resume=True, callbacks=[Fail()], **LINEAR)
    results = ("model.safetensors", "model.json", "metrics.json", "report.html", "predictions.csv", "config.yaml")
    assert {k: snapshot(finished)[k] for k in results} == {k: before[k] for k in results}


def test_interrupted_swap_folders_are_removed_only_when_they_are_fewlabel_s(data, finished):
    from fewlabel.outputs import aside_path, recover

    stranger = staging_path(finished).parent
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("mine")
    with pytest.raises(FewlabelError, match=r"fewlabel-new' holds files fewlabel did not write \(thesis.tex\)"):
        recover(finished, "run")
    assert (stranger / "thesis.tex").read_text() == "mine"
    (stranger / "thesis.tex").unlink()
    stranger.rmdir()
    aside = aside_path(finished)
    aside.mkdir()
    (aside / "photo.jpg").write_bytes(b"a person's photo")
    (finished / MARKER).write_text(json.dumps({"kind": "run", "complete": False}))
    with pytest.raises(FewlabelError, match="is not fewlabel's run output alone"):
        recover(finished, "run")
    assert (aside / "photo.jpg").read_bytes() == b"a person's photo" and (finished / "model.safetensors").is_file()


def test_only_the_temporary_files_of_interrupted_writes_are_removed(tmp_path):
    (tmp_path / ".metrics.json.a1b2c3d4.tmp").write_text("half")
    (tmp_path / ".notes.tmp").write_text("a person's")
    (tmp_path / ".draft.v2.final.tmp").write_text("a person's")
    assert [p.name for p in fileio.remove_stale_temporaries(tmp_path)] == [".metrics.json.a1b2c3d4.tmp"]
    assert (tmp_path / ".notes.tmp").exists() and (tmp_path / ".draft.v2.final.tmp").exists()
