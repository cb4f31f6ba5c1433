"""`search` terms: negative terms parse, mistyped options are errors (issue 16)."""

from __future__ import annotations

import pytest

from .conftest import make_dataset


@pytest.fixture
def captured(monkeypatch, cli, root):
    """Runs `search` with the library call replaced by a recorder (no model, no index)."""
    make_dataset(root, "demo", 3)
    calls = []

    def fake_search(paths, request, spec=None):  # noqa: ARG001
        calls.append({"terms": [(t.weight, t.kind, t.value) for t in request.terms], "k": request.k})
        return []

    monkeypatch.setattr("stylesearch.query.search.search", fake_search)
    monkeypatch.setattr("stylesearch.cli.search_cmd.choose_model", lambda *a, **kw: None)
    return calls


def test_mistyped_long_option_is_an_error_with_a_suggestion(cli, captured):
    proc = cli("search", "demo", "--like", "3", "--formt", "json", "-k", "1", check=False)
    assert proc.returncode == 2
    assert "No such option" in proc.stderr and "'--formt'" in proc.stderr.replace(": --formt", " '--formt'")
    assert "--format" in proc.stderr
    assert captured == []


def test_unknown_long_option_is_an_error(cli, captured):
    proc = cli("search", "demo", "red", "--colour", "red", check=False)
    assert proc.returncode == 2 and "No such option" in proc.stderr and "--colour" in proc.stderr
    proc = cli("search", "demo", "red", "--were", "category=shoes", check=False)
    assert proc.returncode == 2 and "No such option" in proc.stderr and "--were" in proc.stderr
    assert "--where" in proc.stderr
    assert captured == []


@pytest.mark.parametrize("args, terms", [
    (["--", "red dress", "-blue"], [(1.0, "text", "red dress"), (-1.0, "text", "blue")]),
    (["red dress", "-blue"], [(1.0, "text", "red dress"), (-1.0, "text", "blue")]),
    (["-0.5*image:x.jpg", "cat"], [(-0.5, "image", "x.jpg"), (1.0, "text", "cat")]),
    (["like:1", "-like:2"], [(1.0, "like", "1"), (-1.0, "like", "2")]),
    (["-kitten", "dog"], [(-1.0, "text", "kitten"), (1.0, "text", "dog")]),
])
def test_negative_terms_in_every_documented_form(cli, captured, args, terms):
    cli("search", "demo", "-k", "4", *args)
    assert captured == [{"terms": terms, "k": 4}]


def test_short_option_stays_an_option_and_option_values_may_start_with_dash(cli, captured):
    cli("search", "demo", "-k", "2", "red", "--min-score", "-0.5", "-f", "json")
    assert captured == [{"terms": [(1.0, "text", "red")], "k": 2}]
    proc = cli("search", "demo", "red", "-z", check=False)  # '-z' is not an option: a negative term
    assert proc.returncode == 0 and captured[-1]["terms"][-1] == (-1.0, "text", "z")
