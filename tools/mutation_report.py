"""Mutant lists and verdicts from mutmut 3's `mutants/**/*.py.meta` files (used by tools/mutation.sh).

  python tools/mutation_report.py sample WORKDIR N SEED    print N mutant names drawn at random (seeded)
  python tools/mutation_report.py unkilled WORKDIR NAMES_FILE    print the names in NAMES_FILE no test
      failed on yet: survived, unreached, not run, and timed out (a timeout may be a starved run)
  python tools/mutation_report.py report WORKDIR NAME SECONDS [NAMES_FILE]
      killed/survived counts over every mutant, or over the names in NAMES_FILE (a sample), then the
      mutants not killed, one per line

"Killed" counts mutants a test failed on or that timed out (a mutant that makes the code loop is
caught); "not killed" counts survivors and mutants no test reaches, both bugs the tests would miss.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 24: "timeout", -24: "timeout", 36: "timeout", 152: "timeout", 255: "timeout",
          -9: "crashed", -11: "crashed", 37: "caught by type check"}
NOT_KILLED = {0: "survived", 5: "no tests", 33: "no tests"}


def verdicts(workdir: Path) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        found.update(json.loads(meta.read_text())["exit_code_by_key"])
    return found


def sample(workdir: Path, size: int, seed: int) -> list[str]:
    names = sorted(verdicts(workdir))
    return sorted(random.Random(seed).sample(names, min(size, len(names))))


def report(workdir: Path, package: str, seconds: str, names_file: str | None) -> None:
    found = verdicts(workdir)
    chosen = Path(names_file).read_text().split() if names_file else sorted(found)
    codes = [found.get(name) for name in chosen]
    killed = sum(code in KILLED for code in codes)
    missed = [(name, NOT_KILLED[code]) for name, code in zip(chosen, codes) if code in NOT_KILLED]
    timeouts = sum(KILLED.get(code) == "timeout" for code in codes)
    other = len(chosen) - killed - len(missed)
    judged = killed + len(missed)
    scope = f"a seeded sample of {len(chosen)} of {len(found)} mutants" if names_file else f"{len(found)} mutants"
    print(f"{package}: {killed} killed ({timeouts} by timeout), {len(missed)} not killed "
          f"({sum(why == 'no tests' for _, why in missed)} reached by no test) of {scope}: "
          f"{100 * killed / max(judged, 1):.1f}% killed; {other} not run; {seconds} s")
    for name, why in missed:
        print(f"    {name}: {why}")


if __name__ == "__main__":
    command, workdir = sys.argv[1], Path(sys.argv[2])
    if command == "sample":
        print("\n".join(sample(workdir, int(sys.argv[3]), int(sys.argv[4]))))
    elif command == "unkilled":
        found = verdicts(workdir)
        failed = {code for code, verdict in KILLED.items() if verdict != "timeout"}
        print("\n".join(n for n in Path(sys.argv[3]).read_text().split() if found.get(n) not in failed))
    else:
        report(workdir, sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
