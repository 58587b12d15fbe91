"""The public `compare` endpoint, called the way users script it: gradio_client against `python app.py`."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST_RUN, app_server
from PIL import Image


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    with app_server(folder) as (url, _process):
        yield url, folder / "app.log"


@pytest.fixture(scope="module")
def server_url(server):
    return server[0]


@pytest.fixture(scope="module")
def client(server_url):
    from gradio_client import Client

    return Client(server_url, verbose=False)


def test_only_compare_sweep_tune_and_plan_are_public(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert sorted(endpoints) == ["/compare", "/plan", "/sweep", "/tune"]
    names = [p["parameter_name"] for p in endpoints["/compare"]["parameters"]]
    assert names[:7] == ["preset", "model", "prompt", "seed", "steps", "width", "height"]


def test_compare_takes_the_preset_alone_and_fills_the_rest_with_defaults(client):
    """Every parameter but the preset is optional (the embedded model and its own run settings)."""
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/compare"]
    optional = {p["parameter_name"]: p["parameter_has_default"] for p in endpoint["parameters"]}
    assert all(optional.values()), optional
    report, *_ = client.predict("first-block-cache", api_name="/compare")
    assert report["run"]["model"] == "embedded" and report["run"]["steps"] == 20 and report["run"]["width"] == 128
    assert report["run"]["timed_runs"] == "auto" and report["optimized"]["applied"][0].startswith("cache: first_block")
    assert report["timing"]["auto"] and report["verdict"] in ("faster", "slower", "equivalent", "inconclusive")


def test_compare_returns_the_full_report_and_lossless_images(client):
    report, baseline, optimized, diff = client.predict(
        "first-block-cache", "embedded", "a green triangle on a white background", 3,
        FAST_RUN["steps"], 128, 128, None, FAST_RUN["timed_runs"], api_name="/compare",
    )
    assert report["preset"]["name"] == "first-block-cache"
    assert report["run"]["prompt"] == "a green triangle on a white background"
    assert (report["run"]["seed"], report["run"]["steps"], report["run"]["width"]) == (3, FAST_RUN["steps"], 128)
    assert report["speedup"] > 0 and "memory_saving_mb" in report
    for side in ("baseline", "optimized"):
        data = report[side]
        assert data["latency_s"]["median"] > 0 and len(data["per_step_s"]) == FAST_RUN["steps"]
        assert data["peak_memory_mb"] is not None and data["load_s"] > 0
    assert report["optimized"]["applied"] == ["cache: first_block_cache (threshold=0.1)"]
    quality = report["quality"]
    assert set(quality) >= {"psnr_db", "ssim", "max_abs_diff", "mean_abs_diff", "heatmap_scale"}
    images = {}
    for name, path in (("baseline", baseline), ("optimized", optimized), ("diff", diff)):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (128, 128)
            images[name] = np.asarray(image.convert("RGB")).astype(int)
    # Lossless: the difference computed from the returned images is the report's.
    assert np.abs(images["baseline"] - images["optimized"]).max() == quality["max_abs_diff"]


def test_a_bad_request_gets_the_engines_message_and_the_server_logs_one_line(client, server):
    """A user's mistake is not a server error: the client gets the engine's message; the server's terminal gets
    one line per mistake, no traceback (issue: every bad input printed a full Python traceback)."""
    from gradio_client.exceptions import AppError

    log = server[1]
    before = log.read_text()
    with pytest.raises(AppError, match="threshold"):
        client.predict('{"schema_version": 1, "name": "x", "optim": {"cache": {"method": "first_block_cache", '
                       '"threshold": 7}}}', "embedded", "", 0, 4, 128, 128, None, 1, api_name="/compare")
    with pytest.raises(AppError, match="more than this server allows"):
        client.predict("baseline", "embedded", "", 0, 450, 128, 128, None, 1, api_name="/compare")
    with pytest.raises(AppError, match="0 is out of range"):
        client.predict("baseline", "embedded", "", 0, 0, 128, 128, None, 1, api_name="/compare")
    with pytest.raises(AppError, match="77 is not a multiple of 16; use 64 or 80"):
        client.predict("baseline", "embedded", "", 0, 4, 77, 128, None, 1, api_name="/compare")
    new = log.read_text()[len(before):]
    assert "Traceback" not in new, new
    refused = [line for line in new.splitlines() if "refused:" in line]
    assert len(refused) == 4, new


def test_a_stopped_server_deletes_its_files(tmp_path):
    """SIGTERM (a Space restarting, `docker stop`) exits cleanly: the report folder goes with the server."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with app_server(tmp_path, TMPDIR=str(scratch)) as (_url, process):
        assert list(scratch.glob("optim-lab-*")), "the server keeps its report files under TMPDIR"
    assert process.returncode == 0
    assert not list(scratch.glob("optim-lab-*"))


def test_the_sweep_endpoint_returns_every_row_and_the_front(client):
    space = ('{"name": "api", "base": {"cache": {"method": "first_block_cache"}}, "grid": {"cache.threshold": [0.1, 0.4]}, '
             '"run": {"time_budget_s": 1}}')
    result = client.predict(space, "a red circle on a blue background", "embedded", 4, "0", "ssim_worst",
                            api_name="/sweep")
    assert [row["status"] for row in result["rows"]] == ["ok", "ok"]
    assert result["front"] and {row["id"] for row in result["rows"]} >= set(result["front"])
    assert result["prompts"]["prompts"] == ["a red circle on a blue background"]


def test_the_sweep_endpoint_refuses_a_bad_space_with_its_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="unknown field 'cache.treshold'"):
        client.predict('{"grid": {"cache.treshold": [0.1]}}', "", "embedded", 4, "0", "ssim_worst",
                       api_name="/sweep")


def test_the_plan_endpoint_says_what_fits_a_card_before_anything_runs(client):
    """FLUX.1-dev on a 24 GB card, from its published configs: as loaded in bf16 it does not fit, NF4 does."""
    plan = client.predict("black-forest-labs/FLUX.1-dev", "rtx-4090", None, None, None, None, 50, api_name="/plan")
    assert plan["card"]["name"] == "rtx-4090" and plan["run"]["width"] == 1024
    assert 0 < plan["fitting"] < plan["combinations"] and len(plan["fits"]) == 50
    assert all(option["fits"] and option["need_gib"] <= 23.99 for option in plan["fits"])
    assert not any(option["fits"] for option in plan["closest_not_fitting"])
    labels = [option["label"] for option in plan["fits"]]
    assert "weights in bfloat16, no offload" not in labels
    assert any(label.startswith("bitsandbytes NF4 (transformer, text_encoder_2)") for label in labels)
    with pytest.raises(Exception, match="give a size"):
        client.predict("embedded", "a toaster", None, None, None, None, 5, api_name="/plan")
