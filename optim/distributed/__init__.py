"""Sweeps and the tuner on a Ray cluster: many GPUs, many nodes, nothing lost.

    python -m optim sweep --space fbc-threshold --out runs/fbc --ray                # RAY_ADDRESS, `ray start`'s, or new
    python -m optim sweep --space fbc-threshold --out runs/fbc --ray 10.0.0.1:6379  # a running cluster's head

Ray is optional (`pip install -r requirements-scale.txt`, or the `scale` extra): only `--ray` imports this package.
Its modules: `cluster` (connecting to Ray), `actor` (a worker slot, one Ray actor), `pool` (placement, retries,
lost workers), `runs` (a sweep and a tune on the pool); the CLI's `--ray` output is `optim.cli`'s.

Workers. A worker slot is one Ray actor (`_Slot`) holding an `optim.sweep.Evaluator`: its own baseline worker
(loaded once, timed again in turns with each point, so a speedup is always a ratio of two runs on the same
machine and device) and its point worker, reconfigured in place when the next point allows it. Each actor asks
Ray for what it uses: `gpus_per_worker` GPUs (one by default) on a cluster with GPUs, or its share of the CPUs
on a CPU cluster (Ray then sets OMP_NUM_THREADS to it, which the side processes inherit). By default there is one
worker per GPU (GPU cluster) or per node (CPU cluster).

Placement. A free worker takes, first, a point it can swap in place (same quantization and offload, compile off:
`optim.measure.swappable`, the point's `swap_key`), then a point of a group no other worker is loaded with (the
largest such group), then anything. So a group of swappable points tends to stay on one worker, and a worker
loads a fresh pipeline only when it moves to another group.

Faults. A worker whose actor or node dies mid-evaluation (or whose baseline process dies) is replaced, and the
point goes back to the queue for another worker, at most `retries` more times; after that its row says
"failed" and why. The rows already written stay. A point that fails by itself (an out-of-memory setting, a
crash in one configuration's process) fails as it does locally: no retry.

Rows are written to OUT/rows.jsonl by the driver as they arrive (flushed and synced), in the local path's format
plus where each ran: `host`, `device`, `device_name`, `worker`, and `attempts` (with `retried_because`) when it
took more than one; a point lost on every try has `"lost": true`. A killed driver takes its actors with it (Ray
ends a dead driver's actors; their side processes end when their connection closes) and `--resume` skips the
rows written, except lost ones, which it tries again. sweep.json gains `ray` (the cluster and workers) and
`devices` (the rows grouped by device, each group with its own front: a speedup on an H100 is not one on an L4).
"""

from optim.distributed.actor import Slot
from optim.distributed.cluster import INSTALL, Cluster, require_ray
from optim.distributed.pool import RETRIES, Job, RayPool, pick, plan_workers, swap_key
from optim.distributed.runs import RayEvaluator, RaySweepResult, by_device, run_sweep_ray, tune_ray

__all__ = ["INSTALL", "RETRIES", "Cluster", "Job", "RayEvaluator", "RayPool", "RaySweepResult", "Slot", "by_device",
           "pick", "plan_workers", "require_ray", "run_sweep_ray", "swap_key", "tune_ray"]
