"""The Space's requirements on ZeroGPU: requirements.txt with a torch that ZeroGPU supports.

A Space installs the requirements.txt at its root. requirements.txt pins torch==2.13.0 (the build CI and CPU
Spaces install), which ZeroGPU does not list among its supported versions: a ZeroGPU Space must install one it
does (https://huggingface.co/docs/hub/spaces-zerogpu, "Supported Versions"). The newest listed that this project
runs on (pyproject's torch range, docs/GPU.md) is 2.11.0, so requirements-zerogpu.txt is requirements.txt with
torch==2.11.0 and nothing else changed; tests/test_space_requirements.py checks both.

    python scripts/space_requirements.py            # (re)write requirements-zerogpu.txt from requirements.txt
    python scripts/space_requirements.py --check    # exit 1 if requirements-zerogpu.txt is out of date

Deploying on ZeroGPU: push a commit whose requirements.txt is requirements-zerogpu.txt, e.g.

    git switch -c zerogpu && cp requirements-zerogpu.txt requirements.txt && git commit -am "ZeroGPU: torch 2.11.0"
    git push https://huggingface.co/spaces/USER/NAME zerogpu:main
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements.txt"
ZEROGPU_REQUIREMENTS = ROOT / "requirements-zerogpu.txt"
ZEROGPU_TORCH = "2.11.0"  # in ZeroGPU's list (2.8.0, 2.9.1, 2.10.0, 2.11.0) and in pyproject's range (>=2.11)
TORCH_PIN = re.compile(r"^torch\s*==\s*[^\s#;]+", re.MULTILINE)
HEADER = f"""\
# ZeroGPU Space requirements: requirements.txt with torch=={ZEROGPU_TORCH}, a version ZeroGPU supports
# (https://huggingface.co/docs/hub/spaces-zerogpu). Written by scripts/space_requirements.py: do not edit; on a
# ZeroGPU Space, use this file as the Space's requirements.txt.
"""


def zerogpu_requirements(text: str, torch: str = ZEROGPU_TORCH) -> str:
    """requirements.txt's text with its torch pin replaced by `torch`, under a header saying so."""
    if len(TORCH_PIN.findall(text)) != 1:
        raise SystemExit("requirements.txt must pin torch exactly once (torch==X.Y.Z)")
    return HEADER + TORCH_PIN.sub(f"torch=={torch}", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if requirements-zerogpu.txt is out of date")
    args = parser.parse_args(argv)
    wanted = zerogpu_requirements(REQUIREMENTS.read_text())
    if args.check:
        current = ZEROGPU_REQUIREMENTS.read_text() if ZEROGPU_REQUIREMENTS.is_file() else ""
        if current != wanted:
            print(f"{ZEROGPU_REQUIREMENTS.name} is out of date: run python scripts/space_requirements.py",
                  file=sys.stderr)
            return 1
        return 0
    ZEROGPU_REQUIREMENTS.write_text(wanted)
    print(f"wrote {ZEROGPU_REQUIREMENTS.name} (torch=={ZEROGPU_TORCH})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
