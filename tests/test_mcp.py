"""The lab as an MCP server (lab/mcp_server.py): `python app.py` in public mode, driven by the official `mcp`
client over Gradio's streamable HTTP transport (/gradio_api/mcp/) and its SSE transport (/gradio_api/mcp/sse).

The tools are the public API endpoints and nothing else; a tool call runs the endpoint's own function, so the
server's limits (optim/limits.py, public mode here) refuse an MCP call exactly as they refuse an API call.
No timing is asserted: the machine may be busy.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import json
import urllib.request
from datetime import timedelta

import pytest
from conftest import app_server
from PIL import Image

from lab.mcp_server import MCP_PATH, mcp_launch_kwargs, mcp_wanted

pytest.importorskip("mcp")

PUBLIC_TOOLS = {"compare", "sweep", "tune", "plan"}
TINY = {"steps": 4, "width": 64, "height": 64, "timed_runs": "1"}
MAX_STEPS = 8  # this server's limit (OPTIM_MAX_STEPS), tighter than public mode's 50
CALL_TIMEOUT = timedelta(seconds=240)  # generous: a comparison on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mcp-server")
    with app_server(folder, OPTIM_PUBLIC="1", OPTIM_MAX_STEPS=str(MAX_STEPS), OPTIM_MCP="1") as (url, _process):
        yield url


def _session(url: str, work, transport: str = "http"):
    """Open an MCP session on the server, run `work(session)` in it, return its result."""
    import httpx
    from mcp import ClientSession
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client

    async def main():
        if transport == "sse":
            streams = sse_client(url.rstrip("/") + MCP_PATH + "sse", timeout=60, sse_read_timeout=300)
        else:
            http = httpx.AsyncClient(timeout=httpx.Timeout(300, connect=30))
            streams = streamable_http_client(url.rstrip("/") + MCP_PATH, http_client=http)
        async with streams as (read, write, *_):
            async with ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT) as session:
                await session.initialize()
                return await work(session)

    return asyncio.run(main())


def _report(result) -> dict:
    """The report a tool returned: Gradio gives a JSON output to MCP as the text of its Python value."""
    text = next(item.text for item in result.content if item.type == "text")
    return ast.literal_eval(text)


def _error_text(result) -> str:
    assert result.isError, result.content
    return " ".join(item.text for item in result.content if item.type == "text")


def test_the_mcp_server_is_on_unless_optim_mcp_turns_it_off():
    assert mcp_wanted({}) and mcp_wanted({"OPTIM_MCP": "1"})
    assert not any(mcp_wanted({"OPTIM_MCP": value}) for value in ("0", "false", "No", "off"))
    assert mcp_launch_kwargs({}) == {"mcp_server": True}  # `mcp` is installed here (requirements.txt)
    assert mcp_launch_kwargs({"OPTIM_MCP": "0"}) == {"mcp_server": False}


def test_the_tools_are_the_public_endpoints_only_on_both_transports(server):
    async def tools(session):
        return {tool.name: tool for tool in (await session.list_tools()).tools}

    listed = _session(server, tools)
    assert set(listed) == PUBLIC_TOOLS  # no private handler of the page is a tool
    assert set(_session(server, tools, transport="sse")) == PUBLIC_TOOLS
    # Gradio's own listing, without a session, agrees.
    with urllib.request.urlopen(server.rstrip("/") + MCP_PATH + "schema", timeout=60) as response:
        assert {tool["name"] for tool in json.load(response)} == PUBLIC_TOOLS
    # What an MCP client is told: the endpoints' docstrings (lab/api.py).
    compare = listed["compare"]
    assert compare.description.startswith("Run the model as a baseline and with a preset's optimizations")
    properties = compare.inputSchema["properties"]
    assert list(properties)[:7] == ["preset", "model", "prompt", "seed", "steps", "width", "height"]
    assert "shipped preset" in properties["preset"]["description"]
    assert not compare.inputSchema.get("required")  # every parameter has a default, as in the API
    assert "floor" in listed["tune"].inputSchema.get("required", [])
    assert "model" in listed["plan"].inputSchema["properties"]


def test_compare_through_mcp_returns_the_report_and_the_images(server):
    progress: list[str] = []

    async def on_progress(_done, _total, message):
        progress.append(message or "")

    async def call(session):
        return await session.call_tool("compare", {"preset": "first-block-cache", **TINY},
                                       progress_callback=on_progress)

    result = _session(server, call)
    assert not result.isError, result.content
    report = _report(result)
    assert report["preset"]["name"] == "first-block-cache"
    assert (report["run"]["steps"], report["run"]["width"], report["run"]["timed_runs"]) == (4, 64, 1)
    assert report["speedup"] > 0 and report["verdict"]  # one timed run: "too few runs" to call it
    assert {"ssim", "max_abs_diff", "psnr_db"} <= set(report["quality"])
    assert report["optimized"]["applied"] == ["cache: first_block_cache (threshold=0.1)"]
    images = [item for item in result.content if item.type == "image"]
    assert len(images) == 3  # baseline, optimized, difference heatmap
    for item in images:
        assert item.mimeType == "image/png"
        with Image.open(io.BytesIO(base64.b64decode(item.data))) as image:
            assert image.format == "PNG" and image.size == (64, 64)
    assert any(message.startswith("Progress") for message in progress), progress


def test_plan_through_mcp_says_what_fits_without_running_anything(server):
    async def call(session):
        return await session.call_tool("plan", {"model": "embedded", "gpu": "h200", "top": 2})

    result = _session(server, call)
    assert not result.isError, result.content
    plan = _report(result)
    assert plan["model"] == "embedded" and plan["card"]["name"] == "h200"
    assert plan["fitting"] > 0 and len(plan["fits"]) == 2 and all(option["fits"] for option in plan["fits"])


def test_the_servers_limits_refuse_an_mcp_call_as_they_refuse_an_api_call(server):
    """The same function behind both: the same checks (optim.limits.check_run in lab.run_panel.execute) and the
    same message, before anything loads."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    too_many = {"preset": "first-block-cache", **TINY, "steps": MAX_STEPS + 1}
    local = {"preset": "baseline", "model": "/tmp", **TINY}  # public mode: no local model folders

    async def calls(session):
        return [await session.call_tool("compare", arguments) for arguments in (too_many, local)]

    steps_refusal, local_refusal = (_error_text(result) for result in _session(server, calls))
    expected = f"run.steps: {MAX_STEPS + 1} is more than this server allows (at most {MAX_STEPS})"
    assert expected in steps_refusal
    client = Client(server, verbose=False)
    for arguments, refusal in ((too_many, steps_refusal), (local, local_refusal)):
        with pytest.raises(AppError) as raised:
            client.predict(**arguments, api_name="/compare")
        assert str(raised.value) and str(raised.value) in refusal
