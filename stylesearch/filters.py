"""The filter grammar of filtered search, compiled to conditions on the catalog.

One clause per filter, all clauses must hold (AND):

    FIELD = VALUE      FIELD != VALUE      FIELD < VALUE   (also <=, >, >=)
    FIELD in (A, B)    FIELD not in (A, B) FIELD exists

FIELD is a metadata field (nested objects as `a.b`; a list matches when any element does) or
one of the item's own fields: width, height, path, group, caption. VALUE is a number, a bare
word, or a quoted string ('...' or "..."). Text compares without regard to case; `<`/`>` compare
numbers as numbers and other values as text (so ISO dates work). `!=` and `not in` also match
items that do not have the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError

ITEM_FIELDS = {"width": "width", "height": "height", "path": "path", "group": "group_id", "caption": "caption"}
_FIELD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*")
_OPERATOR = re.compile(r"(not\s+in\b|in\b|exists\b|==|!=|<=|>=|=|<|>)\s*", re.I)
_VALUE = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^,()'"]*[^,()'"\s]))\s*""")
GRAMMAR_HINT = ("Filters are FIELD OP VALUE with OP one of = != < <= > >=, or FIELD in (A, B), "
                "FIELD not in (A, B), FIELD exists; e.g. category=summer, \"style in (photo, illustration)\", price<50.")


@dataclass(frozen=True)
class Clause:
    field: str
    op: str  # = != < <= > >= in not in exists
    values: tuple = ()  # typed: numbers for numeric-looking bare words, else text
    texts: tuple = ()  # the values exactly as written (007 and 1.10 also match those texts)

    def __str__(self) -> str:
        if self.op == "exists":
            return f"{self.field} exists"
        if self.op in ("in", "not in"):
            return f"{self.field} {self.op} ({', '.join(map(str, self.values))})"
        return f"{self.field}{self.op}{self.values[0]}"


def _fail(expr: str, pos: int, what: str) -> UserError:
    return UserError(f"Cannot read filter {expr!r}: {what} at position {pos + 1}.\n  {expr}\n  {' ' * pos}^",
                     GRAMMAR_HINT)


def _number(text: str):
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and re.fullmatch(r"[+-]?\d+", text) else value


def _value(expr: str, pos: int) -> tuple[object, str, int]:
    """(typed value, its text as written, the position after it)."""
    m = _VALUE.match(expr, pos)
    if not m or m.end() == pos:
        raise _fail(expr, pos, "expected a value")
    quoted = m.group(1) if m.group(1) is not None else m.group(2)
    if quoted is not None:
        text = re.sub(r"\\(.)", r"\1", quoted)
        return text, text, m.end()
    if m.group(3)[0] in "<>=!":
        raise _fail(expr, m.start(3), f"unexpected {m.group(3)[0]!r} (quote a value that starts with it)")
    return _number(m.group(3)), m.group(3), m.end()


def _list(expr: str, pos: int) -> tuple[tuple, tuple, int]:
    if pos >= len(expr) or expr[pos] != "(":
        raise _fail(expr, pos, "expected '(' to start a list")
    values, texts, pos = [], [], pos + 1
    while True:
        value, text, pos = _value(expr, pos)
        values.append(value)
        texts.append(text)
        if pos < len(expr) and expr[pos] == ",":
            pos += 1
            continue
        if pos < len(expr) and expr[pos] == ")":
            return tuple(values), tuple(texts), pos + 1
        raise _fail(expr, pos, "expected ',' or ')'")


def parse_clause(expr: str) -> Clause:
    """One filter clause, or a UserError pointing at the position where it stops making sense."""
    m = _FIELD.match(expr)
    if not m:
        raise _fail(expr, len(expr) - len(expr.lstrip()), "expected a field name")
    field, pos = m.group(1), m.end()
    op_match = _OPERATOR.match(expr, pos)
    if not op_match:
        raise _fail(expr, pos, "expected an operator (= != < <= > >= in, not in, exists)")
    op = re.sub(r"\s+", " ", op_match.group(1).lower()).replace("==", "=")
    pos = op_match.end()
    if op == "exists":
        values, texts = (), ()
    elif op in ("in", "not in"):
        values, texts, pos = _list(expr, pos)
    else:
        value, text, pos = _value(expr, pos)
        values, texts = (value,), (text,)
    if expr[pos:].strip():
        raise _fail(expr, pos + len(expr[pos:]) - len(expr[pos:].lstrip()), "unexpected text")
    return Clause(field, op, values, texts)


def parse_filters(exprs: list[str]) -> list[Clause]:
    return [parse_clause(e) for e in exprs]


def check_fields(clauses: list[Clause], known_metadata: set[str]) -> None:
    """Refuse fields no item has, listing the fields there are."""
    known = set(ITEM_FIELDS) | known_metadata
    for clause in clauses:
        if clause.field not in known:
            raise UserError(f"Unknown field {clause.field!r} in filter '{clause}'.",
                            f"Known fields: {', '.join(sorted(known))}.")


def _meta_condition(op: str, value, text: str) -> tuple[str, list]:
    if op == "=":
        if isinstance(value, (int, float)):
            return "(value_num = ? OR value_text = ? COLLATE NOCASE)", [value, text]
        return "value_text = ? COLLATE NOCASE", [text]
    if isinstance(value, (int, float)):
        return f"value_num {op} ?", [value]
    return f"value_text {op} ? COLLATE NOCASE", [str(value)]


def _item_condition(column: str, op: str, value) -> tuple[str, list]:
    collate = "" if column in ("width", "height") else " COLLATE NOCASE"
    return f"{column} {op} ?{collate}", [value]


def _positive(clause: Clause, op: str) -> tuple[str, list]:
    """SQL for the clause with != / not in turned into = / in (negated by the caller)."""
    if clause.field in ITEM_FIELDS:
        column = ITEM_FIELDS[clause.field]
        if op == "exists":
            return f"{column} IS NOT NULL", []
        parts = [_item_condition(column, "=" if op == "in" else op, v) for v in clause.values]
        return "(" + " OR ".join(p for p, _ in parts) + ")", [a for _, args in parts for a in args]
    if op == "exists":
        return "id IN (SELECT item_id FROM item_meta WHERE key = ?)", [clause.field]
    parts = [_meta_condition("=" if op == "in" else op, v, t) for v, t in zip(clause.values, clause.texts)]
    sql = " OR ".join(p for p, _ in parts)
    return f"id IN (SELECT item_id FROM item_meta WHERE key = ? AND ({sql}))", [
        clause.field, *[a for _, args in parts for a in args]]


def to_sql(clauses: list[Clause]) -> tuple[str, list]:
    """A condition on the `items` table that holds for items matching every clause."""
    if not clauses:
        return "1", []
    parts, args = [], []
    for clause in clauses:
        negate = clause.op in ("!=", "not in")
        op = {"!=": "=", "not in": "in"}.get(clause.op, clause.op)
        sql, clause_args = _positive(clause, op)
        parts.append(f"NOT COALESCE({sql}, 0)" if negate else sql)
        args += clause_args
    return " AND ".join(f"({p})" for p in parts), args
