"""Reliability figures of issue 38: the web app under hostile load, and the kill -9 battery.

Web app: ``fewlabel serve`` in its own process on loopback, 16 concurrent clients in bounded
request loops: ordinary images (``/api/predict``, one 640 x 480 JPEG each), a client that polls
``/api/info``, clients sending 9000 x 9000 PNGs (one, or four in one request) and clients sending
malformed uploads (truncated, not an image, too many files, a body over the request limit).
Records p50/p99 latency of the ordinary predictions and of ``/api/info``, the server's peak RSS
above idle (sampled from /proc every 20 ms), the count of each status code, and whether the
server is alive at the end. ``--baseline REF`` runs the same load against the server of another
commit (a git worktree of REF), side by side in the same run.

Kill battery: ``tests/kill_run.py`` killed with SIGKILL at each point (during an epoch, inside a
checkpoint write, between fits, before the final writes, during an overwrite), then resumed;
counts the resumes whose metrics equal an uninterrupted run's.

    python bench/reliability.py [--rounds 6] [--baseline 4437e91] [--no-kill]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from _common import command_line, save

ROOT = Path(__file__).resolve().parents[1]
KILL_POINTS = ("epoch", "checkpoint", "between-fits", "final")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_run(work: Path) -> Path:
    """A small classifier to serve: EfficientNet-Lite0 (ImageNet, offline), linear probe, 64 px."""
    sys.path.insert(0, str(ROOT / "tests"))
    import fewlabel
    from conftest import make_image_folder

    data = make_image_folder(work / "data", per_class=10)
    options = {"strategy": "linear-probe", "img_size": 64, "epochs": 3, "progress": False}
    return fewlabel.train(str(data), work / "run", model="efficientnet_lite0", **options).run_dir


def uploads(work: Path) -> dict[str, bytes]:
    """The files the clients send: an ordinary photo-sized JPEG, a real 9000 x 9000 PNG, malformed ones."""
    rng = np.random.default_rng(0)
    photo = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(photo, format="JPEG", quality=90)
    huge = work / "huge.png"
    if not huge.exists():
        gradient = np.linspace(0, 255, 9000, dtype=np.uint8)
        big = np.stack([np.tile(gradient, (9000, 1))] * 3, axis=-1)
        Image.fromarray(big).save(huge, format="PNG", optimize=False)
        del big
    return {"photo": photo.getvalue(), "huge": huge.read_bytes(), "truncated": photo.getvalue()[:500]}


def client_loop(kind: str, base: str, files: dict[str, bytes], rounds: int, record: list) -> None:
    """One uploading client: ``rounds`` requests of its kind."""
    import httpx

    with httpx.Client(base_url=base, timeout=300) as http:
        done = 0
        while done < rounds:
            done += 1
            started = time.perf_counter()
            try:
                status = send(http, kind, files)
            except httpx.HTTPError as exc:
                status = f"error: {type(exc).__name__}"
            record.append((kind, status, time.perf_counter() - started))


def info_poller(base: str, out: Path):
    """The ``/api/info`` client in a process of its own (as a browser tab is: the uploading clients'
    threads would otherwise delay it inside this process). Returns a function that stops it and
    gives its records."""
    code = (
        "import json, sys, time, httpx\n"
        "base, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]\n"
        "import pathlib\nrecord = []\n"
        "with httpx.Client(base_url=base, timeout=300) as http:\n"
        "    while not pathlib.Path(stop).exists():\n"
        "        t = time.perf_counter()\n"
        "        try:\n            s = http.get('/api/info').status_code\n"
        "        except httpx.HTTPError as e:\n            s = 'error: ' + type(e).__name__\n"
        "        record.append(('info', s, time.perf_counter() - t))\n"
        "        time.sleep(0.02)\n"
        "pathlib.Path(out).write_text(json.dumps(record))\n"
    )
    stop = out.with_suffix(".stop")
    process = subprocess.Popen([sys.executable, "-c", code, base, str(out), str(stop)])

    def finish() -> list:
        stop.touch()
        process.wait(timeout=120)
        return [tuple(r) for r in json.loads(out.read_text())]

    return finish


def send(http, kind: str, files: dict[str, bytes]) -> int:
    one = {
        "ordinary": [("files", ("photo.jpg", files["photo"], "image/jpeg"))],
        "huge": [("files", ("huge.png", files["huge"], "image/png"))],
        "huge-x4": [("files", (f"huge{i}.png", files["huge"], "image/png")) for i in range(4)],
        "truncated": [("files", ("cut.jpg", files["truncated"], "image/jpeg"))],
        "not-image": [("files", ("notes.png", b"hello" * 100, "image/png"))],
        "too-many": [("files", (f"{i}.jpg", files["photo"], "image/jpeg")) for i in range(40)],
        "oversized": [("files", ("big.jpg", files["photo"] * 200, "image/jpeg"))],
    }[kind]
    return http.post("/api/predict", files=one).status_code


CLIENTS = (
    ["ordinary"] * 8 + ["info"] + ["huge"] * 2 + ["huge-x4"] + ["truncated", "not-image", "too-many", "oversized"]
)  # 16 clients


def load_test(
    run: Path, files: dict[str, bytes], rounds: int, pythonpath: str, serve_args: list[str], server_env: dict
) -> dict:
    """Start a server from ``pythonpath``'s fewlabel (with ``serve_args``, in ``server_env``),
    idle-measure, load it, and summarise."""
    port = free_port()
    env = os.environ | {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"} | server_env
    code = "import sys; from fewlabel.cli import main; sys.argv = ['fewlabel', 'serve', *sys.argv[1:]]; main()"
    log = open(run.parent / f"serve-{port}.log", "w")  # noqa: SIM115 (closed when the server ends)
    args = [sys.executable, "-c", code, str(run), "--port", str(port), *serve_args]
    server = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(300):
        try:
            if httpx.get(base + "/api/info", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    httpx.post(base + "/api/predict", files=[("files", ("p.jpg", files["photo"], "image/jpeg"))], timeout=60)
    time.sleep(1)
    idle = rss_mb(server.pid)
    samples: list[float] = []
    sampling = threading.Event()

    def sample():
        while not sampling.is_set() and server.poll() is None:
            samples.append(rss_mb(server.pid))
            time.sleep(0.02)

    record: list = []
    sampler = threading.Thread(target=sample)
    sampler.start()
    uploaders = [k for k in CLIENTS if k != "info"]
    threads = [threading.Thread(target=client_loop, args=(k, base, files, rounds, record)) for k in uploaders]
    started = time.perf_counter()
    poller = info_poller(base, run.parent / f"info-{port}.json")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record += poller()
    seconds = time.perf_counter() - started
    alive = server.poll() is None
    try:
        alive = alive and httpx.get(base + "/api/info", timeout=10).status_code == 200
    except httpx.HTTPError:
        alive = False
    sampling.set()
    sampler.join()
    server.terminate()
    server.wait(timeout=30)
    log.close()
    return summarise(record, idle, samples, alive, seconds)


def summarise(record: list, idle: float, samples: list[float], alive: bool, seconds: float) -> dict:
    def latency(kind: str) -> dict:
        times = sorted(t for k, s, t in record if k == kind and s == 200)
        if not times:
            return {"n": 0}
        p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
        return {
            "n": len(times),
            "p50_ms": 1000 * statistics.median(times),
            "p99_ms": 1000 * p99,
            "max_ms": 1000 * times[-1],
        }

    statuses = Counter(str(s) for _, s, _ in record)
    by_kind = {kind: dict(Counter(str(s) for k, s, _ in record if k == kind)) for kind in dict.fromkeys(CLIENTS)}
    peak = max(samples, default=idle)
    server_errors = sum(n for s, n in statuses.items() if s.startswith("5") or s.startswith("error"))
    result = {
        "seconds": seconds,
        "predict_ordinary": latency("ordinary"),
        "info": latency("info"),
        "idle_rss_mb": idle,
        "peak_rss_mb": peak,
        "peak_rss_above_idle_mb": peak - idle,
        "status_counts": dict(statuses),
        "status_by_client": by_kind,
        "server_alive_at_end": alive,
    }
    info_p99 = result["info"].get("p99_ms")
    result["goals"] = {
        "no_5xx": server_errors == 0,
        "alive": alive,
        "peak_rss_above_idle_at_most_1536_mb": peak - idle <= 1536,
        "info_p99_under_200_ms": info_p99 is not None and info_p99 < 200,
    }
    return result


def kill_battery(work: Path) -> dict:
    """Each kill point: killed, resumed, compared with the uninterrupted run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_image_folder

    root = work / "battery"
    make_image_folder(root / "data" / "train", per_class=8, seed=1)
    make_image_folder(root / "data" / "val", per_class=3, seed=2)
    make_image_folder(root / "data" / "test", per_class=4, seed=3)

    def run(out: Path, point: str, flag: str = "") -> int:
        args = [sys.executable, str(ROOT / "tests" / "kill_run.py"), str(root / "data"), str(out), point]
        return subprocess.run([*args, *([flag] if flag else [])], capture_output=True, env=os.environ).returncode

    def metrics(out: Path) -> dict:
        return json.loads((out / "metrics.json").read_text())

    assert run(root / "reference", "none") == 0
    reference = metrics(root / "reference")
    points = {}
    for point in (*KILL_POINTS, "overwrite-epoch"):
        out = root / point
        if point == "overwrite-epoch":
            assert run(out, "none") == 0
            killed = run(out, "epoch", "--overwrite")
        else:
            killed = run(out, point)
        resumed = run(out, "none", "--resume")
        got = metrics(out) if resumed == 0 else {}
        same = got.get("confusion_matrix") == reference["confusion_matrix"] and abs(
            got.get("nll", float("nan")) - reference["nll"]
        ) <= 1e-6 * abs(reference["nll"])
        points[point] = {"killed_by_sigkill": killed == -9, "resumed": resumed == 0, "identical": same,
                         "nll": got.get("nll")}  # fmt: skip
    return {
        "reference_nll": reference["nll"],
        "points": points,
        "kill_points_tried": len(points),
        "resumes_identical": sum(p["identical"] and p["killed_by_sigkill"] for p in points.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="requests per client (the info poller runs throughout)")
    parser.add_argument("--baseline", default=None, help="a commit whose server takes the same load, side by side")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill battery")
    parser.add_argument("--serve-args", default="", help="more options of fewlabel serve (not for the baseline)")
    parser.add_argument("--server-env", default="", help="NAME=VALUE,... set in the server's environment")
    parser.add_argument("--result", default="reliability", help="name of the JSON under bench/results")
    args = parser.parse_args()
    serve_args = args.serve_args.split()
    server_env = dict(item.split("=", 1) for item in args.server_env.split(",") if item)
    result: dict = {"command": command_line("reliability.py", args), "clients": CLIENTS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = make_run(work)
        files = uploads(work)
        result["uploads_bytes"] = {k: len(v) for k, v in files.items()}
        result["serve"] = load_test(run, files, args.rounds, str(ROOT / "src"), serve_args, server_env)
        if args.baseline:
            tree = work / "baseline"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.baseline],
                           check=True, capture_output=True)  # fmt: skip
            try:
                baseline = load_test(run, files, args.rounds, str(tree / "src"), [], server_env)
                result["baseline"] = {"ref": args.baseline} | baseline
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        if not args.no_kill:
            result["kill_battery"] = kill_battery(work)
    save(args.result, result)
    print(json.dumps({k: result[k] for k in result if k in ("serve", "baseline", "kill_battery")}, indent=1)[:4000])


if __name__ == "__main__":
    main()
