"""The lab as an MCP server: Gradio's own (`demo.launch(mcp_server=True)`), on by default.

    OPTIM_MCP=0         no MCP server (also "false", "no", "off"); anything else, or unset: on

What an MCP client sees (Gradio 6.31, `gradio/mcp.py`):

* Transports: streamable HTTP at `/gradio_api/mcp/` (what current clients use) and SSE at `/gradio_api/mcp/sse`;
  `/gradio_api/mcp/schema` lists the tools as JSON without a session.
* Tools: exactly the public API endpoints (`compare`, `sweep`, `tune`, `plan`: `lab/api.py`). Gradio makes a tool
  of every endpoint in `Blocks.get_api_info()`, which leaves out events with `api_visibility="private"` (every
  event of the page), so nothing private becomes a tool. A tool's description and its parameters' come from the
  endpoint function's docstring (its "Parameters:" and "Returns:" sections).
* A tool call goes through gradio_client to the same endpoint, in the same queue slot as the Run button: the same
  function, the same checks (`lab.run_panel.execute`: the server's limits, `optim.limits`), the same messages.

Gradio names a tool after the endpoint function's `__name__`, not its `api_name`; `name_tools_after_endpoints`
makes the two agree, so the tools are named as the API's endpoints are (`tune`, not the function's `tune_api`).

The `mcp` package (what `gradio[mcp]` adds) is pinned in requirements.txt on its own rather than through the
extra: `gradio[mcp]` 6.31 also caps pydantic at 2.12.5, which would downgrade the project's pydantic. Without
the package the app serves without MCP and says so in its log.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Mapping

MCP_ENV = "OPTIM_MCP"
OFF_VALUES = ("0", "false", "no", "off")
MCP_PATH = "/gradio_api/mcp/"  # streamable HTTP; SSE at /gradio_api/mcp/sse

log = logging.getLogger(__name__)


def mcp_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """On unless OPTIM_MCP turns it off."""
    env = os.environ if environ is None else environ
    return env.get(MCP_ENV, "").strip().lower() not in OFF_VALUES


def mcp_missing() -> str | None:
    """Why the MCP server cannot start here (its package is not installed), or None."""
    if importlib.util.find_spec("mcp") is None:
        return "the `mcp` package is not installed (pip install -r requirements.txt)"
    return None


def mcp_launch_kwargs(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`demo.launch` arguments for the MCP server: on by default, off with OPTIM_MCP=0 or without `mcp`."""
    if not mcp_wanted(environ):
        return {"mcp_server": False}
    missing = mcp_missing()
    if missing:
        log.warning("MCP server off: %s", missing)
        return {"mcp_server": False}
    return {"mcp_server": True}


def name_tools_after_endpoints(demo: Any) -> list[str]:
    """Give each public endpoint's function its endpoint's name (Gradio names an MCP tool after the function);
    returns the public endpoints' names, which are then the tools'."""
    names = []
    for block_fn in demo.fns.values():
        if block_fn.fn is None or not block_fn.api_name or block_fn.api_visibility != "public":
            continue
        if getattr(block_fn.fn, "__name__", None) != block_fn.api_name:
            block_fn.fn.__name__ = block_fn.api_name
        names.append(block_fn.api_name)
    return sorted(names)
