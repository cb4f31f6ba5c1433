"""Every command and option in the README's command table is passed through the CLI by some test.

The rule (a static scan, no test is run): the table under `## Commands` names, per row, one or more
commands (the first cell: `stylesearch download DS`, `` `stylesearch datasets`, `info DS` ``) and
options (every `--long` or `-x` token inside backquotes, in either cell). A test *passes* an option
to a command when one call expression in `tests/*.py` (`cli(...)`, `cli.json(...)`, `cli.process(...)`,
`subprocess.run([...])`, `CliRunner().invoke(app, [...])`, ...) has among its string-constant
arguments (lists, tuples and starred arguments included) the command's name followed later by the
option (`--opt` or `--opt=value`). The first constant that is a command name is the call's command,
so `cli("search", "demo", ...)` is a search. An option counts for a row when it is passed to any of
the row's commands. A call in a test is not enough to make it run: the option's own test must
assert on what it does; this test only keeps new options from shipping without one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
_CELL_CODE = re.compile(r"`([^`]*)`")
_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


def command_table() -> list[tuple[list[str], list[str]]]:
    """(commands, options) per row of the README's `## Commands` table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if not cells:
            continue
        first = line.split("` |", 1)[0] + "`"  # the first cell (its code spans may hold '|')
        commands = [code.split()[1] if code.startswith("stylesearch ") else code.split()[0]
                    for code in _CELL_CODE.findall(first)]
        options = sorted({opt for code in _CELL_CODE.findall(line) for opt in _OPTION.findall(code)})
        rows.append((commands, options))
    return rows


def _strings(node) -> list[str]:
    """String constants among a call argument, in order (lists, tuples, starred values included)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [s for elt in node.elts for s in _strings(elt)]
    if isinstance(node, ast.Starred):
        return _strings(node.value)
    return []


def passed_options(commands: set[str]) -> dict[str, set[str]]:
    """command -> the options some test call passes to it (see the module docstring)."""
    found: dict[str, set[str]] = {c: set() for c in commands}
    for file in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            words = [s for arg in node.args for s in _strings(arg)]
            first = next((i for i, w in enumerate(words) if w in commands), None)
            if first is None:
                continue
            command = words[first]
            found[command].add("")  # the command itself is run
            found[command].update(w.split("=", 1)[0] for w in words[first + 1:] if w.startswith("-"))
    return found


def test_the_table_is_read():
    rows = command_table()
    commands = [c for cs, _ in rows for c in cs]
    assert {"download", "embed", "index", "search", "serve", "datasets", "info", "demo"} <= set(commands)
    options = dict((cs[0], opts) for cs, opts in rows)
    assert {"--timeout", "--sample", "--count"} <= set(options["download"])
    assert {"-k", "--min-score", "--effort", "-d", "--where"} <= set(options["search"])


def test_every_command_and_option_in_the_readme_table_is_passed_by_a_test():
    rows = command_table()
    passed = passed_options({c for cs, _ in rows for c in cs})
    missing = []
    for commands, options in rows:
        missing += [f"stylesearch {c}" for c in commands if "" not in passed[c]]
        given = set().union(*(passed[c] for c in commands))
        missing += [f"stylesearch {'/'.join(commands)} {opt}" for opt in options if opt not in given]
    assert not missing, "README options that no test passes through the CLI:\n" + "\n".join(missing)
