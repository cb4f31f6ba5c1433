"""A flood of connections that never finish their headers against a real `stylesearch serve`, while
clients send authenticated requests (a new connection each, as curl does), over loopback.

Scenarios, in the same run: the baseline (plain uvicorn defaults: `uvicorn.run(create_app(...))`,
the process's usual soft descriptor limit of 1024), then `serve` with its guards (header deadline,
descriptor limit raised, connections capped with the longest-waiting closed first) from the same
limits, then `serve` with a hard limit of 1024 (the cap at work). The flooder, in its own process,
opens CONNECTIONS connections (4 threads, 1 s connect timeout, half of them with the token), each
sending a partial request and then nothing, holding up to 12,000 at a time (fewer if its own
descriptor limit is lower; the oldest let go first). A scenario stops after CONNECTIONS attempts
or SECONDS. Prints per scenario: the flood's seconds, connections opened/failed and how many the
server had closed by the time the flooder let go, requests (CLIENTS threads, one at a time each,
50 ms apart) served/failed and their latency p50/p95 during the flood (a failure counts at its
5 s timeout), the server's peak descriptor count and its asyncio EMFILE errors (logged by the
accept loop). Linux (source addresses 127.0.0.x, /proc).
Usage: python benchmarks/server_flood.py [CONNECTIONS] [SECONDS]
"""

import collections
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOKEN = "flood-bench"
CLIENTS = 4  # threads sending authenticated requests during the flood
SERVER = """import json, resource, sys
mode, config, soft, hard = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
from stylesearch.server.config import ServerConfig
config = ServerConfig(**config)
if mode == "baseline":
    import uvicorn
    from stylesearch.server.app import create_app
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="warning")
else:
    from stylesearch.server.listen import serve
    serve(config)
"""
PARTIAL = (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
           f"GET /api/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n".encode())


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def flood(port: int, total: int, seconds: float, threads: int = 4) -> None:
    """The flooder process: prints {"opened", "failed", "closed_by_server"} as JSON when done."""
    hold = max(100, min(raise_fd_limit() - 500, 12_000))
    stop = time.monotonic() + seconds
    held, lock = collections.deque(), threading.Lock()
    stats = {"opened": 0, "failed": 0, "closed_by_server": 0}

    def let_go(sock):
        sock.setblocking(False)
        try:
            if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                stats["closed_by_server"] += 1
        except BlockingIOError:
            pass
        except OSError:  # reset by the server
            stats["closed_by_server"] += 1
        sock.close()

    def worker(first: int) -> None:
        for i in range(first, total, threads):
            if time.monotonic() > stop:
                return
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1,
                                                source_address=(f"127.0.0.{2 + i % 250}", 0))
                sock.sendall(PARTIAL[i % 2])
            except OSError:
                with lock:
                    stats["failed"] += 1
                continue
            with lock:
                stats["opened"] += 1
                held.append(sock)
                while len(held) > hold:
                    let_go(held.popleft())

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    while held:
        let_go(held.popleft())
    print(json.dumps(stats), flush=True)


def get_health(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/health", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def scenario(root: str, mode: str, soft: int, hard: int, total: int, seconds: float) -> dict:
    port = free_port()
    config = {"root": root, "port": port, "token": TOKEN, "preload": False}
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-c", SERVER, mode, json.dumps(config), str(soft), str(hard)],
                              stdout=log, stderr=log)
    flooder = None
    try:
        for _ in range(300):
            try:
                if get_health(port) == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"{mode}: the server did not start")
        flooder = subprocess.Popen([sys.executable, __file__, "--flood", str(port), str(total), str(seconds)],
                                   stdout=subprocess.PIPE, text=True)
        flood_start, give_up = time.monotonic(), time.monotonic() + seconds + 60
        results, peak_fds = [], 0  # (ok, seconds) per request

        def client() -> None:
            while flooder.poll() is None and time.monotonic() < give_up:
                start = time.perf_counter()
                try:
                    ok = get_health(port) == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                results.append((ok, time.perf_counter() - start))
                time.sleep(0.05)

        clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):
            peak_fds = max(peak_fds, fd_count(server.pid))
            time.sleep(0.05)
        flood_seconds = time.monotonic() - flood_start
        flooder.wait(timeout=10)
        stats = json.loads(flooder.stdout.read().strip().splitlines()[-1])
    finally:
        for proc in (p for p in (server, flooder) if p is not None):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log.seek(0)
    emfile = log.read().count(b"out of system resource")
    latencies = [t for _, t in results]
    quantiles = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    served = sum(ok for ok, _ in results)
    return {**stats, "served": served, "req_failed": len(results) - served, "p50": statistics.median(latencies),
            "p95": quantiles[18], "peak_fds": peak_fds, "emfile_errors": emfile, "seconds": flood_seconds}


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 40
    raise_fd_limit()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    from stylesearch.store.datasets import create_dataset
    from stylesearch.store.paths import dataset_paths

    root = tempfile.mkdtemp()
    create_dataset(dataset_paths("tiny", root))
    print(f"flood: {total:,} connections that never finish their headers (at most {seconds:.0f} s per "
          f"scenario); hard descriptor limit {hard}", flush=True)
    header = (f"{'scenario':44} {'secs':>5} {'opened':>7} {'failed':>7} {'closed':>7} {'served':>7} {'failed':>7} "
              f"{'p50 ms':>8} {'p95 ms':>8} {'fds':>6} {'EMFILE':>6}")
    print(f"{'':50} {'flood connections':^23} {'requests during flood':^41}\n{header}", flush=True)
    for name, mode, soft, limit in (("baseline: uvicorn defaults, soft limit 1024", "baseline", 1024, hard),
                                    ("serve (guards), soft limit 1024", "serve", 1024, hard),
                                    ("serve (guards), hard limit 1024", "serve", 1024, 1024)):
        r = scenario(root, mode, min(soft, limit), limit, total, seconds)
        print(f"{name:44} {r['seconds']:>5.1f} {r['opened']:>7} {r['failed']:>7} {r['closed_by_server']:>7} "
              f"{r['served']:>7} {r['req_failed']:>7} {r['p50'] * 1000:>8.1f} {r['p95'] * 1000:>8.1f} "
              f"{r['peak_fds']:>6} {r['emfile_errors']:>6}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--flood"]:
        flood(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()
