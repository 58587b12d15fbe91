"""Share links: the preset and the run settings carried in the URL itself (durable: no server-side snapshot).

A token is base64url(zlib(compact JSON)). Decoding treats it as hostile: length-limited before anything else,
decompressed with a cap (no zip bombs), parsed as plain JSON, and validated like any preset.

    >>> token = encode_share(load_preset("first-block-cache"), RunSpec(seed=7))
    >>> preset, run = decode_share(token)
    >>> preset.name, run.seed
    ('first-block-cache', 7)
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from optim.config import RunSpec, minimal_dict, parse_run
from optim.errors import ConfigError
from optim.presets import MAX_PRESET_BYTES, Preset, load_json, parse_preset, preset_to_dict

SHARE_VERSION = 1
QUERY_PARAMETER = "s"
# Browsers and proxies cope with URLs of a few thousand characters; a real token is a few hundred.
MAX_TOKEN_CHARS = 4096


def encode_share(preset: Preset, run: RunSpec) -> str:
    payload = {"v": SHARE_VERSION, "preset": preset_to_dict(preset), "run": minimal_dict(run)}
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(zlib.compress(text, 9)).decode().rstrip("=")


def decode_share(token: Any, *, max_chars: int = MAX_TOKEN_CHARS) -> tuple[Preset, RunSpec]:
    """The preset and run settings of a share token, or a `ConfigError` saying what is wrong with the link."""
    if not isinstance(token, str):
        raise ConfigError("share link: the token must be text")
    token = token.strip()
    if not token:
        raise ConfigError("share link: the token is empty")
    if len(token) > max_chars:
        raise ConfigError(f"share link: {len(token)} characters is too long (at most {max_chars})")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise ConfigError("share link: the token is not valid base64url; was the link cut short?") from None
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, MAX_PRESET_BYTES + 1)
    except zlib.error:
        raise ConfigError(
            "share link: the token is damaged (cannot be decompressed); was the link cut short?"
        ) from None
    if len(text) > MAX_PRESET_BYTES or inflater.unconsumed_tail:
        raise ConfigError(f"share link: the settings are larger than {MAX_PRESET_BYTES} bytes")
    data = load_json(text, where="share link", max_bytes=MAX_PRESET_BYTES)
    if not isinstance(data, dict):
        raise ConfigError("share link: expected a JSON object")
    unknown = set(data) - {"v", "preset", "run"}
    if unknown:
        raise ConfigError(
            f"share link: unknown field(s) {', '.join(sorted(map(str, unknown)))}; allowed: v, preset, run"
        )
    if data.get("v") != SHARE_VERSION:
        raise ConfigError(f"share link: version {data.get('v')!r} is not supported (this app reads {SHARE_VERSION})")
    preset = parse_preset(data.get("preset"), where="share link preset")
    run = parse_run(data.get("run", {}), where="share link run")
    return preset, run
