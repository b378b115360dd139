"""Two revisions of ipldmount, same run: each selected benchmark of ``run.py`` alternately from a
checkout of REV (before) and from this working tree (after), medians of several rounds.

    .venv/bin/python bench/versus.py 936fa32 --only fuse_small_files --only scale --rounds 3

Each round runs both sides once, the side that goes first alternating, so drift in the machine's
load falls on both. A row's figure is the median of its rounds; ``after/before`` is the speed of
this tree relative to REV (>1x faster, <1x slower, whatever the unit). Baselines (ext4, zarr's
stores) are measured by each side too, so their before/after ratio shows the run's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import HIGHER_IS_BETTER, fmt_number

HERE = Path(__file__).resolve().parent
TREE = HERE.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev", help="the revision to measure against (a commit, tag or branch)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", required=True, help="a benchmark (repeatable)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both sides (default 3)")
    parser.add_argument("--scale", type=int, metavar="N", help="passed on to run.py")
    parser.add_argument("--quick", action="store_true", help="passed on to run.py")
    return parser.parse_args(argv)


def run_side(checkout: Path, args: argparse.Namespace, out: Path) -> list[dict[str, object]]:
    """One run of the selected benchmarks from *checkout*'s own bench and package."""
    command = [sys.executable, str(checkout / "bench" / "run.py"), "--repeats", "1", "--json", str(out)]
    command += [f"--only={name}" for name in args.only]
    command += (["--scale", str(args.scale)] if args.scale else []) + (["--quick"] if args.quick else [])
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=checkout)
    rows: list[dict[str, object]] = json.loads(out.read_text())
    return rows


def medians(runs: list[list[dict[str, object]]], field: str) -> dict[tuple[str, str], float]:
    """(bench, case) -> the median of *field* over the runs that measured it."""
    seen: dict[tuple[str, str], list[float]] = {}
    for rows in runs:
        for row in rows:
            value = row[field]
            if isinstance(value, (int, float)):
                seen.setdefault((str(row["bench"]), str(row["case"])), []).append(float(value))
    return {key: statistics.median(values) for key, values in seen.items()}


def ratio(before: float, after: float, unit: str) -> str:
    if before <= 0 or after <= 0:
        return "-"
    return f"{(after / before if unit in HIGHER_IS_BETTER else before / after):.2f}x"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a SIGTERM too removes the checkout of REV (the finally below)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    sides: dict[str, list[list[dict[str, object]]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="ipldmount-versus-") as scratch:
        old = Path(scratch) / "before"
        subprocess.run(
            ["git", "-C", str(TREE), "worktree", "add", "-q", "--detach", str(old), args.rev], check=True
        )
        try:
            for number in range(args.rounds):
                order = [("before", old), ("after", TREE)]
                for label, checkout in order if number % 2 == 0 else order[::-1]:
                    print(f"round {number + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)
                    sides[label].append(run_side(checkout, args, Path(scratch) / f"{label}-{number}.json"))
        finally:
            subprocess.run(["git", "-C", str(TREE), "worktree", "remove", "--force", str(old)], check=False)
    units = {(str(r["bench"]), str(r["case"])): str(r["unit"]) for rows in sides["after"] for r in rows}
    header = f"{'bench':12} {'case':44} {'before':>12} {'after':>12} {'after/before':>12}"
    print(f"{header}  unit (medians of {args.rounds} rounds)")
    for field, suffix in (("value", ""), ("baseline", " [baseline]")):
        before, after = medians(sides["before"], field), medians(sides["after"], field)
        for key in sorted(set(before) & set(after)):
            unit = units[key]
            print(
                f"{key[0]:12} {(key[1] + suffix)[:44]:44} {fmt_number(before[key]):>12} "
                f"{fmt_number(after[key]):>12} {ratio(before[key], after[key], unit):>12}  {unit}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
