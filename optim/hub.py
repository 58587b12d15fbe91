"""Is the Hugging Face Hub reachable? Answered in seconds, before anything asks it for files.

huggingface_hub retries a failed request five times with backoff (1, 2, 4, 8, 8 s): a machine without network
took 23-32 s to say a model cannot be loaded, printing a retry line each time. So before the first download we
check, once and quickly, that the Hub's host resolves and accepts a connection; if not, the model is refused
at once with one line. The check is remembered for a minute. HF_HUB_OFFLINE=1 means offline without asking.

    >>> hub_unreachable_reason() is None or "Hub" in hub_unreachable_reason()   # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import socket
import threading
import time
from urllib.parse import urlparse

CHECK_TIMEOUT_S = 3.0
REMEMBER_S = 60.0
_lock = threading.Lock()
_last: tuple[float, str | None] | None = None


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


def hub_unreachable_reason() -> str | None:
    """None if the Hub answers; else why not, in a few words (offline by setting, no DNS, no connection)."""
    global _last
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    with _lock:
        if _last is not None and time.monotonic() - _last[0] < REMEMBER_S:
            return _last[1]
        reason = _check()
        _last = (time.monotonic(), reason)
        return reason


def _check() -> str | None:
    host, port = _endpoint()
    result: list[str | None] = []

    def probe() -> None:
        try:
            address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
            with socket.create_connection(address[:2], timeout=CHECK_TIMEOUT_S):
                pass
            result.append(None)
        except socket.gaierror:
            result.append(f"{host} does not resolve (no network or DNS)")
        except OSError as error:
            result.append(f"{host}:{port} does not answer ({type(error).__name__})")

    # A resolver can hang far longer than any timeout we set on the socket: wait for it in a thread.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(2 * CHECK_TIMEOUT_S)
    if not result:
        return f"{host} did not answer within {2 * CHECK_TIMEOUT_S:.0f} s"
    return result[0]
