"""The server at the scale the lab promises: the suite's load and fuzz tests, larger.

    python benchmarks/load_scale.py --out benchmarks/records/DATE-load-scale

Runs tests/test_load.py with 8 concurrent gradio_client clients (each its own preset, seed and length, served in
queue order) and 100 measured comparisons (the whole process tree's memory flat: trend under 2% and each
process under the per-comparison limits), and tests/test_fuzz.py (over 10,000 generated presets and share links
per run, every accepted one round-tripping). The suite runs the same tests with 4 clients and 20 comparisons
(the fuzz test at full size: it takes about 20 s). Writes the figures the tests print, with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="record path without suffix (.md and .json written)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-n", "0", "-p", "no:cacheprovider",
               "tests/test_load.py", "tests/test_fuzz.py"]
    env = {**os.environ, "LAB_LOAD_CLIENTS": str(args.clients), "LAB_LOAD_RUNS": str(args.runs)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    output = done.stdout + done.stderr
    figures = [line.strip() for line in output.splitlines()
               if re.search(r"clients at once|over \d+ comparisons|whole tree|accepted, \d+ refused", line)]
    passed = re.search(r"(\d+) passed", output)
    failed = re.search(r"(\d+) failed", output)
    record = {"date": date.today().isoformat(), "command": f"python benchmarks/load_scale.py --out {args.out}",
              "clients": args.clients, "runs": args.runs, "returncode": done.returncode,
              "passed": int(passed.group(1)) if passed else 0, "failed": int(failed.group(1)) if failed else 0,
              "figures": figures, "elapsed_s": elapsed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# The server at scale ({record['date']})", "", f"Command: `{record['command']}`", "",
             f"tests/test_load.py with LAB_LOAD_CLIENTS={args.clients} and LAB_LOAD_RUNS={args.runs}, and "
             f"tests/test_fuzz.py, on this 2-core CPU machine: {record['passed']} passed, {record['failed']} "
             f"failed, {elapsed / 60:.1f} min.", "", "Figures the tests printed:", ""]
    lines += [f"* {figure}" for figure in figures]
    if done.returncode != 0:
        lines += ["", "Failures:", "", "```", output[-4000:], "```"]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
