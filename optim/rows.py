"""A sweep's rows on disk (OUT/rows.jsonl) and what a row was measured for, so that `--resume` never reuses a row
measured for something else.

A row's identity is everything that decides its measurement besides the point's own settings (which its `id`
hashes): the model and its fingerprint (the embedded and local models' configs and weight files, a tiny build's
configs, a synthetic model's dimensions), the resolved run settings, the prompt set's contents, the seeds, the
lab's and the libraries' versions, and the device it ran on. Each row carries it (`measured_for`, and its hash
`identity`); resuming reuses a row only when both its settings and its identity match, says how many it reused
and why it measures the others again (what changed: "run.steps 20 -> 4"), and moves rows of another identity
out of rows.jsonl into rows.other.jsonl, so one front never mixes two.

    >>> a = {"model": "embedded", "run": {"steps": 20}, "seeds": [0]}
    >>> differences(a, {**a, "run": {"steps": 4}})
    ['run.steps 20 -> 4']
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROWS = "rows.jsonl"
OTHER_ROWS = "rows.other.jsonl"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(ref: Any) -> str:
    """What identifies a model's weights without reading them: its configs and its weight files' names and sizes
    (embedded and local folders), a tiny build's configs, a synthetic model's dimensions, a Hub model's id and the
    commit of its cached snapshot where there is one."""
    if ref.kind == "tiny":
        from optim.families import tiny_fingerprint

        return tiny_fingerprint(ref.name.split(":", 1)[1])
    if ref.kind == "synthetic":
        from optim.synthetic import SYNTHETIC_MODELS

        found = SYNTHETIC_MODELS.get(ref.name.split(":", 1)[1])
        return found.fingerprint() if found is not None else ref.name
    folder = Path(ref.location)
    if folder.is_dir():
        files = []
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                relative = str(path.relative_to(folder))
                text = path.read_text() if path.suffix == ".json" and path.stat().st_size < 1_000_000 else None
                files.append((relative, path.stat().st_size, text))
        return _digest(files)
    return _digest([ref.name, ref.location])


def lab_versions() -> dict[str, str | None]:
    """The versions a measurement depends on: the lab's, torch's, diffusers', transformers' and cache-dit's."""
    from importlib.metadata import PackageNotFoundError, version

    import optim

    out: dict[str, str | None] = {"lab": optim.__version__}
    for package in ("torch", "diffusers", "transformers", "cache-dit"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def measurement_identity(ref: Any, run: Any, prompts: list[str], seeds: list[int], device: str) -> dict[str, Any]:
    """What a row was measured for (everything but the point's settings): see the module docstring."""
    settings = run.to_dict()
    for key in ("prompt", "seed"):  # a sweep replaces them with the prompt set and the seeds
        settings.pop(key, None)
    return {"model": ref.name, "model_fingerprint": model_fingerprint(ref), "run": settings,
            "prompts": {"count": len(prompts), "digest": _digest(list(prompts))}, "seeds": list(seeds),
            "versions": lab_versions(), "device": device}


def identity_key(identity: dict[str, Any], *, any_device: bool = False) -> str:
    """The identity's hash (without the device when rows may come from several: a Ray cluster's)."""
    if any_device:
        identity = {key: value for key, value in identity.items() if key != "device"}
    return _digest(identity)


def differences(old: dict[str, Any] | None, new: dict[str, Any], prefix: str = "") -> list[str]:
    """What changed between two identities, field by field ('run.steps 20 -> 4')."""
    if old is None:
        return ["not recorded (a row from before identities were kept)"]
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {json.dumps(a, default=str)[:40]} -> {json.dumps(b, default=str)[:40]}")
    return out


def read_rows(out: Path) -> list[dict[str, Any]]:
    path = out / ROWS
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill: that point is measured again
    return rows


def append_row(out: Path, row: dict[str, Any]) -> None:
    """Append one finished point's row to OUT/rows.jsonl, flushed and synced (a crash loses no finished point)."""
    with open(out / ROWS, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class Resumed:
    """The rows a resumed run may reuse (by point id), and what it says about the others."""

    rows: dict[str, dict[str, Any]]
    set_aside: int = 0
    lost: int = 0
    reasons: tuple[str, ...] = ()

    @property
    def note(self) -> str:
        parts = [f"reused {len(self.rows)} row(s) measured for these settings"]
        if self.set_aside:
            why = "; ".join(self.reasons[:3])
            parts.append(f"measuring {self.set_aside} again: they were measured for something else ({why}); "
                         f"they are kept in {OTHER_ROWS}")
        if self.lost:
            parts.append(f"measuring {self.lost} again: their workers were lost")
        return ", ".join(parts)


def resume_rows(out: Path, identity: dict[str, Any], *, resume: bool, any_device: bool = False) -> Resumed:
    """Start a sweep's or a tune's rows.jsonl: a fresh run empties it; a resumed one keeps the rows measured for
    `identity` (not lost), moves the others to rows.other.jsonl, and says so."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ROWS
    if not resume:
        if path.exists():
            path.unlink()
        return Resumed({})
    key = identity_key(identity, any_device=any_device)
    keep, other, reasons, lost, mine = [], [], [], 0, []
    for row in read_rows(out):
        row_key = identity_key(row["measured_for"], any_device=any_device) if row.get("measured_for") else None
        if row_key != key:
            other.append(row)
            for reason in differences(row.get("measured_for"), identity):
                if reason not in reasons and not (any_device and reason.startswith("device ")):
                    reasons.append(reason)
        else:
            mine.append(row)  # this identity's rows stay in rows.jsonl, lost ones too (their retry follows them)
            if row.get("lost"):
                lost += 1
            else:
                keep.append(row)
    if other:
        with open(out / OTHER_ROWS, "a") as handle:
            for row in other:
                handle.write(json.dumps(row) + "\n")
        temporary = path.with_suffix(".tmp")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in mine))
        temporary.replace(path)
    return Resumed({row["id"]: row for row in keep}, set_aside=len(other), lost=lost, reasons=tuple(reasons))
