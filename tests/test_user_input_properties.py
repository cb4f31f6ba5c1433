"""Property-based tests: parsers of user input raise nothing but StyleSearchError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stylesearch.errors import StyleSearchError
from stylesearch.learn.judgments import CHOICES, parse_log_lines
from stylesearch.query.search import parse_terms

TERM_PARTS = st.tuples(st.sampled_from(["", "+", "-", " -", "--"]),
                       st.sampled_from(["", "0.5*", "2*", ".3*", "1e3*", "-1*", "*"]),
                       st.sampled_from(["", "text:", "image:", "like:", "LIKE:", "url:"]),
                       st.text(max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), TERM_PARTS.map("".join)), max_size=6),
       st.lists(st.text(max_size=10), max_size=2), st.lists(st.text(max_size=10), max_size=2))
def test_query_terms_parse_or_raise_a_user_error(args, images, likes):
    try:
        terms = parse_terms(args, images, likes)
    except StyleSearchError:
        return
    assert len(terms) == len(args) + len(images) + len(likes)
    for term in terms:
        assert term.kind in ("text", "image", "like") and term.value and term.weight != 0
        assert term.value == term.value.strip()
    for arg, term in zip(args, terms):  # in order: each word's sign, kind and value come from that word
        word = arg.strip()
        assert (term.weight < 0) == word.startswith("-") and term.value in word and word.endswith(term.value)
        assert term.kind == "text" or f"{term.kind}:" in word
    given_values = [(t.kind, t.value) for t in terms[len(args):]]
    assert given_values == [("image", v.strip()) for v in images] + [("like", v.strip()) for v in likes]


@given(st.sampled_from(["", "-", "+"]), st.floats(0.01, 100, allow_nan=False), st.sampled_from(["text", "image", "like"]),
       st.text(min_size=1, max_size=12).filter(lambda v: v.strip() and v.strip() == v))
def test_well_formed_terms_round_trip(sign, weight, kind, value):
    [term] = parse_terms([f"{sign}{weight!r}*{kind}:{value}"])
    assert term.kind == kind and term.value == value
    assert abs(abs(term.weight) - weight) < 1e-9 and (term.weight < 0) == (sign == "-")


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)
RECORDS = st.fixed_dictionaries({}, optional={
    "id": JSON_VALUES | st.text(max_size=6), "anchor": JSON_VALUES | st.sampled_from(["a", "b", "c"]),
    "left": JSON_VALUES | st.sampled_from(["a", "b", "c"]), "right": JSON_VALUES | st.sampled_from(["a", "b", "c"]),
    "choice": JSON_VALUES | st.sampled_from(CHOICES), "undo": JSON_VALUES, "session": JSON_VALUES})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(RECORDS.map(json.dumps), JSON_VALUES.map(json.dumps), st.text(max_size=40)), max_size=12))
def test_judgment_lines_never_crash_and_every_line_is_accounted_for(lines):
    contents = parse_log_lines(lines)
    nonblank = sum(1 for line in lines if line.strip())
    assert len(contents.judgments) + contents.malformed + contents.undone <= nonblank
    for judgment in contents.judgments:
        assert judgment["choice"] in CHOICES
        assert len({judgment["anchor"], judgment["left"], judgment["right"]}) == 3


def test_judgment_lines_with_huge_numbers_or_deep_nesting_are_counted_as_malformed():
    good = json.dumps({"anchor": "a", "left": "b", "right": "c", "choice": "left", "id": "j1"})
    lines = [good, '{"anchor": ' + "1" * 5000 + "}", "[" * 100_000 + "]" * 100_000]
    contents = parse_log_lines(lines)
    assert [j["id"] for j in contents.judgments] == ["j1"]
    assert contents.malformed == 2


FILTER_VALUES = st.text(max_size=15) | st.builds("{}{}".format, st.sampled_from(["@", "(@", "(a, @", "'@", " @"]),
                                                  st.text(max_size=12))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40) | st.builds("{}{}{}".format, st.sampled_from(["a", "price", " x.y ", "1a", ""]),
                                         st.sampled_from(["=", "<", "<=", "!=", " in ", " not in ", " exists", "<<"]),
                                         FILTER_VALUES))
def test_filter_expressions_parse_or_raise_a_user_error(expr):
    from stylesearch.query.filters import has_refs, parse_clause, to_sql

    try:
        clause = parse_clause(expr)
    except StyleSearchError as exc:
        assert "position" in exc.message
        return
    if has_refs([clause]):  # `@FIELD` without a query item: refused by name, never SQL
        try:
            to_sql([clause])
        except StyleSearchError as exc:
            assert "no query item" in exc.message
            return
        raise AssertionError(f"{expr!r} became SQL with a reference in it")
    sql, args = to_sql([clause])
    assert sql.count("?") == len(args)


ITEM_META = st.dictionaries(st.sampled_from(["season", "season_pred", "tags", "maker", "price"]),
                            JSON_VALUES | st.integers(min_value=-10**30, max_value=10**30), max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["season", "tags", "maker", "maker.name", "price", "width", "caption", "group", "nothing"]),
       st.sampled_from(["=", "!=", "<", ">=", " in ", " not in "]), ITEM_META)
def test_field_references_resolve_to_plain_values_or_raise_a_user_error(tmp_path_factory, ref, op, meta):
    from stylesearch.query.filters import has_refs, matching_ids, parse_clause, resolve_refs
    from stylesearch.store.catalog import Item, open_catalog
    from stylesearch.store.paths import dataset_paths

    value = f"(x, @{ref})" if "in" in op else f"@{ref}"
    clause = parse_clause(f"season{op}{value}")
    item = Item(7, "a/b.jpg", None, None, None, 640, None, "ok", caption=None, group_id="g1")
    try:
        [resolved] = resolve_refs([clause], item, meta)
    except StyleSearchError as exc:
        assert "item 7" in exc.message and ref.split(".")[0] in exc.message
        return
    assert not has_refs([resolved]) and len(resolved.values) == len(resolved.texts)
    own = meta.get(ref, meta.get(ref + "_pred")) if ref in meta or ref + "_pred" in meta else None
    if ref in ("season", "price") and own is not None and not isinstance(own, (list, dict)) and op.strip() in "=!=":
        got = resolved.values[-1]
        assert got == ("true" if own else "false") if isinstance(own, bool) else (got == own or got == float(own))
    paths = dataset_paths("refs", tmp_path_factory.mktemp("refs"))
    with open_catalog(paths, create=True) as cat:  # the resolved filter runs against a catalog holding the item
        with cat.transaction():
            cat.set_metadata(cat.upsert_item("a/b.jpg", status="ok", width=640), {"season": meta.get("season")})
        assert matching_ids(cat, [resolved], {"season"}) <= {1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["path", "brand", "price", "tags", "x"]),
                                JSON_VALUES | st.text(max_size=6) | st.integers(min_value=-10**400, max_value=10**400),
                                max_size=5), max_size=5),
       st.lists(st.text(max_size=30), max_size=4))
def test_metadata_files_store_or_raise_a_user_error(tmp_path_factory, records, csv_lines):
    from stylesearch.ingest.metadata import attach_metadata, read_metadata_rows
    from stylesearch.store.catalog import open_catalog
    from stylesearch.store.paths import dataset_paths

    paths = dataset_paths("props", tmp_path_factory.mktemp("meta"))
    with open_catalog(paths, create=True) as cat:
        cat.upsert_item("a.jpg", status="ok")
    rows = [{"path": "a.jpg", **r} for r in records]
    if not rows:  # nothing names an item
        with pytest.raises(StyleSearchError, match="name no item"):
            attach_metadata(paths, read_metadata_rows("m.jsonl", "")[0], lock=False)
        return
    result = attach_metadata(paths, read_metadata_rows("m.jsonl", "\n".join(map(json.dumps, rows)))[0], lock=False)
    mine = [r for r in rows if str(r["path"]) == "a.jpg"]  # rows naming the one item (a record may name another)
    assert (result.updated, result.unknown_items) == (len(mine), len(rows) - len(mine))
    expected: dict = {}
    for row in mine:  # merged in order; a None value removes the field
        expected = {k: v for k, v in {**expected, **row}.items() if v is not None and k != "path"}
    with open_catalog(paths) as cat:
        assert cat.metadata([1]).get(1, {}) == expected
    try:
        table, malformed = read_metadata_rows("m.csv", "path,brand\n" + "\n".join(csv_lines))
        result = attach_metadata(paths, table, lock=False)
    except StyleSearchError as exc:  # a CSV the csv module cannot read (its line), or one without rows
        assert "as CSV near line" in exc.message or "name no item" in exc.message
        return
    assert malformed == 0 and result.updated + result.unknown_items == len(table)
    assert result.updated == sum(1 for r in table if r.get("path") == "a.jpg")
