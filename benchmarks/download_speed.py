"""Images/s of `download` from a loopback HTTP server serving generated JPEGs.
Usage: python benchmarks/download_speed.py [COUNT]"""

import io
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from stylesearch.ingest.download import DownloadOptions, download
from stylesearch.ingest.samples import render
from stylesearch.ingest.sources import Entry
from stylesearch.store.paths import dataset_paths

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
bodies = []
for n in range(count):
    buf = io.BytesIO()
    render(("stripes", "dots", "rings")[n % 3], "cool", n, (320, 240)).save(buf, format="JPEG", quality=85)
    bodies.append(buf.getvalue())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = bodies[int(self.path.strip("/").split(".")[0])]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{httpd.server_address[1]}"
tmp = Path(tempfile.mkdtemp())
entries = [Entry(f"{url}/{n}.jpg") for n in range(count)]
start = time.perf_counter()
result = download(dataset_paths("bench", tmp), entries, DownloadOptions(workers=16, per_host=16))
elapsed = time.perf_counter() - start
print(f"download: {result.ok} ok, {result.failed} failed in {elapsed:.2f} s = {count / elapsed:.1f} images/s "
      f"(loopback, {sum(map(len, bodies)) / count / 1024:.0f} KiB each, validated + hashed + cataloged)")
start = time.perf_counter()
again = download(dataset_paths("bench", tmp), entries)
print(f"resume rerun: {again.skipped_done} skipped in {time.perf_counter() - start:.2f} s")
httpd.shutdown()
shutil.rmtree(tmp)
