"""The tuner over whole stacks (optim/tune_stack.py): each part alone first, then stacks warm-started from those
measurements, then the winner with each part removed; refused combinations never timed; compile cost apart.

The search logic runs against a model of the lab (an evaluator whose speedups and PSNRs follow known rules, with
interference between two parts), so what the tuner must find is known; one run on the embedded model checks the
real path end to end (its speedups are not checked: timings are never gated on here).
"""

from __future__ import annotations

import json
import math

import pytest

from optim.config import OptimConfig, minimal_dict, parse_run
from optim.engine import prepare
from optim.prompts import parse_prompt_set
from optim.sweep import Evaluator, load_space, parse_floor
from optim.tune import tune
from optim.tune_stack import compile_cost

PROMPTS = parse_prompt_set("a red circle on a blue background\na large white square on a green background",
                           name="two")
STACK = {
    "name": "model-stack",
    "stack": {
        "cache": [{"settings": {"cache": {"method": "mag_cache"}}, "ranges": {"cache.threshold": {"low": 0.05,
                                                                                                  "high": 1.0}}},
                  {"settings": {"cache": {"method": "first_block_cache"}},
                   "ranges": {"cache.threshold": {"low": 0.02, "high": 0.4}}}],
        "compile": [{"settings": {"compile": {"mode": "regional"}}}],
        "attention": [{"settings": {"attention": {"backend": "_native_flash"}}}],
    },
}
FLOORS = [parse_floor("psnr_mean>=40"), parse_floor("psnr>=35")]


class ModelEvaluator:
    """Speedups and PSNRs by rule: MagCache 1 + 1.5 t (PSNR 60 - 25 t), FBC 1 + t (PSNR 60 - 50 t), regional compile
    1.2x (with a cache: 1.1x, they interfere), the attention kernel 1.05x, refused together with compile (as compat
    refuses what cannot run: never timed)."""

    def __init__(self) -> None:
        self.run = prepare(parse_run({"steps": 4}), OptimConfig())[1]
        self.timed: list[str] = []
        self.slots = 1

    def evaluate(self, point) -> dict:
        optim = point.optim
        row = {"id": point.id, "label": point.label, "settings": minimal_dict(optim)}
        if optim.attention.backend != "native" and optim.compile.mode != "off":
            return {**row, "status": "refused", "reason": "modelled refusal"}
        self.timed.append(point.label)
        speedup, psnr = 1.0, 90.0
        method = optim.cache.method
        if method == "mag_cache":
            speedup, psnr = 1 + 1.5 * optim.cache.threshold, 60 - 25 * optim.cache.threshold
        elif method == "first_block_cache":
            speedup, psnr = 1 + optim.cache.threshold, 60 - 50 * optim.cache.threshold
        compiled = optim.compile.mode != "off"
        if compiled:
            speedup *= 1.1 if method != "none" else 1.2
        if optim.attention.backend != "native":
            speedup *= 1.05
        return {**row, "status": "ok", "speedup": speedup, "speedup_low": speedup * 0.98,
                "speedup_high": speedup * 1.02, "verdict": "faster" if speedup > 1.02 else "equivalent",
                "psnr_mean": psnr, "psnr_worst": psnr - 2, "ssim_mean": 0.99, "ssim_worst": 0.98,
                "compile_s": 20.0 if compiled else None, "baseline_s": 0.2, "time_s": 0.2 / speedup,
                "work_fraction": 1 / speedup}

    def close(self) -> None:
        pass


def test_the_stack_tuner_finds_the_best_stack_and_each_parts_contribution(tmp_path):
    evaluator = ModelEvaluator()
    result = tune(load_space(json.dumps(STACK)), PROMPTS, FLOORS, tmp_path, budget_s=600, evaluator=evaluator,
                  max_evaluations=60)
    stack = result.stack
    best = result.best
    assert result.strategy.startswith("stack")
    # MagCache's threshold is capped by the mean floor at 0.8 (60 - 25 t >= 40): 2.2x, and with compile 2.42x.
    assert best is not None and all(floor.met(best) for floor in FLOORS)
    assert "mag_cache" in best["label"] and "compile mode=regional" in best["label"]
    assert best["speedup"] > 2.3
    feasible = [row for row in result.rows if row.get("status") == "ok" and all(f.met(row) for f in FLOORS)]
    assert best["speedup"] == max(row["speedup"] for row in feasible)
    # Phase 1: each part alone; its bests are warm starts, and their combination is the first stack tried.
    assert set(stack["best_alone"]) == {"cache", "compile", "attention"}
    alone_cache = stack["best_alone"]["cache"]["label"]
    first_stack = next(row["label"] for row in result.rows if "," in row["label"])
    assert alone_cache in first_stack and "compile" in first_stack and "_native_flash" in first_stack
    # The bests together are reported beside the product of their speedups alone (here refused: flash + compile).
    assert stack["bests_together"]["status"] == "refused" and stack["bests_together"]["alone_product"] > 2.5
    # Refused combinations are never timed.
    assert not any("_native_flash" in label and "compile" in label for label in evaluator.timed)
    refused = [row for row in result.rows if row["status"] == "refused"]
    assert all("speedup" not in row for row in refused)
    # Phase 3: the winner without each part; the shares multiply back to the winner.
    parts = {entry["part"]: entry for entry in stack["contributions"]}
    assert set(parts) == set(stack["winner"]["parts"])
    assert parts["compile"]["share"] == pytest.approx(1.1, rel=1e-6)  # with a cache, compile gives 1.1x
    assert parts["cache"]["share"] == pytest.approx(best["speedup"] / 1.2, rel=1e-6)
    # Measured alone the parts promised more than they give together: interference.
    assert stack["alone_product"] == pytest.approx(best["speedup"] / 1.1 * 1.2, rel=1e-6)
    # The compile is outside the speedup, with the generations that repay it.
    saving = 0.2 - 0.2 / best["speedup"]
    assert stack["compile"] == {"compile_s": 20.0, "saving_per_generation_s": pytest.approx(saving),
                                "generations_to_repay": math.ceil(20.0 / saving)}
    summary = json.loads((tmp_path / "tune.json").read_text())
    assert summary["stack"]["winner"]["id"] == best["id"]
    assert (tmp_path / "tuned.json").is_file()


def test_compile_cost_is_apart_from_the_speedup():
    assert compile_cost({"compile_s": None}) is None
    assert compile_cost({"compile_s": 10.0, "baseline_s": 1.0, "time_s": 0.5})["generations_to_repay"] == 20
    assert compile_cost({"compile_s": 10.0, "baseline_s": 1.0, "time_s": 1.2})["generations_to_repay"] is None


def test_a_combination_compat_refuses_is_never_loaded_or_timed(monkeypatch):
    """The real evaluator: a refused point costs no worker (nothing loaded, nothing timed)."""
    from optim.sweep import point_of

    evaluator = Evaluator(parse_run({"steps": 4}), PROMPTS, [0])
    monkeypatch.setattr(evaluator, "_worker_for", lambda optim: pytest.fail("a refused point was loaded"))
    monkeypatch.setattr(evaluator, "_ensure_baseline", lambda: pytest.fail("a refused point started the baseline"))
    row = evaluator.evaluate(point_of({"attention": {"backend": "flash"}, "cache": {"method": "mag_cache"}},
                                      where="test"))
    assert row["status"] == "refused" and "speedup" not in row


@pytest.mark.parametrize("bad, message", [
    ({"cache": []}, "non-empty list"),
    ({"cache": [{"method": "mag_cache"}]}, "an option is"),
    ({"cache": [{"settings": {"cache": {"method": "mag_cache"}}, "ranges": {"cache.nope": {"low": 0, "high": 1}}}]},
     "unknown field path"),
    ({"cache": [{"settings": {"cache": {"method": "mag_cache"}}, "ranges": {"cache.threshold": {"low": 1,
                                                                                                "high": 0}}}]},
     "L < H"),
])
def test_bad_stacks_are_refused_with_the_fix(bad, message):
    from optim.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_space(json.dumps({"name": "bad", "stack": bad}))


def test_a_stack_space_is_for_the_tuner_not_the_sweep(tmp_path):
    from optim.errors import ConfigError
    from optim.sweep import run_sweep

    with pytest.raises(ConfigError, match="is a stack for the tuner"):
        run_sweep(load_space(json.dumps(STACK)), PROMPTS, tmp_path)


def test_a_real_stack_on_the_embedded_model(tmp_path):
    """End to end on the embedded model (4 steps, two prompts, few evaluations): phases, rows, files."""
    space = load_space(json.dumps({
        "name": "small-stack",
        "stack": {"cache": [{"settings": {"cache": {"method": "first_block_cache"}},
                             "ranges": {"cache.threshold": {"low": 0.05, "high": 0.5}}}],
                  "attention": [{"settings": {"attention": {"backend": "_native_math"}}}]},
    }))
    floor = parse_floor("ssim>=0.5")
    result = tune(space, PROMPTS, [floor], tmp_path, budget_s=600, run_spec=parse_run({"steps": 4}),
                  point_budget_s=0.5, max_evaluations=7)
    assert result.rows and all(row["status"] in ("ok", "refused") for row in result.rows)
    ok = [row for row in result.rows if row["status"] == "ok"]
    assert all({"baseline_s", "time_s", "ms_ssim_worst"} <= set(row) for row in ok)
    if result.best is not None:  # on a busy machine no point may be "faster"; the mechanics are checked anyway
        assert floor.met(result.best)
        assert result.stack["winner"]["id"] == result.best["id"]
        assert {entry["part"] for entry in result.stack["contributions"]} == set(result.stack["winner"]["parts"])
    assert {"sweep.json", "tune.json"} <= {path.name for path in tmp_path.iterdir()}
