"""Every comparison on a GPU checks the planner: each side's predicted peak (`optim.plan.predict`) beside the peak
it measured, with the error, in report.json (`baseline.planned`, `optimized.planned`).

The measured peak is the most `torch.cuda.max_memory_allocated` reached in any timed run (the lab resets it before
each run: loading is not in it), so it is compared with the plan's peak of a generation; the allocator's reserved
memory beside the plan's upper bound of it.
"""

from __future__ import annotations

import logging
from typing import Any

from optim.plan.cards import GIB, Card

log = logging.getLogger(__name__)
MB = 2**20


def planned_side(run: Any, optim: Any, card: Card, measured_peak_mb: float,
                 measured_reserved_mb: float | None) -> dict[str, Any]:
    """One side: what the planner predicts for it beside what it measured."""
    from optim.plan import predict

    option = predict(run, optim, card)
    predicted = option.peak_bytes / MB
    error = predicted / measured_peak_mb - 1 if measured_peak_mb > 0 else None
    reserved = option.reserved_peak_bytes / MB if option.reserved_peak_bytes else None
    return {
        "predicted_peak_mb": round(predicted, 1),
        "measured_peak_mb": round(measured_peak_mb, 1),
        "error": round(error, 4) if error is not None else None,
        "predicted_reserved_mb": round(reserved, 1) if reserved is not None else None,
        "measured_reserved_mb": measured_reserved_mb,
        "predicted_load_mb": round(option.load_peak_bytes / MB, 1),
        "peak_phase": option.peak_phase,
        "fits": option.fits,
        "combination": option.label,
    }


def planned_sides(run: Any, optim: Any, gpu_memory_gb: float | None, sides: dict[str, tuple[float, float | None]],
                  ) -> dict[str, dict[str, Any]] | None:
    """{side: `planned_side`} for a comparison on a GPU of `gpu_memory_gb` GiB; `sides` maps "baseline" and
    "optimized" to their measured (peak, reserved) MB. None off CUDA, or where the planner has no configs for the
    model (a local folder, an unknown Hub model): the report then says nothing rather than something wrong."""
    from optim.config import OptimConfig
    from optim.errors import OptimError

    if not str(getattr(run, "device", "")).startswith("cuda") or not gpu_memory_gb:
        return None
    card = Card("this-gpu", float(gpu_memory_gb), "this GPU")
    try:
        return {side: planned_side(run, OptimConfig() if side == "baseline" else optim, card, *measured)
                for side, measured in sides.items()}
    except OptimError as error:
        log.info("no plan to check against: %s", error)
        return None
    except Exception:  # noqa: BLE001 - a planner bug must never lose a measured comparison
        log.exception("the planner failed on a measured comparison")
        return None


def planned_line(planned: dict[str, Any] | None) -> str | None:
    """Words for one side's check: 'planned 14.2 GiB, measured 13.9 GiB (+2.1%)'."""
    if not planned or planned.get("error") is None:
        return None
    return (f"planned {planned['predicted_peak_mb'] * MB / GIB:.2f} GiB, measured "
            f"{planned['measured_peak_mb'] * MB / GIB:.2f} GiB ({planned['error']:+.1%})")
