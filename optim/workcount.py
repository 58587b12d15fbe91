"""How much of the transformer's work a run actually computed, step by step.

diffusers' caches have no public skip counter, so we count what really runs: a forward pre-hook on every
`nn.Linear` inside the transformer's repeated blocks adds that call's multiply-accumulates (tokens x in x out).
A skipped block or a reused attention output never calls its Linears, so the count drops exactly by what was
skipped. Dividing by the baseline's count for the same settings gives `work_fraction` (1.0: nothing skipped).

Hooks cost a little Python per call, so the counter is attached only for the eager probe run (the first
warm-up), never during timed runs, and never under torch.compile (a counter inside a compiled graph would
force a recompile on every call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class WorkCounter:
    """Counts Linear multiply-accumulates in the transformer blocks; `mark_step()` closes one denoising step."""

    per_step: list[float] = field(default_factory=list)
    _current: float = 0.0
    _handles: list[Any] = field(default_factory=list)

    def attach(self, transformer: torch.nn.Module) -> WorkCounter:
        blocks = [module for name, module in transformer.named_children() if isinstance(module, torch.nn.ModuleList)]
        for block_list in blocks:
            for module in block_list.modules():
                if isinstance(module, torch.nn.Linear):
                    self._handles.append(module.register_forward_pre_hook(self._count))
        if not self._handles:
            raise RuntimeError(f"{type(transformer).__name__} has no repeated blocks with Linear layers to count")
        return self

    def _count(self, module: torch.nn.Linear, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            tokens = x.numel() // max(1, x.shape[-1])
            self._current += float(tokens) * module.in_features * module.out_features

    def mark_step(self) -> None:
        self.per_step.append(self._current)
        self._current = 0.0

    def reset(self) -> None:
        self.per_step = []
        self._current = 0.0

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def total(self) -> float:
        return float(sum(self.per_step))


def work_fractions(optimized: list[float], baseline: list[float]) -> tuple[float, list[float]]:
    """(total, per step) share of the baseline's work that the optimized run computed (same settings, so the
    same steps; the baseline computes everything)."""
    if not baseline or sum(baseline) <= 0:
        return 1.0, [1.0] * len(optimized)
    per_step = [o / b if b > 0 else 1.0 for o, b in zip(optimized, baseline)]
    return sum(optimized) / sum(baseline), per_step
