"""Safety: no remote code, safetensors only, validated model ids, local folders only from allowed places in
public mode, nothing from a user evaluated or unpickled."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest

from optim.config import RunSpec
from optim.errors import ConfigError, ModelError
from optim.limits import Limits, check_run
from optim.models import EMBEDDED_PATH, load_pipeline, resolve_model

ROOT = Path(__file__).resolve().parent.parent

SOURCES = sorted((ROOT / "optim").rglob("*.py")) + [ROOT / "app.py"]


@pytest.fixture
def model_copy(tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(EMBEDDED_PATH, target)
    return target


def test_a_model_index_naming_custom_code_is_refused(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "MyPipeline"]
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="not a diffusers pipeline; custom pipeline code is never run"):
        load_pipeline(resolve_model(str(model_copy)), dtype="float32")


def test_a_component_from_another_library_is_refused(model_copy):
    index = json.loads((model_copy / "model_index.json").read_text())
    index["transformer"] = ["my_package", "EvilTransformer"]
    (model_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="only diffusers and transformers classes load"):
        load_pipeline(resolve_model(str(model_copy)), dtype="float32")


class _Tripwire:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/optim-unpickled-tripwire"),))


def test_pickle_weights_are_never_loaded(model_copy):
    marker = Path("/tmp/optim-unpickled-tripwire")
    marker.unlink(missing_ok=True)
    for weights in (model_copy / "transformer").glob("*.safetensors"):
        weights.unlink()
    (model_copy / "transformer" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire()))
    with pytest.raises(ModelError):
        load_pipeline(resolve_model(str(model_copy)), dtype="float32")
    assert not marker.exists(), "a pickle file was unpickled"


PUBLIC_SERVERS = [{"OPTIM_PUBLIC": "1"}, {"SPACE_ID": "someone/lab"}]


@pytest.mark.parametrize("env", PUBLIC_SERVERS, ids=["OPTIM_PUBLIC", "SPACE_ID"])
def test_folders_are_refused_on_a_public_server(env):
    """A real pipeline folder (one that loads on a private server) is refused in public mode, and so is any
    path-like name, before the folder is even looked at (the refusal is the public-mode message, not a missing
    folder or a missing model_index.json)."""
    folder = str(EMBEDDED_PATH)  # a complete diffusers pipeline folder, given as a path
    assert (EMBEDDED_PATH / "model_index.json").is_file()
    check_run(RunSpec(model=folder), Limits.from_env({}))  # a private server accepts it
    public = Limits.from_env(env)
    for name in (folder, "../../etc", "/etc", "~/.ssh", "./assets", "./no-such-folder"):
        with pytest.raises(ModelError, match=r"local folders are disabled on this server"):
            check_run(RunSpec(model=name), public)


def test_folders_outside_the_allowed_roots_are_refused(tmp_path, model_copy):
    limits = Limits.from_env({"OPTIM_PUBLIC": "1", "OPTIM_LOCAL_MODEL_ROOTS": str(tmp_path / "allowed")})
    with pytest.raises(ModelError, match="outside the allowed places"):
        check_run(RunSpec(model=str(model_copy)), limits)
    inside = tmp_path / "allowed" / "model"
    shutil.copytree(model_copy, inside)
    check_run(RunSpec(model=str(inside)), limits)


@pytest.mark.parametrize("name", ["a b/c", "org/na me", "http://evil.example/x", "org/name/extra", "-org/x", "x" * 300])
def test_malformed_model_ids_are_refused(name):
    with pytest.raises((ModelError, ConfigError)):
        resolve_model(name)


def test_the_embedded_model_is_allowed_in_public_mode():
    check_run(RunSpec(), Limits.from_env({"SPACE_ID": "someone/lab"}))


def test_request_limits_are_enforced_and_configurable():
    public = Limits.from_env({"OPTIM_PUBLIC": "1"})
    with pytest.raises(ConfigError, match="run.steps: 200 is more than this server allows"):
        check_run(RunSpec(steps=200), public)
    with pytest.raises(ConfigError, match="2048x2048 is more than this server allows"):
        check_run(RunSpec(width=2048, height=2048), public)
    too_many = public.max_timed_runs + 1
    with pytest.raises(ConfigError, match=f"run.timed_runs: {too_many} is more than this server allows"):
        check_run(RunSpec(timed_runs=too_many), public)
    check_run(RunSpec(timed_runs=public.max_timed_runs), public)
    roomy = Limits.from_env({"OPTIM_PUBLIC": "1", "OPTIM_MAX_STEPS": "300"})
    check_run(RunSpec(steps=200), roomy)
    with pytest.raises(ConfigError, match="OPTIM_MAX_STEPS='lots' must be a whole number"):
        Limits.from_env({"OPTIM_MAX_STEPS": "lots"})


# Internal IPC between our own processes (the parent and its worker zygote, over a private socket) is pickled,
# and LPIPS's weight files, which the operator places on the machine, load with torch's tensors-only loader;
# nothing that comes from a user is unpickled.
INTERNAL_IPC = {"zygote.py": "pickle.loads(message)",
                "perceptual.py": 'torch.load(path, map_location="cpu", weights_only=True)'}


def test_no_code_path_evaluates_or_unpickles_user_input():
    forbidden = re.compile(r"(?<![.\w])(eval|exec)\(|pickle\.loads?\(|torch\.load\(|trust_remote_code\s*=\s*True|custom_pipeline\s*=")
    for path in SOURCES:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if INTERNAL_IPC.get(path.name, "\0") in code:
                continue
            assert not forbidden.search(code), f"{path.name}:{number}: {line.strip()}"
