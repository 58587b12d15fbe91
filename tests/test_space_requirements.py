"""The Space's requirements on ZeroGPU (scripts/space_requirements.py): a torch ZeroGPU supports, and otherwise
exactly requirements.txt."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent

# ZeroGPU's documented versions: https://huggingface.co/docs/hub/spaces-zerogpu, "Supported Versions" (source:
# github.com/huggingface/hub-docs, docs/hub/spaces-zerogpu.md, last changed in 34ee0f0 of 2026-07-21): "Almost all
# versions from 2.8.0 to latest are supported", full list 2.8.0, 2.9.1, 2.10.0, 2.11.0; Python 3.12.12, 3.10.13.
# (Earlier lists stopped at 2.5.1, then 2.8.0; re-read the page when bumping torch.)
ZEROGPU_TORCH_VERSIONS = ("2.8.0", "2.9.1", "2.10.0", "2.11.0")
ZEROGPU_PYTHON_VERSIONS = ("3.12.12", "3.10.13")


def _requirements(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return {Requirement(line).name.lower(): Requirement(line) for line in lines if line and not line.startswith("-")}


def _pinned(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", requirement
    return spec.version


def test_the_zerogpu_space_installs_a_torch_zerogpu_supports():
    space = _requirements(ROOT / "requirements-zerogpu.txt")
    torch = _pinned(space["torch"])
    assert torch in ZEROGPU_TORCH_VERSIONS, f"torch=={torch} is not in ZeroGPU's list {ZEROGPU_TORCH_VERSIONS}"
    # ... and one this project runs on (pyproject's range: the lent GPU machine's 2.11 to CI's 2.13).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_range = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "torch")
    assert torch in torch_range.specifier


def test_the_zerogpu_requirements_are_requirements_txt_with_only_torch_changed():
    space, everywhere = _requirements(ROOT / "requirements-zerogpu.txt"), _requirements(ROOT / "requirements.txt")
    assert set(space) == set(everywhere)
    assert {name: str(r) for name, r in space.items() if name != "torch"} == \
        {name: str(r) for name, r in everywhere.items() if name != "torch"}
    done = subprocess.run([sys.executable, "scripts/space_requirements.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_pinned_package_refuses_the_zerogpu_torch():
    """What the installed (pinned) packages declare about torch admits the ZeroGPU one (torchao 0.18 checks at
    import time instead: it needs torch >= 2.11, docs/GPU.md)."""
    torch = _pinned(_requirements(ROOT / "requirements-zerogpu.txt")["torch"])
    checked = 0
    for name in _requirements(ROOT / "requirements.txt"):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.name == "torch" and not (requirement.marker and "extra" in str(requirement.marker)):
                assert torch in requirement.specifier, f"{name} {dist.version} needs {requirement}"
                checked += 1
    assert checked >= 2  # accelerate, bitsandbytes, optimum-quanto declare one
    assert torch in SpecifierSet(">=2.11")  # torchao 0.18


def test_the_spaces_python_is_one_zerogpu_runs():
    front_matter = (ROOT / "README.md").read_text().split("---", 2)[1]
    match = re.search(r'^python_version:\s*"?([0-9.]+)"?', front_matter, re.MULTILINE)
    if match is None:
        pytest.fail("README front matter sets no python_version")
    assert any(v == match.group(1) or v.startswith(match.group(1) + ".") for v in ZEROGPU_PYTHON_VERSIONS)
