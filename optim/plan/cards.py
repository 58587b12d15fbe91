"""The GPUs the planner knows by name, and how much of their memory a generation may use.

Sizes are what each card reports to CUDA (`torch.cuda.mem_get_info`'s total), in GiB: a "24 GB" RTX 4090 has
23.99 GiB, an "80 GB" H100 79.19. ZeroGPU (https://huggingface.co/docs/hub/spaces-zerogpu, hub-docs as of
2026-08-22) lends a half NVIDIA RTX Pro 6000 Blackwell, 48 GB, by default (`large`) and a whole one, 96 GB, with
`@spaces.GPU(size="xlarge")`: the whole card reports 97887 MiB (95.6 GiB), the half is taken as half of it;
before that it lent a 70 GB slice of an H200 (`zerogpu-h200`).
A plain number is a size in GiB ("24", "16GB", "16 GiB").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from optim.errors import ConfigError

GIB = 2**30


@dataclass(frozen=True)
class Card:
    name: str
    memory_gib: float
    note: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


CARDS = {
    "rtx-3060": Card("rtx-3060", 11.76, "GeForce RTX 3060 12 GB"),
    "rtx-4080": Card("rtx-4080", 15.70, "GeForce RTX 4080 16 GB"),
    "rtx-4090": Card("rtx-4090", 23.99, "GeForce RTX 4090 24 GB"),
    "l4": Card("l4", 22.05, "NVIDIA L4 24 GB"),
    "a100-40": Card("a100-40", 39.39, "A100 40 GB"),
    "a100-80": Card("a100-80", 79.15, "A100 80 GB"),
    "h100": Card("h100", 79.19, "H100 80 GB"),
    "h200": Card("h200", 139.8, "H200 141 GB"),
    "zerogpu": Card("zerogpu", 47.79, "ZeroGPU large: half an RTX Pro 6000 Blackwell (48 GB)"),
    "zerogpu-xlarge": Card("zerogpu-xlarge", 95.59, "ZeroGPU xlarge: an RTX Pro 6000 Blackwell (96 GB)"),
    "zerogpu-h200": Card("zerogpu-h200", 70.0, "ZeroGPU before 2026: a slice of an H200 (70 GB)"),
}


def parse_card(text: str) -> Card:
    """A known card by name (rtx-4090, h100 ...) or a size: '24', '16GB', '12.5 GiB'."""
    key = str(text).strip().lower().replace("_", "-").replace(" ", "-")
    if key in CARDS:
        return CARDS[key]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*-?(gb|gib|g)?", key)
    if match:
        size = float(match.group(1))
        if size <= 0 or size > 1024:
            raise ConfigError(f"--gpu {text!r}: a size between 0 and 1024 GB")
        return Card(f"{size:g} GB", size, "a card of this size")
    raise ConfigError(f"--gpu {text!r}: give a size (24, 16GB) or a known card: {', '.join(CARDS)}")
