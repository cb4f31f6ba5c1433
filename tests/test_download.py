"""download against a loopback HTTP server: good images, broken ones, retries, resume, dedup."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stylesearch.errors import UserError
from stylesearch.ingest.download import DownloadOptions, download
from stylesearch.ingest.fetch import FetchError, fetch_bytes, fetch_once
from stylesearch.ingest.samples import render
from stylesearch.ingest.sources import Entry, guess_format, parse_entries, read_source, sample_entries
from stylesearch.store.catalog import open_catalog
from stylesearch.store.paths import dataset_paths


def _jpeg(seed: int, size=(96, 72)) -> bytes:
    buf = io.BytesIO()
    render("stripes", "warm", seed, size).save(buf, format="JPEG")
    return buf.getvalue()


class Server:
    """Serves /img/N.jpg, /dup.jpg (same bytes as /img/0.jpg), /missing (404), /truncated.jpg,
    /html (HTML page), /slow.jpg (stalls), /loop (redirect loop), /flaky.jpg (503 then OK),
    /tiny.jpg (8x8), /busy.jpg (429 with Retry-After then OK), /trickle-body and
    /trickle-headers (one byte every 0.1 s), /to-ftp, /to-file (redirects to other schemes),
    /hop (redirects to /to-ftp), /to-image (redirects to /img/2.jpg).
    `delay` seconds are spent before answering /img/ requests."""

    def __init__(self, count: int = 6):
        self.hits: dict[str, int] = {}
        self.images = {n: _jpeg(n) for n in range(count)}
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                server.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.handle_error = lambda request, address: None  # clients hanging up early is expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def route(self, h):
        path, hits = h.path, self.hits[h.path]
        if path.startswith("/img/"):
            time.sleep(self.delay)
            return self.send(h, 200, self.images[int(path.split("/")[-1].split(".")[0])])
        if path.startswith("/trickle-"):
            return self.trickle(h, path == "/trickle-headers")
        redirects = {"/to-ftp": "ftp://127.0.0.1:9/x.jpg", "/to-file": "file:///etc/passwd", "/hop": "/to-ftp",
                     "/to-image": "/img/2.jpg"}
        if path in redirects:
            return self.redirect(h, redirects[path])
        if path == "/dup.jpg":
            return self.send(h, 200, self.images[0])
        if path == "/truncated.jpg":
            return self.send(h, 200, self.images[1][: len(self.images[1]) * 2 // 3])
        if path == "/html":
            return self.send(h, 200, b"<html><body>not an image</body></html>", "text/html")
        if path == "/slow.jpg":
            time.sleep(1.0)
            return self.send(h, 200, self.images[5])
        if path == "/loop":
            return self.redirect(h, "/loop")
        if path == "/flaky.jpg":
            return self.send(h, 503, b"busy") if hits < 3 else self.send(h, 200, self.images[3])
        if path == "/busy.jpg":
            return self.send(h, 429, b"slow down", headers={"Retry-After": "0"}) if hits < 2 else \
                self.send(h, 200, self.images[4])
        if path == "/tiny.jpg":
            return self.send(h, 200, _jpeg(7, (8, 8)))
        return self.send(h, 404, b"nope")

    @staticmethod
    def redirect(h, location):
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    @staticmethod
    def trickle(h, in_headers: bool, seconds: float = 10.0):
        """One byte every 0.1 s for `seconds`: never idle long enough for a per-read socket timeout."""
        head = b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n"
        body = b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" if not in_headers else head + b"X-Slow: "
        with contextlib.suppress(OSError):
            h.wfile.write(body)
            for _ in range(int(seconds / 0.1)):
                h.wfile.write(b"a")
                time.sleep(0.1)

    @staticmethod
    def send(h, code, body, ctype="image/jpeg", headers=None):
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


FAST = DownloadOptions(workers=4, retries=3, backoff=0.01, timeout=0.4)
QUICK = DownloadOptions(workers=2, retries=0, timeout=0.5)


def test_download_validates_dedups_and_records_reasons(tmp_path, server):
    paths = dataset_paths("web", tmp_path)
    names = ["/img/0.jpg", "/img/1.jpg", "/dup.jpg", "/missing", "/truncated.jpg", "/html", "/slow.jpg",
             "/loop", "/flaky.jpg", "/busy.jpg", "/tiny.jpg"]
    entries = [Entry(server.url + n) for n in names] + [Entry("ftp://nope/x.jpg"), Entry("not a url")]
    result = download(paths, entries, FAST)
    assert result.ok == 4  # img/0, img/1, flaky (after 503s), busy (after 429)
    assert result.duplicates == 1 and result.bad_urls == 2
    assert result.failed == 6
    assert sum(result.reasons.values()) == 6
    for expected in ("HTTP 404", "invalid image: cannot decode", "invalid image: not an image",
                     "redirect loop or too many redirects", "too small"):
        assert expected in result.reasons, result.reasons
    assert any(r.startswith(("network", "too slow")) for r in result.reasons)  # the slow one timed out
    with open_catalog(paths) as cat:
        assert cat.status_counts() == {"ok": 4}
        assert cat.download_record(server.url + "/missing")["status"] == "failed"
        assert cat.download_record(server.url + "/slow.jpg")["status"] == "error"  # transient
        twins = [cat.download_record(server.url + n)["reason"] or "" for n in ("/img/0.jpg", "/dup.jpg")]
        assert sorted(r.startswith("duplicate of") for r in twins) == [False, True]  # whichever came second
        item = cat.items_with_hash(cat.download_record(server.url + "/img/0.jpg")["content_hash"])[0]
    assert (paths.images / item.path).read_bytes() == server.images[0]  # original bytes kept
    assert server.hits["/flaky.jpg"] == 3 and server.hits["/busy.jpg"] == 2


def test_rerun_skips_done_and_permanent_failures_but_retries_transient(tmp_path, server):
    paths = dataset_paths("resume", tmp_path)
    entries = [Entry(server.url + n) for n in ("/img/2.jpg", "/missing", "/slow.jpg")]
    download(paths, entries, FAST)
    before = dict(server.hits)
    again = download(paths, entries, DownloadOptions(workers=2, timeout=3))
    assert again.skipped_done == 2 and again.ok == 1  # slow.jpg now succeeds with a longer timeout
    assert server.hits["/img/2.jpg"] == before["/img/2.jpg"]
    assert server.hits["/missing"] == before["/missing"]
    forced = download(paths, entries, DownloadOptions(retry_failed=True, retries=0))
    assert forced.failed == 1 and server.hits["/missing"] == before["/missing"] + 1


def test_cli_download_from_stdin_csv_with_summary_json(cli, server):
    csv_text = "id,url,caption\n" + "".join(f"pic{n},{server.url}/img/{n}.jpg,picture {n}\n" for n in range(3))
    csv_text += ",,\nbroken-row-without-url,,x\n"
    out = cli.json("download", "fromcsv", "-", "--json", "--list-format", "csv", input=csv_text)
    assert out["ok"] == 3 and out["malformed_lines"] == 1
    info = cli.json("info", "fromcsv", "--json")
    assert info["items"]["ok"] == 3 and info["downloads"] == {"ok": 3}
    files = sorted(p.name for p in (cli.root / "fromcsv" / "images").iterdir())
    assert files == ["pic0.jpg", "pic1.jpg", "pic2.jpg"]


def test_url_list_formats():
    text = "# comment\nhttp://a/1.jpg\n\nhttp://a/2.jpg\n"
    assert [e.url for e in parse_entries(io.StringIO(text), "txt")[0]] == ["http://a/1.jpg", "http://a/2.jpg"]
    tsv = "URL\tTitle\nhttp://a/1.jpg\tOne\n"
    assert parse_entries(io.StringIO(tsv), "tsv")[0] == [Entry("http://a/1.jpg", None, "One")]
    jsonl = '{"url": "http://a/1.jpg", "id": "x", "caption": "c"}\n{broken\n["no", "url"]\n'
    entries, bad = parse_entries(io.StringIO(jsonl), "jsonl")
    assert entries == [Entry("http://a/1.jpg", "x", "c")] and bad == 2
    headerless = "http://a/1.jpg,foo\n"
    assert parse_entries(io.StringIO(headerless), "csv")[0] == [Entry("http://a/1.jpg")]
    assert guess_format("list.jsonl", "") == "jsonl" and guess_format(None, "{}") == "jsonl"
    assert guess_format(None, "url,id") == "csv" and guess_format(None, "http://x") == "txt"


def test_read_source_file_and_sample_urls(tmp_path):
    f = tmp_path / "urls.txt"
    f.write_text("http://a/1.jpg\n")
    assert read_source(str(f))[0] == [Entry("http://a/1.jpg")]
    sample = sample_entries("picsum", 3, seed=5)
    assert [e.url for e in sample][0] == "https://picsum.photos/seed/stylesearch-5-0/640/480"
    assert len({e.url for e in sample}) == 3


def test_cli_exit_code_when_every_download_fails(cli, server):
    proc = cli("download", "allbad", "-", "--retries", "0", input=f"{server.url}/missing\n{server.url}/html\n",
               check=False)
    assert proc.returncode == 1 and "all 2 downloads failed" in proc.stderr
    assert "warning:" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("path", ["/trickle-body", "/trickle-headers"])
def test_trickling_server_cannot_outlast_the_timeout(server, path):
    start = time.monotonic()
    with pytest.raises(FetchError, match="too slow"):
        fetch_once(server.url + path, timeout=0.5, max_bytes=1 << 20)
    assert time.monotonic() - start < 1.5  # 0.5 s in all, not 0.5 s per byte


def test_download_of_a_trickling_server_fails_in_time(tmp_path, server):
    paths = dataset_paths("trickle", tmp_path)
    start = time.monotonic()
    result = download(paths, [Entry(server.url + "/trickle-body"), Entry(server.url + "/img/1.jpg")],
                      DownloadOptions(workers=2, retries=1, backoff=0.01, timeout=0.5))
    assert time.monotonic() - start < 3.0  # two attempts of at most 0.5 s each
    assert result.ok == 1 and result.reasons == {"too slow": 1}
    with open_catalog(paths) as cat:
        assert cat.download_record(server.url + "/trickle-body")["status"] == "error"  # retried on rerun


def test_redirects_to_other_schemes_are_blocked_on_every_hop(tmp_path, server):
    paths = dataset_paths("redirects", tmp_path)
    entries = [Entry(server.url + p) for p in ("/to-ftp", "/to-file", "/hop", "/to-image")]
    result = download(paths, entries, QUICK)
    assert result.ok == 1  # an http redirect is still followed
    assert result.reasons == {"blocked redirect to ftp://127.0.0.1:9/x.jpg": 2,
                              "blocked redirect to file:///etc/passwd": 1}
    assert server.hits["/to-ftp"] == 2  # once directly, once as the second hop of /hop
    with open_catalog(paths) as cat:
        assert cat.download_record(server.url + "/to-file")["status"] == "failed"  # permanent
    with pytest.raises(UserError, match="blocked redirect to ftp://"):
        fetch_bytes(server.url + "/hop", QUICK)


def test_csv_without_url_column_is_refused_with_the_columns_found():
    with pytest.raises(UserError, match=r"no URL column.*'name', 'price'"):
        parse_entries(io.StringIO("name,price\nhttp://a/1.jpg,3\n"), "csv")
    with pytest.raises(UserError, match=r"no URL column.*'title'"):
        parse_entries(io.StringIO("title\tsize\nx\t1\n"), "tsv")
    with pytest.raises(UserError, match="no URL column"):  # guessed as csv when read from stdin
        read_source("-", stdin=io.StringIO("name,price\nfoo,3\n"))
    headerless = "\nhttp://a/1.jpg\nhttp://a/2.jpg\n"
    assert parse_entries(io.StringIO(headerless), "csv")[0] == [Entry("http://a/1.jpg"), Entry("http://a/2.jpg")]
    assert parse_entries(io.StringIO("http://a/1.jpg\n"), "tsv")[0] == [Entry("http://a/1.jpg")]
    bom = "\ufeffURL,id\nhttp://a/1.jpg,7\n"
    assert read_source("-", stdin=io.StringIO(bom))[0] == [Entry("http://a/1.jpg", "7")]


def test_odd_urls_are_counted_or_fetched_never_fatal(tmp_path, server):
    paths = dataset_paths("odd", tmp_path)
    odd = ["http://[::1/x.jpg", "http://127.0.0.1:99999/x.jpg", "http://127.0.0.1/a\x00b.jpg", "http://\ud800.jpg",
           "javascript:alert(1)", "http:///no-host.jpg"]
    entries = [Entry(u) for u in odd] + [Entry(server.url + "/img/1.jpg?q=a b é")]  # sent percent-encoded
    result = download(paths, entries, QUICK)
    assert result.bad_urls == len(odd) and result.ok == 1 and result.failed == 0
    assert server.hits == {"/img/1.jpg?q=a%20b%20%C3%A9": 1}
