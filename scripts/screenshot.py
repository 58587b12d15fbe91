"""Take the README screenshot (docs/screenshot.png): run the browser test, which opens the app with a share link,
runs a comparison and saves the page.

    python scripts/screenshot.py            # needs Debian's chromium: apt-get install -y chromium
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    target = ROOT / "docs" / "screenshot.png"
    load = os.getloadavg()[0]
    if load > 0.8 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other work will skew the latencies in "
              "the screenshot; take it on a quiet machine", file=sys.stderr)
    env = {**os.environ, "OPTIM_SCREENSHOT": str(target), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    status = subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_browser.py"], cwd=ROOT, env=env)
    if status == 0:
        print(f"wrote {target}")
    return status


if __name__ == "__main__":
    sys.exit(main())
