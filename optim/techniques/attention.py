"""Attention backend: `transformer.set_attention_backend(name)` and the dispatcher's input checks.

The one place that touches diffusers' private attention internals, for three reasons:
* `reset_attention_backend()` clears each module's backend but leaves the registry's global *active* backend at
  the last one set (diffusers 0.42), so a later pipeline would silently keep using it. We restore it ourselves.
* `DIFFUSERS_ATTN_CHECKS` is read once at import; the documented switch at run time is
  `_AttentionBackendRegistry._checks_enabled` (diffusers' attention-backends page).
* `_check_attention_backend_requirements` is diffusers' own "is the package installed?" check; capabilities use it
  so we never list a backend as available that `set_attention_backend` would refuse.
* `_AttentionBackendRegistry._constraints` holds each backend's own checks (CUDA only, minimum compute
  capability, bf16/fp16 inputs, head dims). diffusers runs them only with DIFFUSERS_ATTN_CHECKS on; we read
  them (`backend_needs`) so a backend that would fail at run time is refused before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optim.config import AttentionConfig
from optim.errors import UnavailableError
from optim.techniques import Applied


def _registry() -> Any:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry


def registered_backends() -> list[str]:
    """Every backend name the installed diffusers registers."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [member.value for member in AttentionBackendName]


def backend_requirement(backend: str) -> str | None:
    """diffusers' own package check for a backend: None if satisfied, else its message (names the package)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(backend))
    except (RuntimeError, ImportError, ValueError) as error:
        return str(error)
    return None


@dataclass(frozen=True)
class BackendNeeds:
    """What a backend's kernel needs, as diffusers' own constraint checks for it say."""

    cuda_only: bool = False
    min_compute_capability: tuple[int, int] | None = None
    dtypes: tuple[str, ...] | None = None  # None: any; else the torch dtype names it accepts
    head_dims: tuple[int, ...] | None = None


def backend_needs(backend: str) -> BackendNeeds:
    """Read the constraint functions diffusers registered for `backend` (see the module docstring)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    checks = _registry()._constraints.get(AttentionBackendName(backend), [])
    cuda_only, capability, dtypes, head_dims = False, None, None, None
    for check in checks:
        name = getattr(check, "__name__", "")
        cells = [cell.cell_contents for cell in (getattr(check, "__closure__", None) or ())]
        if name in ("_check_device_cuda", "check_device_cuda"):
            cuda_only = True
            numbers = [c for c in cells if isinstance(c, int)]
            if len(numbers) == 2:  # _check_device_cuda_atleast_smXY(major, minor)
                capability = (numbers[0], numbers[1])
        elif name == "_check_qkv_dtype_bf16_or_fp16":
            dtypes = ("bfloat16", "float16")
        elif name == "_check_qkv_dtype_bf16":
            dtypes = ("bfloat16",)
        elif name == "_check_head_dim_64_or_128":
            head_dims = (64, 128)
    return BackendNeeds(cuda_only, capability, dtypes, head_dims)


def attention_state(transformer: Any) -> dict[str, Any]:
    """The backend every attention processor uses plus the global active backend and checks flag."""
    registry = _registry()
    per_module = {
        getattr(module.processor, "_attention_backend", None)
        for module in transformer.modules()
        if getattr(module, "processor", None) is not None and hasattr(module.processor, "_attention_backend")
    }
    active = registry._active_backend
    return {
        "modules": sorted(str(getattr(b, "value", b)) for b in per_module),
        "active": str(getattr(active, "value", active)),
        "checks": bool(registry._checks_enabled),
    }


def apply_attention(pipe: Any, config: AttentionConfig, applied: Applied) -> None:
    registry = _registry()
    transformer = pipe.transformer
    if config.backend != "native":
        previous = registry._active_backend
        try:
            transformer.set_attention_backend(config.backend)
        except (RuntimeError, ValueError, ImportError) as error:
            registry.set_active_backend(previous)
            raise UnavailableError(f"attention backend {config.backend!r} is not usable here: {error}") from None
        except Exception as error:  # noqa: BLE001 - *_hub backends download a kernel: network and Hub errors
            registry.set_active_backend(previous)
            if not config.backend.endswith("_hub"):
                raise
            raise UnavailableError(
                f"attention backend {config.backend!r} could not fetch its kernel from the Hugging Face Hub "
                f"({type(error).__name__}: {str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}); "
                "check the network and HF_TOKEN, or pick a backend that is installed locally"
            ) from None

        def restore() -> None:
            transformer.reset_attention_backend()
            registry.set_active_backend(previous)

        applied.add(f"attention backend: {config.backend}", restore)
    if config.checks:
        previous_checks = registry._checks_enabled
        registry._checks_enabled = True

        def restore_checks() -> None:
            registry._checks_enabled = previous_checks

        applied.add("attention dispatcher checks: on", restore_checks)
