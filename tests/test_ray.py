"""Sweeps on Ray (`optim.distributed`), on a local CPU cluster this module starts and stops (loopback only, 2
CPUs): the same rows as the local path, no row lost when a worker's process is killed mid-evaluation, and a
killed driver resumed without redoing its rows. Without Ray (`pip install -r requirements-scale.txt`) only the
tests that need no cluster run: `--ray` says how to install it, and the placement rules.

Small settings (6 steps, 128x128, 2 prompts, 2 points, a short time budget per point): the speed figures are
only checked to agree within their intervals. About 3 minutes on 2 busy cores, most of it worker start-ups
(a Ray actor imports torch, then its side processes load the model) and the baselines each worker measures."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Ray's processes bind to the loopback address only (by default they take the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from optim.config import parse_run  # noqa: E402
from optim.distributed import Job, by_device, pick, plan_workers, swap_key  # noqa: E402
from optim.errors import ConfigError  # noqa: E402
from optim.measure import swappable  # noqa: E402
from optim.prompts import parse_prompt_set  # noqa: E402
from optim.sweep import load_space, point_of, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUN = {"steps": 6, "width": 128, "height": 128}  # the embedded model's own size: calls long enough to time
BUDGET_S = 0.2
PROMPTS = parse_prompt_set("a red circle on a blue background\na large white square on a green background",
                           name="two")
TWO = {"name": "fbc2", "base": {"cache": {"method": "first_block_cache"}}, "grid": {"cache.threshold": [0.05, 0.5]}}
QUALITY = ("psnr_mean", "psnr_worst", "ssim_mean", "ssim_worst", "adherence", "work_fraction")


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optim", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------ without Ray


def test_ray_flag_without_ray_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from optim.cli import main; "  # `import ray` fails
            "sys.exit(main(sys.argv[1:]))")
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TWO))
    done = subprocess.run([sys.executable, "-c", code, "sweep", "--space", str(space), "--out", str(tmp_path / "o"),
                           "--ray"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "pip install -r requirements-scale.txt" in done.stderr and "--ray" in done.stderr
    assert not (tmp_path / "o" / "rows.jsonl").exists()


def _job(settings: dict, name: str = "") -> Job:
    point = point_of(settings, where="test")
    return Job(point, swap_key(point.optim, point.id), future=None)  # type: ignore[arg-type]


def test_placement_keeps_swappable_points_on_one_worker():
    fbc = [{"cache": {"method": "first_block_cache", "threshold": t}} for t in (0.05, 0.1, 0.2)]
    quanto = [{"quantization": {"backend": "quanto", "weights": "int8"}, "cache": {"method": "first_block_cache",
                                                                                  "threshold": t}}
              for t in (0.05, 0.1)]
    compiled = {"compile": {"mode": "regional"}}
    jobs = [_job(s) for s in (fbc[0], quanto[0], fbc[1], compiled, quanto[1], fbc[2])]
    # The key is swappable() as a partition: equal keys <-> swappable, and a compiled point is alone.
    for a in jobs:
        for b in jobs:
            assert (a.key == b.key) == (a is b or swappable(a.point.optim, b.point.optim)), (a.point.label, b.point.label)
    ready = {"w0", "w1"}
    # A worker loaded with a group takes that group's next point, wherever it is in the queue.
    assert jobs[pick(jobs, "w0", jobs[1].key, set(), ready)].key == jobs[1].key
    # A fresh worker takes the largest group nobody holds; with w0 on the cache group, w1 takes quanto.
    assert jobs[pick(jobs, "w0", None, set(), ready)].key == jobs[0].key
    assert jobs[pick(jobs, "w1", None, {jobs[0].key}, ready)].key == jobs[1].key
    # A point a worker lost goes to another ready worker; to the same one only if no other is ready.
    lost = _job(fbc[0])
    lost.avoid.add("w0")
    assert pick([lost], "w0", lost.key, set(), ready) is None
    assert pick([lost], "w1", None, set(), ready) == 0
    assert pick([lost], "w0", None, set(), {"w0"}) == 0
    # A whole sweep placed greedily: each group's points on one worker.
    queue, where = list(jobs), {"w0": None, "w1": None}
    placed: dict[str, set[str]] = {}
    while queue:
        for worker in ("w0", "w1"):
            if not queue:
                break
            held = {key for other, key in where.items() if other != worker and key}
            job = queue.pop(pick(queue, worker, where[worker], held, ready))
            where[worker] = job.key
            placed.setdefault(job.key, set()).add(worker)
    assert all(len(workers) == 1 for key, workers in placed.items() if not key.startswith("compiled:"))


def test_workers_ask_for_a_gpu_each_on_a_gpu_cluster_and_for_a_node_s_cpus_on_a_cpu_one():
    eight_h100 = {"CPU": 208, "GPU": 8}
    assert plan_workers([eight_h100] * 8, "auto") == (64, {"num_gpus": 1.0, "num_cpus": 26})
    assert plan_workers([eight_h100] * 8, "auto", gpus_per_worker=2) == (32, {"num_gpus": 2.0, "num_cpus": 52})
    assert plan_workers([{"CPU": 0}, {"CPU": 16}, {"CPU": 8}], "auto") == (2, {"num_gpus": 0, "num_cpus": 8})
    assert plan_workers([{"CPU": 2}], "auto", workers=2) == (2, {"num_gpus": 0, "num_cpus": 1})
    assert plan_workers([eight_h100], "cpu")[1]["num_gpus"] == 0
    with pytest.raises(ConfigError, match="no GPUs"):
        plan_workers([{"CPU": 8}], "cuda")


def test_rows_are_grouped_by_the_device_they_ran_on():
    def row(id_, device, host, speedup, ssim):
        return {"id": id_, "status": "ok", "device": "cuda", "device_name": device, "host": host,
                "speedup": speedup, "ssim_worst": ssim}

    rows = [row("a", "H100", "n1", 1.8, 0.99), row("b", "L4", "n9", 1.3, 0.995), row("c", "H100", "n2", 1.2, 0.999),
            row("d", "L4", "n9", 1.1, 0.97)]
    groups = {g["device_name"]: g for g in by_device(rows, "ssim_worst")}
    assert groups["H100"]["hosts"] == ["n1", "n2"] and groups["H100"]["rows"] == ["a", "c"]
    assert groups["H100"]["front"] == ["a", "c"] and groups["H100"]["fastest"] == "a"
    # On the L4, d is beaten by b on both axes: its own front, not the H100's.
    assert groups["L4"]["front"] == ["b"] and groups["L4"]["fastest"] == "b"


# ------------------------------------------------------------------------------------------ on a cluster


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs and no dashboard, on the loopback address; its GCS address."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_sweep_on_ray_gives_the_local_rows_and_a_killed_driver_resumes(cluster, tmp_path):
    """The CLI on the cluster, its driver killed after the first row and run again with --resume: the second
    point only is measured, and the rows are the local path's (same configurations, the same quality figures,
    speedup intervals that overlap), grouped by device."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**TWO, "run": RUN}))
    local = run_sweep(load_space(space.read_text()), PROMPTS, tmp_path / "local", run_spec=parse_run(RUN),
                      point_budget_s=BUDGET_S)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS.prompts) + "\n")
    out = tmp_path / "ray"
    # One worker with both CPUs: its side processes compute with the same threads as the local ones, so the
    # images, and with them every quality figure, are the same bits.
    args = ["sweep", "--space", str(space), "--prompts", str(prompts), "--out", str(out), "--point-budget",
            str(BUDGET_S), "--ray", cluster, "--ray-workers", "1"]
    driver = subprocess.Popen([sys.executable, "-m", "optim", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        if (out / "rows.jsonl").exists() and (out / "rows.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = _rows(out / "rows.jsonl")
    assert len(finished) == 1, "killed after the first row, before the second"
    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "1 from an earlier run)" in resumed.stdout and "on Ray: 1 worker(s), 1 node(s)" in resumed.stdout
    rows = _rows(out / "rows.jsonl")
    assert len(rows) == 2 and rows[0] == finished[0], "no point measured twice"
    assert [r["id"] for r in rows] == [r["id"] for r in local.rows]
    for here, there in zip(local.rows, rows):
        assert there["status"] == "ok" and (there["label"], there["settings"]) == (here["label"], here["settings"])
        for name in QUALITY:
            assert there[name] == pytest.approx(here[name], abs=1e-9), name
        assert [i["ssim"] for i in there["items"]] == pytest.approx([i["ssim"] for i in here["items"]], abs=1e-9)
        assert there["speedup_low"] <= here["speedup_high"] and here["speedup_low"] <= there["speedup_high"]
        assert there["host"] and there["device"] == "cpu" and there["device_name"] and there["worker"] == "w0"
    for name in ("sweep.json", "sweep.csv", "pareto.png", "rows.jsonl"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "sweep.json").read_text())
    assert [r["id"] for r in summary["rows"]] == [r["id"] for r in rows]
    assert len(list((out / "front").glob("*.json"))) == len(summary["front"]) >= 1
    assert [g["device_name"] for g in summary["devices"]] == [rows[0]["device_name"]]
    assert summary["devices"][0]["rows"] == [r["id"] for r in rows] and summary["devices"][0]["hosts"]
    assert summary["ray"]["cpus"] == 2 and summary["ray"]["per_worker"]["num_cpus"] == 2
    assert f"on {rows[0]['device_name']} (cpu; {rows[0]['host']}):" in resumed.stdout


def test_a_worker_killed_mid_evaluation_loses_no_row(cluster, tmp_path):
    from optim.distributed import run_sweep_ray

    killed: list[str] = []

    def events(kind: str, info: dict) -> None:
        if kind == "start" and not killed:  # the first evaluation: kill its worker while it loads and measures
            killed.append(info["worker"])
            threading.Timer(3.0, os.kill, (info["pid"], signal.SIGKILL)).start()

    result = run_sweep_ray(load_space(json.dumps(TWO)), PROMPTS, tmp_path, run_spec=parse_run(RUN),
                           point_budget_s=BUDGET_S, workers=1, events=events)
    assert killed == ["w0"]
    assert [row["status"] for row in result.rows] == ["ok", "ok"], [r.get("reason") for r in result.rows]
    first, second = result.rows
    assert first["attempts"] == 2 and "died" in first["retried_because"][0] and first["worker"] == "w0.1"
    assert "attempts" not in second and second["worker"] == "w0.1" and second["worker_reused"]
    assert result.ray["replaced"] == 1
    assert sorted(row["id"] for row in _rows(tmp_path / "rows.jsonl")) == sorted(row["id"] for row in result.rows)
