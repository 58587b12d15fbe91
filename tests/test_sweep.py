"""Sweeps and the tuner on the embedded model: every artefact written, nothing lost to a kill (`--resume` does not
redo finished points), the tuner's answer meets its floor and is at least as fast as every other evaluated point
that does, and bad input exits 2 with one line naming the problem. Small settings keep it quick: the speed
figures themselves are not checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optim.config import parse_run
from optim.errors import ConfigError
from optim.presets import preset_from_json
from optim.prompts import parse_prompt_set
from optim.sweep import load_space, parse_floor, run_sweep
from optim.tune import tune

ROOT = Path(__file__).resolve().parent.parent
RUN = {"steps": 6, "width": 64, "height": 64}
PROMPTS = parse_prompt_set("a red circle on a blue background\na large white square on a green background",
                           name="two")
THREE = {"name": "fbc3", "base": {"cache": {"method": "first_block_cache"}},
         "grid": {"cache.threshold": [0.05, 0.2, 0.5]}}


def _cli(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optim", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def test_a_three_point_sweep_writes_every_artefact(tmp_path):
    result = run_sweep(load_space(json.dumps(THREE)), PROMPTS, tmp_path, run_spec=parse_run(RUN),
                       point_budget_s=0.5)
    rows = result.rows
    assert [row["status"] for row in rows] == ["ok"] * 3
    assert [row["label"] for row in rows] == ["first_block_cache threshold=0.05", "first_block_cache threshold=0.2",
                                              "first_block_cache threshold=0.5"]
    for row in rows:
        # An interval from the paired runs (none from fewer than 2 pairs, none of zero width from real timings).
        assert row["speedup_low"] is not None and row["speedup_low"] < row["speedup_high"]
        assert len(row["items"]) == 2 and row["pairs"] >= 4
        # The worst and mean over the prompts are those of the per-prompt figures.
        ssims = [item["ssim"] for item in row["items"]]
        assert 0 < row["ssim_worst"] == min(ssims) and row["ssim_mean"] == pytest.approx(sum(ssims) / 2)
        assert row["adherence"] is not None  # the embedded model's own judge of colours and shape
    # Raising the threshold skips more work (the counted work, not a timing).
    works = [row["work_fraction"] for row in rows]
    assert works[0] >= works[1] >= works[2] and works[2] < 0.9
    assert rows[1]["worker_reused"] and rows[2]["worker_reused"], "cache changes reuse the loaded worker"
    for name in ("sweep.json", "sweep.csv", "pareto.png", "rows.jsonl"):
        assert (tmp_path / name).stat().st_size > 0
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["id"] for r in summary["rows"]] == [r["id"] for r in rows] and summary["front"]
    front = list((tmp_path / "front").glob("*.json"))
    assert len(front) == len(result.front) >= 1
    for path in front:
        assert preset_from_json(path.read_text()).optim.cache.method == "first_block_cache"
    assert (tmp_path / "sweep.csv").read_text().splitlines()[0].startswith("id,label,status,speedup")


def test_a_killed_sweep_resumes_without_redoing_finished_points(tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**THREE, "run": RUN}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS.prompts) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "optim", "sweep", "--space", str(space), "--prompts", str(prompts), "--out",
               str(out), "--point-budget", "0.5", "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "rows.jsonl").exists() and (out / "rows.jsonl").read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    assert 1 <= len(finished) < 3, "killed after the first point, before the last"
    resumed = _cli("sweep", "--space", str(space), "--prompts", str(prompts), "--out", str(out), "--point-budget",
                   "0.5", "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(finished)} from an earlier run)" in resumed.stdout
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 3 and len({row["id"] for row in rows}) == 3, "no point measured twice"
    assert rows[: len(finished)] == finished


def test_the_tuner_returns_the_fastest_point_meeting_the_floor(tmp_path):
    space = load_space(json.dumps({"name": "fbc", "base": {"cache": {"method": "first_block_cache"}},
                                   "ranges": {"cache.threshold": {"low": 0.02, "high": 0.6}}}))
    floor = parse_floor("ssim>=0.97")
    result = tune(space, PROMPTS, [floor], tmp_path, budget_s=300, run_spec=parse_run(RUN), point_budget_s=0.5)
    assert result.strategy == "bisection" and 3 <= result.evaluations <= 6
    ok = [row for row in result.rows if row["status"] == "ok"]
    feasible = [row for row in ok if floor.met(row)]
    assert result.best is not None and floor.met(result.best)
    assert result.best["id"] in {row["id"] for row in feasible}
    assert result.best["speedup"] == max(row["speedup"] for row in feasible)  # max() of none raises
    tuned = preset_from_json((tmp_path / "tuned.json").read_text())
    assert tuned.optim.cache.threshold == pytest.approx(result.best["settings"]["cache"]["threshold"])
    # The bisection closed in on the floor: a tighter threshold met it, the loosest (0.6) did not.
    assert any(not floor.met(row) for row in ok)


@pytest.mark.parametrize(("space", "extra", "message"), [
    ({"grid": {"cache.treshold": [0.1]}}, [], "unknown field 'cache.treshold' (did you mean 'cache.threshold'?)"),
    ({"grid": {"cache.threshold": []}}, [], "give a non-empty list of values"),
    ({"name": "x"}, [], "nothing to vary"),
    ({"grid": {"cache.threshold": [0.1]}, "stride": 2}, [], "unknown key(s) stride"),
    ({"base": {"cache": {"method": "first_block_cache"}}, "grid": {"cache.threshold": [7]}}, [],
     "cache.threshold: 7 is out of range"),
])
def test_bad_spaces_exit_2_with_one_line(tmp_path, space, extra, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    done = _cli("sweep", "--space", str(path), "--out", str(tmp_path / "out"), *extra, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_floor_on_an_unknown_metric_exits_2_with_one_line(tmp_path):
    done = _cli("tune", "--floor", "clip>=0.9", "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2 and "unknown metric 'clip'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_floors_on_every_metric_and_lpips_takes_a_ceiling():
    from optim.sweep import parse_floor

    assert str(parse_floor("ms_ssim >= 0.97")) == "ms_ssim_worst>=0.97"
    assert str(parse_floor("psnr_mean>=40")) == "psnr_mean>=40"
    ceiling = parse_floor("lpips<=0.1")
    assert str(ceiling) == "lpips_worst<=0.1"
    assert ceiling.met({"lpips_worst": 0.05}) and not ceiling.met({"lpips_worst": 0.2})
    assert not ceiling.met({"lpips_worst": None}), "a figure that could not be computed never meets a floor"
    with pytest.raises(ConfigError, match="lpips is a distance .lower is closer.; write lpips<=0.1"):
        parse_floor("lpips>=0.1")
    with pytest.raises(ConfigError, match="write ssim>=0.9"):
        parse_floor("ssim<=0.9")


def test_labels_name_every_varied_setting_even_at_its_default():
    """A grid over MagCache thresholds labels its default point "threshold=0.06", not just "mag_cache"; an explicit
    point names what it sets; the CLI prints labels whole (it used to cut them at 48 characters)."""
    from optim.sweep import expand

    space = load_space(json.dumps({
        "name": "labels", "base": {"cache": {"method": "mag_cache"}}, "grid": {"cache.threshold": [0.04, 0.06]},
        "points": [{"cache": {"method": "taylorseer", "cache_interval": 5}},
                   {"cache": {"method": "taylorseer", "cache_interval": 3, "taylor_factors_dtype": "bfloat16"}}]}))
    labels = [point.label for point in expand(space)]
    assert labels == ["mag_cache threshold=0.04", "mag_cache threshold=0.06", "taylorseer cache_interval=5",
                      "taylorseer cache_interval=3 taylor_factors_dtype=bfloat16"]
    from optim.cli import _label_width, _row_line

    row = {"label": labels[-1], "speedup": 1.5, "speedup_low": 1.4, "speedup_high": 1.6, "verdict": "faster",
           "work_fraction": 0.5, "ssim_worst": 0.99}
    assert labels[-1] in _row_line(row, "*", "ssim_worst", _label_width([row]))


def test_sweep_help_lists_every_shipped_prompt_set():
    from optim.prompts import shipped_prompt_sets

    done = _cli("sweep", "--help", timeout=120)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    names = shipped_prompt_sets()
    assert "quick" in names and [name for name in names if name not in text] == []
