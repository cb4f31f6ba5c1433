"""Median wall time of `stylesearch --help` (target: under 0.3 s), beside a bare `python -c pass` (the
floor) and, with `--against REV`, the same command of another revision (checked out in a temporary git
worktree) in the same run, runs interleaved so machine load hits both alike.

Usage: python benchmarks/cli_startup.py [RUNS] [--against REV]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=cwd)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="?", type=int, default=15)
    parser.add_argument("--against", help="a git revision to time beside this checkout")
    args = parser.parse_args()
    help_cmd = [sys.executable, "-m", "stylesearch", "--help"]
    subjects = {"python -c pass (floor)": ([sys.executable, "-c", "pass"], REPO), "this checkout": (help_cmd, REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            tree = Path(tmp) / "against"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.against],
                           check=True, capture_output=True)
            subjects[f"revision {args.against}"] = (help_cmd, tree)
        try:
            times = {name: [] for name in subjects}
            for _ in range(args.runs):
                for name, (cmd, cwd) in subjects.items():
                    times[name].append(timed(cmd, cwd))
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    for name, values in times.items():
        print(f"{name:>28}: median {statistics.median(values):.3f} s, min {min(values):.3f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
