"""The project as a package: installable, its data found through the package from anywhere, its dependencies
declared once for pip and once for Spaces (and equal), and README's option tables written from the settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _requirements(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return sorted(line.replace(" ", "") for line in lines if line and not line.startswith("-"))


def test_pyproject_and_requirements_declare_the_same_dependencies():
    """The same packages and pins, except torch: pyproject declares the range the lab runs on (2.11 on the lent
    GPU machine, 2.13 here), requirements.txt the exact version CI and Spaces install (an unpinned torch pulls a
    multi-GB CUDA build)."""
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = sorted(d.replace(" ", "") for d in project["dependencies"])
    pinned = _requirements(ROOT / "requirements.txt")
    assert [d for d in declared if not d.startswith("torch")] == [d for d in pinned if not d.startswith("torch")]
    assert "torch==2.13.0" in pinned
    torch_range = SpecifierSet(next(d for d in declared if d.startswith("torch"))[len("torch"):])
    assert "2.13.0" in torch_range and "2.11.0" in torch_range and "2.14.0" not in torch_range
    dev = _requirements(ROOT / "requirements-dev.txt")
    assert sorted(d.replace(" ", "") for d in project["optional-dependencies"]["dev"]) == dev


def test_readme_option_tables_are_written_from_the_settings():
    from optim.reference import END, START, options_markdown

    text = (ROOT / "README.md").read_text()
    generated = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert generated == options_markdown().strip(), "run: python -m optim reference --write README.md"


def test_every_setting_has_a_label_and_help():
    from optim import config as C

    classes = [C.RunSpec, *C.SECTIONS.values(), *C.CACHE_VARIANTS.values(), *C.QUANTIZATION_VARIANTS.values()]
    for cls in classes:
        for name in cls.model_fields:
            if name in ("method", "backend"):
                continue
            facts = C.facts(cls, name)
            assert facts.help and facts.label != name.replace("_", " ").capitalize() or facts.label, (cls, name)
            assert facts.help, f"{cls.__name__}.{name} has no help text"
    for cls in [*C.CACHE_VARIANTS.values(), *C.QUANTIZATION_VARIANTS.values()]:
        label, summary = C.variant_facts(cls)
        assert label and summary, cls


@pytest.mark.timeout(600)
def test_the_wheel_carries_its_data_and_works_from_anywhere(tmp_path):
    """`pip install .` works from any folder: presets and the embedded model come from the installed package."""
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("optim", "lab", "embedded"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "optim/data/presets/first-block-cache.json" in names and "optim/data/presets/schema.json" in names
    assert any(re.match(r"optim/data/assets/tiny-flux/transformer/.*\.safetensors", n) for n in names)
    assert "lab/server.py" in names and "embedded/dataset.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "optim = optim.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    code = ("import optim, sys; from optim.presets import load_preset; from optim.models import resolve_model, "
            "model_defaults; assert optim.__file__.startswith(sys.argv[1]), optim.__file__; "
            "print(load_preset('mag-cache').optim.cache.method, model_defaults(resolve_model('embedded')).width)")
    done = subprocess.run([sys.executable, "-c", code, str(site)], cwd=elsewhere, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["mag_cache", "128"]


def _module_imports() -> dict[str, set[str]]:
    """Each project module's imports anywhere in it (a function's deferred import counts too), except those under
    `if TYPE_CHECKING:` (types only), as module names of the project."""
    import ast

    modules = {}
    for package in ("optim", "lab", "embedded"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        found = set()
        todo = list(ast.parse(path.read_text()).body)
        while todo:
            node = todo.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                todo.extend(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            todo.extend(ast.iter_child_nodes(node))
        graph[name] = {other for other in found if other in modules and other != name}
    return graph


def test_no_import_circle():
    """A module never imports, directly or not, a module that imports it back (even in a function)."""
    graph = _module_imports()
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, circles[:5]


def test_no_module_over_800_lines_outside_embedded():
    """One job per module: the engine, the UI and the tools stay under 800 lines each (the embedded models'
    training scripts are the exception: each is one long recipe)."""
    long = {}
    for package in ("optim", "lab", "scripts", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            if lines > 800:
                long[str(path.relative_to(ROOT))] = lines
    assert not long, long


def test_every_preset_shown_in_readme_loads_as_a_preset():
    """A reader copies README's JSON examples into files: each one that is a preset must load as one."""
    from optim.presets import preset_from_json

    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    presets = [block for block in blocks if '"optim"' in block]
    assert presets, "README shows no preset"
    for block in presets:
        preset_from_json(block, where="README")
