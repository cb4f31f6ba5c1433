"""The filter grammar of filtered search, compiled to conditions on the catalog.

One clause per filter, all clauses must hold (AND):

    FIELD = VALUE      FIELD != VALUE      FIELD < VALUE   (also <=, >, >=)
    FIELD in (A, B)    FIELD not in (A, B) FIELD exists

FIELD is one of the item's own fields (width, height, path, group, caption) or else a metadata
field (nested objects as `a.b`; a list matches when any element does); `meta.FIELD` always names
the metadata field FIELD, e.g. `meta.width` or `meta.id`. Results show a metadata field whose name
is also a result field under that `meta.` name (`meta_column`). VALUE is a number, a bare word, or a
quoted string ('...' or "..."). Text compares without regard to case; `<`/`>` compare numbers as
numbers (of any size: beyond SQLite's integers as floats) and other values as text (so ISO dates
work). `!=` and `not in` also match items that do not have the field.

A bare value `@FIELD` is the query item's own value of FIELD (`item_type != @item_type`): its metadata
value where it has one, else the learned prediction FIELD_pred (learn/attributes.py), or the item's
width, height, path, group or caption; a list value compares as `in` / `not in`. `resolve_refs` puts
the values in; a clause still holding a reference cannot be turned into SQL. A quoted '@x' is text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import UserError

ITEM_FIELDS = {"width": "width", "height": "height", "path": "path", "group": "group_id", "caption": "caption"}
META_PREFIX = "meta."
# fields of result rows (search, the server) and coordinate files (umap-export): metadata of these names is
# shown as meta.NAME, never in their place
RESULT_FIELDS = frozenset({"rank", "score", "dataset", "id", "path", "file", "group", "meta", "x", "y", "hash",
                           *ITEM_FIELDS})
_FIELD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*")
_OPERATOR = re.compile(r"(not\s+in\b|in\b|exists\b|==|!=|<=|>=|=|<|>)\s*", re.I)
_REF = re.compile(r"@[A-Za-z_][A-Za-z0-9_.-]*")
_VALUE = re.compile(r"""\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^,()'"]*[^,()'"\s]))\s*""")
GRAMMAR_HINT = ("Filters are FIELD OP VALUE with OP one of = != < <= > >=, or FIELD in (A, B), "
                "FIELD not in (A, B), FIELD exists; e.g. category=summer, \"style in (photo, illustration)\", price<50.")


def meta_column(key: str) -> str:
    """The name a metadata field is shown and filtered under beside result fields: `meta.KEY` when
    KEY is a result field (or starts with `meta.`), else KEY."""
    return META_PREFIX + key if key in RESULT_FIELDS or key.startswith(META_PREFIX) else key


def flat_meta(meta: dict) -> dict:
    """Metadata as flat columns under their shown names; lists and objects as JSON text."""
    return {meta_column(k): json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
            for k, v in meta.items()}


def _target(field: str) -> tuple[str | None, str]:
    """(the items column, or None for a metadata field; the metadata key the field names otherwise)."""
    if field.startswith(META_PREFIX):
        return None, field[len(META_PREFIX):]
    return ITEM_FIELDS.get(field), field


@dataclass(frozen=True)
class Ref:
    """`@FIELD` in a filter: the query item's value of FIELD, put in by `resolve_refs`."""

    field: str

    def __str__(self) -> str:
        return f"@{self.field}"


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
    """The number a bare word writes: an int SQLite can hold (up to 18 digits), else a float (larger
    integers approximately, 1e400 as inf); other words, and NaN, stay text."""
    if re.fullmatch(r"[+-]?[0-9]{1,18}", text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return text
    return text if math.isnan(value) else value


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
    if m.group(3)[0] == "@":
        if not _REF.fullmatch(m.group(3)):
            raise _fail(expr, m.start(3), "expected a field name after '@' (quote a value that starts with '@')")
        return Ref(m.group(3)[1:]), m.group(3), m.end()
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
    if expr.encode("utf-8", "replace").decode("utf-8") != expr:
        raise UserError(f"Cannot read filter {expr!r}: it is not valid Unicode text.", GRAMMAR_HINT)
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
    for clause in clauses:
        column, key = _target(clause.field)
        if column is None and key not in known_metadata:
            known = set(ITEM_FIELDS) | {meta_column(k) for k in known_metadata}
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


def _json_list(values) -> str:
    """A list of any length as one JSON parameter (read with json_each): no limit on SQL variables or
    expression depth. Infinities, which equal no stored value, are left out."""
    return json.dumps([v for v in values if not (isinstance(v, float) and math.isinf(v))])


def _in_list(column: str | None, clause: Clause) -> tuple[str, list]:
    """`IN` as the union of the `=` conditions of its values, on an items column or (None) on item_meta."""
    if column in ("width", "height"):
        return f"{column} IN (SELECT value FROM json_each(?))", [_json_list(clause.values)]
    if column is not None:  # text columns: numbers as SQLite writes them, as `=` compares them
        return (f"{column} COLLATE NOCASE IN (SELECT CAST(value AS TEXT) FROM json_each(?))",
                [_json_list(clause.values)])
    numbers = [v for v in clause.values if isinstance(v, (int, float))]
    return ("(value_num IN (SELECT value FROM json_each(?)) OR "
            "value_text COLLATE NOCASE IN (SELECT value FROM json_each(?)))", [_json_list(numbers),
                                                                               json.dumps(list(clause.texts))])


def _positive(clause: Clause, op: str) -> tuple[str, list]:
    """SQL for the clause with != / not in turned into = / in (negated by the caller)."""
    column, key = _target(clause.field)
    if column is not None:
        if op == "exists":
            return f"{column} IS NOT NULL", []
        if op == "in":
            return _in_list(column, clause)
        return _item_condition(column, op, clause.values[0])
    if op == "exists":
        return "id IN (SELECT item_id FROM item_meta WHERE key = ?)", [key]
    sql, args = (_in_list(None, clause) if op == "in" else
                 _meta_condition(op, clause.values[0], clause.texts[0]))
    return f"id IN (SELECT item_id FROM item_meta WHERE key = ? AND {sql})", [key, *args]


def to_sql(clauses: list[Clause]) -> tuple[str, list]:
    """A condition on the `items` table that holds for items matching every clause (references resolved)."""
    if not clauses:
        return "1", []
    check_resolved(clauses)
    parts, args = [], []
    for clause in clauses:
        negate = clause.op in ("!=", "not in")
        op = {"!=": "=", "not in": "in"}.get(clause.op, clause.op)
        sql, clause_args = _positive(clause, op)
        parts.append(f"NOT COALESCE({sql}, 0)" if negate else sql)
        args += clause_args
    return _all(parts), args


def _all(parts: list[str]) -> str:
    """`(a) AND (b) AND ...` as a balanced tree: any number of clauses stays within SQLite's expression depth."""
    if len(parts) == 1:
        return f"({parts[0]})"
    middle = len(parts) // 2
    return f"({_all(parts[:middle])} AND {_all(parts[middle:])})"


def matching_ids(catalog, clauses: Sequence[Clause], known_fields: set[str] | None = None) -> set[int]:
    """Ids of the catalog's live items matching every clause, unknown fields refused first: the one way
    from filters to items, for searches and item listings alike (`known_fields`: the catalog's metadata
    fields when the caller already has them)."""
    clauses = list(clauses)
    check_fields(clauses, set(catalog.metadata_fields()) if known_fields is None else known_fields)
    return catalog.live_ids_where(*to_sql(clauses))


def has_refs(clauses: Sequence[Clause]) -> bool:
    return any(isinstance(v, Ref) for clause in clauses for v in clause.values)


def check_resolved(clauses: Sequence[Clause]) -> None:
    """Refuse clauses still holding an `@FIELD` (a search without a query item to take it from)."""
    for clause in clauses:
        ref = next((v for v in clause.values if isinstance(v, Ref)), None)
        if ref is not None:
            raise UserError(f"Filter '{clause}' compares with the query item's {ref}, but this search has no "
                            "query item to take it from.",
                            f"Search like an item (like:ID) to compare with its values, or quote '{ref}' to match "
                            "that text.")


def query_item_value(item, meta: dict, field: str):
    """The value `@field` stands for: an item field's (width, height, path, group, caption), else the
    metadata value, the user's own before the learned FIELD_pred; None when the item has neither."""
    from ..store.meta_values import meta_value

    column, key = _target(field)
    if column is not None:
        return getattr(item, column)
    value = meta_value(meta, key)
    return value if value is not None else meta_value(meta, key + "_pred")


def resolve_refs(clauses: Sequence[Clause], item, meta: dict) -> list[Clause]:
    """The clauses with every `@FIELD` replaced by the query item's value (`query_item_value`); a list
    value makes `=` / `!=` into `in` / `not in`. UserError when the item has no value to compare with."""
    out = []
    for clause in clauses:
        values, texts = [], []
        for value, text in zip(clause.values, clause.texts):
            if not isinstance(value, Ref):
                values.append(value)
                texts.append(text)
                continue
            for element in _elements(clause, value, query_item_value(item, meta, value.field), item):
                values.append(element)
                texts.append(repr(element) if isinstance(element, float) else str(element))
        op = clause.op
        if op in ("=", "!=") and len(values) != 1:
            op = "in" if op == "=" else "not in"
        elif len(values) != len(clause.values) and op not in ("in", "not in"):
            raise UserError(f"Filter '{clause}': item {item.id} has a list of values there; '{clause.op}' compares "
                            "with one value.", "Use =, != or in with a field holding a list.")
        out.append(Clause(clause.field, op, tuple(values), tuple(texts)))
    return out


def _elements(clause: Clause, ref: Ref, value, item) -> list:
    """The values a referenced value compares as: one number or text, each element of a list."""
    if value is None:
        raise UserError(f"Filter '{clause}': item {item.id} ({item.path}) has no value of {ref.field!r}, given or "
                        "predicted, to compare with.",
                        "Give it a value (metadata), learn the field, or leave out the filter.")
    elements = value if isinstance(value, list) else [value]
    out = []
    for element in elements:
        if isinstance(element, bool):
            out.append("true" if element else "false")
        elif isinstance(element, int):
            out.append(_number(str(element)))  # beyond SQLite's integers: a float, as when typed
        elif isinstance(element, (float, str)):
            out.append(element)
        else:
            raise UserError(f"Filter '{clause}': the value of {ref.field!r} of item {item.id} is an object, which "
                            "does not compare.", "Compare with one of its fields, e.g. @FIELD.NAME.")
    return out
