"""Temporary folders a side's process writes to disk (a fresh inductor cache, group offload's weight files).

Each is named after the process that made it, `optim-KIND-PID-XXXXXXXX` in the system's temporary folder. The
process deletes its own when it undoes the technique; when it is killed first (cancelled, crashed, out of
memory), the parent deletes them by the dead process's id: `remove_folders_of(pid)`.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

PREFIX = "optim-"


def make_folder(kind: str) -> str:
    """A new empty folder owned by this process."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-")


def folders_of(pid: int | str, kind: str = "*") -> list[str]:
    """This process id's scratch folders of one kind ("*": any pid or kind)."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"{PREFIX}{kind}-{pid}-*"))


def remove_folders_of(pid: int) -> None:
    """Delete every scratch folder a (dead) process left behind."""
    for path in folders_of(pid):
        shutil.rmtree(path, ignore_errors=True)
