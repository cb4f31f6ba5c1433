"""What counts as a URL: the one home of that decision for every reader of user input."""

from __future__ import annotations

import re

_HTTP = re.compile(r"^https?://", re.I)
_ANY_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_http_url(value: str) -> bool:
    """An http(s) URL: what stylesearch fetches (a query image, a download), as opposed to a file path."""
    return isinstance(value, str) and bool(_HTTP.match(value))


def looks_like_url(text: str) -> bool:
    """Text that starts as a URL of any scheme (a line of a URL list, as opposed to a CSV header)."""
    return bool(_ANY_SCHEME.match(text))
