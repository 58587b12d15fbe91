"""A user's mistake, as the page and the API show it: the engine's complete message, never a traceback."""

from __future__ import annotations

import gradio as gr

from lab.text import escape, log


def user_error(error: BaseException | str, *, for_page: bool = True) -> gr.Error:
    """A user's mistake (bad settings, an unknown model, a server limit) as a dialog on the page or an error for an
    API client: the engine's complete message, and one line in the server's log (no traceback: that is kept for
    the app's own bugs)."""
    message = str(error)
    log.info("refused: %s", message)
    return gr.Error(escape(message) if for_page else message, duration=None, print_exception=False)
