"""Attention backend: `transformer.set_attention_backend(name)` and the dispatcher's input checks.

The one place that touches diffusers' private attention internals, for three reasons:
* `reset_attention_backend()` clears each module's backend but leaves the registry's global *active* backend at
  the last one set (diffusers 0.42), so a later pipeline would silently keep using it. We restore it ourselves.
* `DIFFUSERS_ATTN_CHECKS` is read once at import; the documented switch at run time is
  `_AttentionBackendRegistry._checks_enabled` (diffusers' attention-backends page).
* `_check_attention_backend_requirements` is diffusers' own "is the package installed?" check; capabilities use it
  so we never list a backend as available that `set_attention_backend` would refuse.
"""

from __future__ import annotations

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
