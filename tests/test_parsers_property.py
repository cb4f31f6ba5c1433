"""Property tests of the URL-list parsers: any text gives entries or a StyleSearchError, never a crash,
and every valid URL written in a list comes out as an entry."""

from __future__ import annotations

import csv
import io
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stylesearch.errors import StyleSearchError  # noqa: E402
from stylesearch.ingest.fetch import valid_url  # noqa: E402
from stylesearch.ingest.sources import (CAPTION_KEYS, ID_KEYS, LIST_KEYS, URL_KEYS, Entry, guess_format, parse_entries,
                                        read_source)

FORMATS = ("txt", "csv", "tsv", "jsonl")
SETTINGS = settings(max_examples=100, deadline=None, database=None)

# Text with the characters parsers care about over-represented: delimiters, quotes, line breaks of
# every kind, NUL and other controls, a byte-order mark, JSON punctuation, odd unicode.
SPECIAL = list(",\t\"'\n\r\x00\x0b\x0c\x1c\x85\u2028\u2029\ufeff{}[]:#\\ ") + ["url", "http://", "id", "é", "𝔘", "\u202e"]
special = st.sampled_from(SPECIAL)
huge = st.builds(lambda s, n: s * n, st.sampled_from(["[", '{"a":', "9", "x", '"x']), st.integers(5_000, 150_000))
text = st.lists(st.one_of(special, special, st.text(max_size=8), huge), max_size=40).map("".join)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["url", "URL", "id", "caption", "src", "x"]) | st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)

_path_chars = st.sampled_from(list("abcxyz0189-._~%!$&'()*+;=:@/") + ["é", "ß", "字"])
urls = st.builds(
    lambda scheme, host, tld, path, query: f"{scheme}://{host}.{tld}/{path}" + (f"?{query}" if query else ""),
    st.sampled_from(["http", "https", "HTTP"]),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,12}", fullmatch=True),
    st.sampled_from(["com", "org", "example", "xn--p1ai"]),
    st.lists(_path_chars, max_size=30).map("".join),
    st.lists(st.sampled_from(list("abc=&,;") + ["%20"]), max_size=10).map("".join),
)
cells = st.text(max_size=12)  # anything, quoted by the csv writer as needed


def _parse_safely(fn, *args):
    try:
        entries, malformed = fn(*args)
    except StyleSearchError:
        return None
    assert isinstance(malformed, int) and malformed >= 0
    for entry in entries:
        assert isinstance(entry, Entry) and isinstance(entry.url, str)
        assert entry.url and entry.url == entry.url.strip()
        assert entry.id is None or isinstance(entry.id, str)
        assert entry.caption is None or isinstance(entry.caption, str)
    return entries


def _is_subsequence(wanted: list[str], got: list[str]) -> bool:
    it = iter(got)
    return all(any(w == g for g in it) for w in wanted)


@SETTINGS
@given(text, st.sampled_from(FORMATS))
@example("url\na\rb\n", "csv")  # a lone carriage return
@example('url\n"' + "x" * 200_000, "csv")  # a field over the csv module's size limit
@example("[" * 100_000, "jsonl")  # nesting deeper than the recursion limit
@example("1" * 5_000, "jsonl")  # more digits than int() accepts
@example('{"url": "  "}\n{"url": ["http://a/1.jpg"]}\n{"url": true}', "jsonl")  # blank and non-text URLs
def test_any_text_in_any_format_never_crashes(value, fmt):
    _parse_safely(parse_entries, io.StringIO(value), fmt)


@SETTINGS
@given(text)
def test_any_text_with_a_guessed_format_never_crashes(value):
    first = next((ln for ln in value.splitlines() if ln.strip()), "")
    assert guess_format(None, first) in FORMATS
    _parse_safely(read_source, "-", None, io.StringIO(value))


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["list.txt", "list.csv", "list.tsv", "list.jsonl", "list.json",
                                                 "list", "list.CSV"]))
def test_any_bytes_in_a_file_never_crash(tmp_path_factory, data, name):
    path = tmp_path_factory.mktemp("lists") / name
    path.write_bytes(data)
    _parse_safely(read_source, str(path))


@SETTINGS
@given(st.lists(json_values.map(json.dumps) | text, max_size=8))
def test_json_lines_of_any_shape_never_crash(lines):
    entries = _parse_safely(parse_entries, io.StringIO("\n".join(lines)), "jsonl")
    assert entries is not None  # jsonl never refuses a whole list


@SETTINGS
@given(st.lists(urls, min_size=1, max_size=6), st.lists(text.filter(lambda t: "\n" not in t), max_size=4))
def test_txt_urls_come_out(url_list, noise):
    assert all(valid_url(u) for u in url_list)
    body = "\n".join(line for pair in zip(url_list, noise + [""] * len(url_list)) for line in pair)
    for entries in (_parse_safely(parse_entries, io.StringIO(body), "txt"),
                    _parse_safely(read_source, "-", None, io.StringIO(body))):
        assert entries is not None and _is_subsequence(url_list, [e.url for e in entries])


def _table(rows: list[list[str]], delimiter: str) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue()


@SETTINGS
@given(st.lists(st.tuples(urls, cells, cells), min_size=1, max_size=6), st.sampled_from(["url", "URL", "image_url",
                                                                                        "src", " Link "]),
       st.sampled_from([",", "\t"]), st.booleans())
def test_table_urls_come_out(rows, url_key, delimiter, url_first):
    header = [url_key, "caption", "other"] if url_first else ["caption", url_key, "other"]
    body = [[u, c, o] if url_first else [c, u, o] for u, c, o in rows]
    table = _table([header] + body, delimiter)
    fmt = "csv" if delimiter == "," else "tsv"
    for entries in (_parse_safely(parse_entries, io.StringIO(table), fmt),
                    _parse_safely(read_source, "-", None, io.StringIO(table))):
        assert [e.url for e in entries] == [u for u, _, _ in rows]
        assert [e.caption for e in entries] == [c.strip() or None for _, c, _ in rows]


@SETTINGS
@given(st.lists(urls, min_size=1, max_size=6), st.sampled_from(["csv", "tsv"]))
def test_headerless_single_column_urls_come_out(url_list, fmt):
    table = _table([[u] for u in url_list], "," if fmt == "csv" else "\t")
    assert [e.url for e in _parse_safely(parse_entries, io.StringIO(table), fmt)] == url_list


@SETTINGS
@given(st.lists(st.tuples(urls, cells | st.integers() | st.none()), min_size=1, max_size=6),
       st.lists(json_values | text, max_size=4))
def test_jsonl_urls_come_out(records, noise):
    lines = [json.dumps({"url": u, "id": i}) for u, i in records]
    noise_lines = [json.dumps(n) if not isinstance(n, str) else n for n in noise]
    body = "\n".join(line for pair in zip(lines, noise_lines + [""] * len(lines)) for line in pair)
    entries = _parse_safely(parse_entries, io.StringIO(body), "jsonl")
    assert _is_subsequence([u for u, _ in records], [e.url for e in entries])
    guessed = _parse_safely(read_source, "-", None, io.StringIO(body))
    assert _is_subsequence([u for u, _ in records], [e.url for e in guessed])


# -- rows with arbitrary extra columns: metadata, and every URL of an images array as an entry

ROLE_NAMES = {*URL_KEYS, *LIST_KEYS, *ID_KEYS, *CAPTION_KEYS}
column_names = (st.text(max_size=8) | special).filter(lambda n: n.strip().lower() not in ROLE_NAMES)
cell_texts = cells | special | st.integers().map(str) | st.floats().map(str) | json_values.map(json.dumps) | \
    st.sampled_from(["1e999", "[" * 3000, "[" + "9" * 5000 + "]", "true", "007", '{"a": [1, {"b": null}]}'])
odd_values = json_values | st.sampled_from([10**400, -(10**1000), 2**63, float("inf"), "\ud800", "a\udfffb"]) | \
    st.integers(17, 60).map(lambda d: json.loads("[" * d + "1" + "]" * d))  # nested too deeply


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from stylesearch.store.catalog import open_catalog
    from stylesearch.store.paths import dataset_paths

    with open_catalog(dataset_paths("meta", tmp_path_factory.mktemp("catalog")), create=True) as cat:
        cat.upsert_item("x.jpg", status="ok")
        yield cat


def _check_rows(entries, url_lists, names, catalog):
    """One entry per distinct URL of each row's array, in order; the row's entries share its metadata
    (keys from its extra columns) and group, with positions 1..n; the metadata can be stored as it is."""
    assert entries is not None
    assert [e.url for e in entries] == [u for urls in url_lists for u in dict.fromkeys(urls)]
    item_id = catalog.item("x.jpg").id
    rows = iter(entries)
    for urls in url_lists:
        row = [next(rows) for _ in dict.fromkeys(urls)]
        assert [e.position for e in row] == list(range(1, len(row) + 1))
        assert len({e.group for e in row}) == 1 and isinstance(row[0].group, str) and row[0].group
        assert all(e.meta == row[0].meta for e in row) and set(row[0].meta) <= names
        with catalog.transaction():
            catalog.set_metadata(item_id, row[0].meta, replace=True)
        assert catalog.metadata([item_id]).get(item_id, {}) == row[0].meta


@SETTINGS
@given(st.lists(column_names, max_size=5, unique_by=lambda n: n.strip().lower()), st.integers(0, 5),
       st.sampled_from([",", "\t"]), st.data())
def test_table_rows_with_any_extra_columns(catalog, names, where, delimiter, data):
    rows = data.draw(st.lists(st.tuples(st.lists(urls, min_size=1, max_size=4),
                                        st.lists(cell_texts, min_size=len(names), max_size=len(names))),
                              min_size=1, max_size=5))
    header = names[:where] + ["images"] + names[where:]
    body = [cells_[:where] + [json.dumps(urls_)] + cells_[where:] for urls_, cells_ in rows]
    table = _table([header] + body, delimiter)
    entries = _parse_safely(parse_entries, io.StringIO(table), "csv" if delimiter == "," else "tsv")
    names = {n.strip() for n in header[1:]} | {header[0].lstrip("\ufeff").strip()}  # a BOM is not a name
    _check_rows(entries, [u for u, _ in rows], names, catalog)


@SETTINGS
@given(st.lists(st.tuples(st.lists(urls, min_size=1, max_size=4),
                          st.dictionaries(column_names, odd_values, max_size=5)), min_size=1, max_size=5),
       st.sampled_from(LIST_KEYS))
def test_json_rows_with_any_extra_fields(catalog, rows, list_key):
    lines = [json.dumps({list_key: urls_, **extra}) for urls_, extra in rows]
    entries = _parse_safely(parse_entries, io.StringIO("\n".join(lines)), "jsonl")
    names = {n.encode("utf-8", "replace").decode().strip() for _, extra in rows for n in extra}
    _check_rows(entries, [u for u, _ in rows], names, catalog)
