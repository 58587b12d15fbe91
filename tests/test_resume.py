"""Sweeps and tunes never reuse a wrong row (optim/rows.py): a row's identity is everything its measurement
depended on besides its settings; --resume reuses only rows of the same identity, says why it measures the
others again, keeps them apart, and measures lost rows again. And a tune never stops on one bad combination.

Most checks use the real identity with a model of the evaluator (cheap, exact); one resumes a real sweep with
changed run settings through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optim.config import minimal_dict, parse_run
from optim.prompts import parse_prompt_set
from optim.rows import OTHER_ROWS, ROWS, append_row, differences, identity_key, read_rows, resume_rows
from optim.sweep import identity_for, load_space, parse_floor, point_of
from optim.tune import tune

ROOT = Path(__file__).resolve().parent.parent
RUN = {"steps": 4, "width": 64, "height": 64}
PROMPTS = parse_prompt_set("a red circle on a blue background\na large white square on a green background",
                           name="two")


def _row(settings: dict, identity: dict, **extra) -> dict:
    point = point_of(settings, where="test")
    return {"id": point.id, "label": point.label, "settings": settings, "status": "ok", "speedup": 1.5,
            "identity": identity_key(identity), "measured_for": identity, **extra}


@pytest.mark.parametrize("change, expected", [
    ({"run": {**RUN, "steps": 6}}, "run.steps 4 -> 6"),
    ({"prompts": parse_prompt_set("a red circle on a blue background", name="one")}, "prompts.count 2 -> 1"),
    ({"seeds": [0, 1]}, "seeds [0] -> [0, 1]"),
    ({"run": {**RUN, "model": "tiny:flux"}}, "model \"embedded\" -> \"tiny:flux\""),
])
def test_resume_remeasures_rows_of_other_run_settings_prompts_seeds_or_model(tmp_path, change, expected):
    identity = identity_for(parse_run(RUN), PROMPTS, [0])
    append_row(tmp_path, _row({"cache": {"method": "mag_cache"}}, identity))
    new = identity_for(parse_run(change.get("run", RUN)), change.get("prompts", PROMPTS), change.get("seeds", [0]))
    resumed = resume_rows(tmp_path, new, resume=True)
    assert resumed.rows == {} and resumed.set_aside == 1
    assert expected in resumed.note, resumed.note
    # The other identity's row is kept apart, not lost, and no longer in rows.jsonl.
    assert read_rows(tmp_path) == []
    assert len((tmp_path / OTHER_ROWS).read_text().splitlines()) == 1


def test_resume_reuses_rows_of_the_same_identity_and_says_so(tmp_path):
    identity = identity_for(parse_run(RUN), PROMPTS, [0])
    append_row(tmp_path, _row({"cache": {"method": "mag_cache"}}, identity))
    append_row(tmp_path, _row({"cache": {"method": "first_block_cache"}}, identity, lost=True))
    append_row(tmp_path, _row({"cache": {"method": "taylorseer"}}, {**identity, "seeds": [7]}))
    resumed = resume_rows(tmp_path, identity, resume=True)
    assert len(resumed.rows) == 1 and resumed.lost == 1 and resumed.set_aside == 1
    assert "reused 1 row(s)" in resumed.note and "workers were lost" in resumed.note and "seeds" in resumed.note
    # The lost row stays in rows.jsonl (its retry is appended after it); the other identity's moved out.
    assert len(read_rows(tmp_path)) == 2


def test_identity_covers_the_model_fingerprint_versions_and_device(tmp_path):
    identity = identity_for(parse_run(RUN), PROMPTS, [0])
    assert identity["model_fingerprint"] and identity["versions"]["torch"] and identity["device"].startswith("cpu")
    assert identity["versions"]["lab"]
    other = {**identity, "model_fingerprint": "something else", "versions": {**identity["versions"], "torch": "9"}}
    assert differences(identity, other) == [
        f"model_fingerprint {json.dumps(identity['model_fingerprint'])} -> \"something else\"",
        f"versions.torch {json.dumps(identity['versions']['torch'])} -> \"9\""]
    # Rows from a cluster's devices are compared without the device (their fronts are per device).
    moved = {**identity, "device": "cuda: NVIDIA H200"}
    assert identity_key(moved) != identity_key(identity)
    assert identity_key(moved, any_device=True) == identity_key(identity, any_device=True)
    # A row from before identities were kept is measured again.
    append_row(tmp_path, {"id": "abc", "status": "ok"})
    resumed = resume_rows(tmp_path, identity, resume=True)
    assert resumed.set_aside == 1 and "not recorded" in resumed.note


class ThresholdModel:
    """A model of the lab for the tuner: quality 1 - t (falls as the threshold rises), speedup 1 + t; with the floor
    quality >= 0.835 the optimum is t = 0.165. `calls` lists what was evaluated."""

    def __init__(self, identity: dict, quality=lambda t: 1 - t, speedup=lambda t: 1 + t) -> None:
        self.run = None
        self.identity = identity
        self.quality, self.speedup = quality, speedup
        self.calls: list[float] = []

    def evaluate(self, point) -> dict:
        t = point.optim.cache.threshold
        self.calls.append(t)
        return {**_row(minimal_dict(point.optim), self.identity), "speedup": self.speedup(t), "speedup_low": self.speedup(t) * 0.99,
                "speedup_high": self.speedup(t) * 1.01, "verdict": "faster", "ssim_worst": self.quality(t),
                "work_fraction": 1 / self.speedup(t), "psnr_mean": 40.0}

    def close(self) -> None:
        pass


FBC = {"name": "fbc", "base": {"cache": {"method": "first_block_cache"}},
       "ranges": {"cache.threshold": {"low": 0.02, "high": 0.6}}}


def _tune(tmp_path, evaluator, space=FBC, **kwargs):
    from optim.config import OptimConfig
    from optim.engine import prepare

    evaluator.run = prepare(parse_run(RUN), OptimConfig())[1]
    return tune(load_space(json.dumps(space)), PROMPTS, [parse_floor("ssim>=0.835")], tmp_path, budget_s=600,
                run_spec=parse_run(RUN), evaluator=evaluator, **kwargs)


def test_bisection_finds_the_known_optimum(tmp_path):
    """Fails if the bisection's direction is inverted (it would keep 0.02), its bracket is off (the answer is
    within (0.6 - 0.02) / 2**4 of 0.165, below it), or it stops early."""
    model = ThresholdModel(identity_for(parse_run(RUN), PROMPTS, [0]))
    result = _tune(tmp_path, model)
    assert result.strategy == "bisection"
    best = result.best["settings"]["cache"]["threshold"]
    assert 0.165 - (0.6 - 0.02) / 2**4 <= best <= 0.165, (best, model.calls)
    assert model.calls[:2] == [0.02, 0.6]


def test_a_setting_that_is_not_monotone_gets_the_search_not_bisection(tmp_path):
    """A range over a field without "faster when higher" (MagCache's retention ratio): Optuna, and the answer is
    the feasible peak, which bisection (assuming monotone) would miss."""
    space = {"name": "mag", "base": {"cache": {"method": "mag_cache", "threshold": 0.3}},
             "ranges": {"cache.retention_ratio": {"low": 0.0, "high": 0.8}}}

    class Peak(ThresholdModel):
        def evaluate(self, point) -> dict:
            r = point.optim.cache.retention_ratio
            self.calls.append(r)
            speedup = 2.0 - abs(r - 0.4) * 2  # fastest at 0.4
            return {**_row(minimal_dict(point.optim), self.identity),
                    "speedup": speedup, "speedup_low": speedup * 0.99, "speedup_high": speedup * 1.01,
                    "verdict": "faster", "ssim_worst": 0.9, "work_fraction": 0.5}

    model = Peak(identity_for(parse_run(RUN), PROMPTS, [0]))
    result = _tune(tmp_path, model, space=space, max_evaluations=40)
    assert result.strategy == "optuna-tpe"
    assert abs(result.best["settings"]["cache"]["retention_ratio"] - 0.4) < 0.1


def test_a_bad_combination_is_skipped_with_its_reason_not_the_end_of_the_tune(tmp_path):
    """TaylorSeer has no `threshold`: its combination is a refused row; the tune goes on and writes tune.json."""
    space = {"name": "mixed", "grid": {"cache.method": ["taylorseer", "first_block_cache"]},
             "ranges": {"cache.threshold": {"low": 0.02, "high": 0.6}}}
    model = ThresholdModel(identity_for(parse_run(RUN), PROMPTS, [0]))
    result = _tune(tmp_path, model, space=space)
    refused = [row for row in result.rows if row["status"] == "refused"]
    assert refused and "threshold" in refused[0]["reason"]
    assert result.best is not None and (tmp_path / "tune.json").is_file()
    assert "worst prompt" in (tmp_path / "tuned.json").read_text()


def test_a_grid_only_tune_is_labelled_grid(tmp_path):
    model = ThresholdModel(identity_for(parse_run(RUN), PROMPTS, [0]))
    space = {"name": "g", "base": {"cache": {"method": "first_block_cache"}}, "grid": {"cache.threshold": [0.1, 0.2]}}
    assert _tune(tmp_path, model, space=space).strategy == "grid"


def test_a_resumed_tune_evaluates_lost_rows_again_and_reuses_the_rest(tmp_path):
    identity = identity_for(parse_run(RUN), PROMPTS, [0])
    first = ThresholdModel(identity)
    _tune(tmp_path, first)
    rows = read_rows(tmp_path)
    # As a Ray worker lost on every try leaves it: the first evaluated point marked lost.
    rows[0]["lost"] = True
    (tmp_path / ROWS).write_text("".join(json.dumps(row) + "\n" for row in rows))
    again = ThresholdModel(identity)
    result = _tune(tmp_path, again, resume=True)
    assert again.calls == [first.calls[0]], "only the lost row is evaluated again"
    assert "reused" in result.resume_note and "lost" in result.resume_note
    # With other run settings nothing is reused.
    third = ThresholdModel(identity_for(parse_run({**RUN, "steps": 5}), PROMPTS, [0]))
    from optim.config import OptimConfig
    from optim.engine import prepare

    third.run = prepare(parse_run({**RUN, "steps": 5}), OptimConfig())[1]
    result = tune(load_space(json.dumps(FBC)), PROMPTS, [parse_floor("ssim>=0.835")], tmp_path, budget_s=600,
                  run_spec=parse_run({**RUN, "steps": 5}), evaluator=third, resume=True)
    assert third.calls[:2] == [0.02, 0.6] and "run.steps 4 -> 5" in result.resume_note


def test_a_real_sweep_resumed_with_other_run_settings_measures_again(tmp_path):
    """Through the CLI: a one-point sweep at 2 steps, resumed at 3 steps, reuses nothing and says why."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"name": "one", "points": [{"cache": {"method": "first_block_cache",
                                                                     "threshold": 0.2}}]}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS.prompts[0] + "\n")
    out = tmp_path / "out"

    def sweep(steps: int, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "optim", "sweep", "--space", str(space), "--prompts",
                               str(prompts), "--out", str(out), "--steps", str(steps), "--width", "64", "--height",
                               "64", "--point-budget", "0.5", "--quiet", *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env=os.environ.copy())

    assert sweep(2).returncode == 0
    same = sweep(2, "--resume")
    assert same.returncode == 0 and "reused 2 row(s)" in same.stdout, same.stdout
    changed = sweep(3, "--resume")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "reused 0 row(s)" in changed.stdout and "run.steps 2 -> 3" in changed.stdout, changed.stdout
    rows = read_rows(out)
    assert {row["measured_for"]["run"]["steps"] for row in rows} == {3}, "one front, one identity"
