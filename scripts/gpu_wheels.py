"""Fetch the wheels the GPU check needs into .whl/ (run here, where pip reaches the package index).

    scripts/gpu-wheels                  # or: python scripts/gpu_wheels.py [--dest .whl] [--dry-run]

The lent GPU machine has no network and its own Python 3.12 stack (torch 2.11 with CUDA 13, transformers,
accelerate, huggingface_hub, numpy, pillow, scikit-image, matplotlib, psutil, pytest ...) but not what the lab's
engine needs beyond that. This fetches exactly those packages as Python 3.12 / manylinux x86-64 wheels, with no
dependencies pulled in (the list below is complete for `optim`'s imports and a comparison on that stack), trims
bitsandbytes to its CUDA 13 and CPU libraries (its wheel carries one library per CUDA version, 41 MiB in all),
and prints what it fetched and the total. `scripts/gpu-check` installs them there without network.

Versions come from the project's own requirement files: an exact pin (`diffusers==0.42.1`) is used as it is; a
range (`pydantic>=2.10,<3`) or a package the files do not name (pydantic's own dependencies) takes the version
installed in this environment, which satisfies the ranges because it was installed from them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = [ROOT / "requirements.txt"]
# What the GPU machine lacks for `python -m optim capabilities`, a comparison and the GPU tests (see
# docs/GPU.md, "The lent GPU machine").
PACKAGES = [
    "diffusers", "importlib-metadata", "zipp",  # diffusers and what it needs beyond that stack
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",  # the config models
    "typing-extensions",  # pydantic-core needs a recent one; installed only if the machine's is older
    "torchao", "optimum-quanto", "ninja",  # quantization back ends (quanto imports ninja to build kernels)
    "bitsandbytes",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any"]
PYTHON_VERSION = "3.12"
# bitsandbytes' per-CUDA libraries: keep CUDA 13 (the GPU machine's torch is +cu130) and the CPU one.
BITSANDBYTES_KEEP = re.compile(r"libbitsandbytes_(cuda130|cpu)\.(so|dylib|dll)$")
BITSANDBYTES_LIBRARY = re.compile(r"libbitsandbytes_[^/]+\.(so|dylib|dll)$")
GOAL_MIB = 20.0


def pinned_versions(files: list[Path] = REQUIREMENTS) -> dict[str, str]:
    """{normalised name: version} for every exact `==` pin in the requirement files."""
    pins = {}
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;]+)", line)
            if match:
                pins[normalise(match.group(1).split("[")[0])] = match.group(2)
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_of(name: str, pins: dict[str, str]) -> str:
    if normalise(name) in pins:
        return pins[normalise(name)]
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"{name} is neither pinned in requirements.txt nor installed here: install the project's "
                         "requirements first (pip install -r requirements.txt)") from None


def requirements() -> list[str]:
    pins = pinned_versions()
    return [f"{name}=={version_of(name, pins)}" for name in PACKAGES]


def download(specs: list[str], dest: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *specs], check=True)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def trim_bitsandbytes(wheel: Path) -> tuple[int, int]:
    """Rewrite the bitsandbytes wheel without the libraries of other CUDA versions (RECORD rewritten to match).
    Returns (bytes before, bytes after)."""
    before = wheel.stat().st_size
    with tempfile.TemporaryDirectory() as folder:
        trimmed = Path(folder) / wheel.name
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
            record_name = next(n for n in source.namelist() if n.endswith(".dist-info/RECORD"))
            lines = []
            for info in source.infolist():
                name = info.filename
                if name == record_name:
                    continue
                if BITSANDBYTES_LIBRARY.search(name) and not BITSANDBYTES_KEEP.search(name):
                    continue
                data = source.read(name)
                target.writestr(info, data)
                lines.append(_record_line(name, data))
            lines.append(f"{record_name},,")
            target.writestr(record_name, "\n".join(lines) + "\n")
        shutil.move(str(trimmed), wheel)
    return before, wheel.stat().st_size


def fetch(dest: Path) -> list[Path]:
    """Download every wheel into `dest` (emptied first), trim bitsandbytes; returns the wheels."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    download(requirements(), dest)
    wheels = sorted(dest.glob("*.whl"))
    for wheel in wheels:
        if wheel.name.startswith("bitsandbytes-"):
            before, after = trim_bitsandbytes(wheel)
            kept = [n for n in zipfile.ZipFile(wheel).namelist() if BITSANDBYTES_LIBRARY.search(n)]
            print(f"bitsandbytes trimmed: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
                  f"(kept {', '.join(Path(n).name for n in kept)})")
            if not any("cuda13" in n for n in kept):
                raise SystemExit("the bitsandbytes wheel has no CUDA 13 library: the GPU machine's torch is cu130")
    return wheels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched, fetch nothing")
    args = parser.parse_args()
    specs = requirements()
    if args.dry_run:
        print("\n".join(specs))
        return 0
    wheels = fetch(args.dest)
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:6.2f} MiB in {len(wheels)} wheels in {args.dest} (goal <= {GOAL_MIB:g} MiB)")
    return 0 if total / 2**20 <= GOAL_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
