"""One module per technique family; each applies one config section to a loaded pipeline.

`optim.apply` calls them in the fixed order (quantize at load -> attention -> cache -> offload -> VAE ->
compile last) and collects what each did in an `Applied` record: the steps in order, warnings, and how to
restore any process-wide state it touched (the attention dispatcher's global backend, dynamo settings).
The pipeline itself is discarded after a side, so module-level changes need no undo beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Applied:
    """What the optimized side applied, in order, with warnings and the undo of process-wide changes."""

    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def add(self, step: str, undo: Callable[[], None] | None = None) -> None:
        self.steps.append(step)
        if undo is not None:
            self._undo.append(undo)

    def on_undo(self, undo: Callable[[], None]) -> None:
        """Run `undo` when the side ends (cleanup that is not a step of its own: a scratch folder, a setting)."""
        self._undo.append(undo)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def undo_all(self) -> None:
        """Undo in reverse order; every undo runs even if an earlier one fails."""
        errors = []
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as error:  # noqa: BLE001 - collect, then report once
                errors.append(error)
        if errors:
            raise errors[0]
