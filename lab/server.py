"""Start the app: make the server's context, build the page, start the worker processes, serve.

    python app.py          # or: optim-lab (the console script)

GRADIO_SERVER_NAME and GRADIO_SERVER_PORT choose where it listens (0.0.0.0:7860 by default). The public API
(compare, sweep, tune, plan) is also an MCP server at /gradio_api/mcp/ (streamable HTTP; SSE at /gradio_api/mcp/sse),
on by default; OPTIM_MCP=0 turns it off (`lab.mcp_server`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from optim.logs import quiet_libraries
from optim.machine import steady_threads


def log_to_terminal() -> None:
    """The app's own log lines (a user's refused input: one line; a bug: its traceback) on stderr; the engine's
    (workers, baseline reuse, refusals before loading) only from OPTIM_LOG_LEVEL=INFO on (`optim.logs`)."""
    from optim.logs import show_lab_logs

    show_lab_logs()
    logging.getLogger("optim.app").setLevel(logging.INFO)


def announce_port(port: int) -> None:
    """Tell the workers which port the page is served on: a browser on this machine connected to it is the lab's
    own page, and its CPU time is not counted as contention (`optim.machine.Neighbours`)."""
    from optim.machine import LAB_PORT_ENV

    os.environ[LAB_PORT_ENV] = str(port)


def main() -> None:
    steady_threads()
    quiet_libraries()
    log_to_terminal()
    from lab.context import ServerContext
    from lab.layout import LAUNCH_KWARGS, build_demo
    from lab.mcp_server import mcp_launch_kwargs, name_tools_after_endpoints
    from optim.launch import launcher

    ctx = ServerContext.create(spaces=sys.modules.get("spaces"))
    if ctx.zero_gpu:
        ctx.gpu_runner  # noqa: B018 - ZeroGPU wants its GPU function declared before the server starts
    else:
        launcher.prestart()  # spare worker processes import torch while the page loads
    demo = build_demo(ctx)
    mcp = mcp_launch_kwargs()
    if mcp["mcp_server"]:
        name_tools_after_endpoints(demo)  # the MCP tools are named as the API's endpoints are
    # A stop request (SIGTERM: a Space restarting, `docker stop`, a test) exits like Ctrl-C does, so the cleanup
    # below runs: this server's report folder, the worker processes.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    announce_port(int(os.environ.get("GRADIO_SERVER_PORT") or 7860))
    try:
        # server_port=None: Gradio reads GRADIO_SERVER_PORT, else 7860.
        demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), **LAUNCH_KWARGS, **mcp)
    finally:
        ctx.close()
        launcher.stop()


if __name__ == "__main__":
    main()
