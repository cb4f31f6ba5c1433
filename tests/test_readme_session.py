"""The README's "A session" block, run as written (issue 24), so that it stays true.

Substitutions, all visible here and named in the README under the block:
- `urls.csv` is written beside the session: `url,id` rows of images served from a loopback server;
- `stylesearch embed ...` gets `-m stylesearch-tiny -p random` (no weights can be downloaded here);
- the labeller runs headless, its keys pressed by a script that prefers the option from the anchor's
  folder (`LabelApp.run` replaced by a driver);
- `| xargs -0 feh` is left out: the NUL-separated paths it would get are checked instead;
- `serve` runs in its own process on a free port (`--port` added) and is stopped once it answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import TINY

pytestmark = pytest.mark.slow  # loads torch (embed, text search), umap

README = Path(__file__).parent.parent / "README.md"
JUDGMENTS = 30


def session_lines() -> list[str]:
    """The commands of the first bash block under '## A session', comments removed."""
    text = README.read_text()
    block = re.search(r"## A session\n\n```bash\n(.*?)```", text, re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line]


def test_the_session_block_is_the_one_described():
    steps = [shlex.split(line)[1] for line in session_lines()]
    assert steps == ["download", "transform", "atlas", "embed", "index", "search", "search", "search", "label",
                     "train", "umap-export", "serve"]


def _url_list(server, count: int) -> str:
    return "url,id\n" + "".join(f"{server.url}/img/{n}.jpg,photo-{n:03d}\n" for n in range(count))


def _drive_labeller(monkeypatch):
    """LabelApp.run, headless: JUDGMENTS answers (the option from the anchor's folder if just one is), then Q."""
    from textual_image.widget import HalfcellImage

    from stylesearch.tui.label_app import LabelApp

    def run(app):
        app.image_widget = HalfcellImage

        async def drive():
            async with app.run_test(size=(100, 30)) as pilot:
                for _ in range(JUDGMENTS):
                    anchor, left, right = app.session.current
                    folder = anchor.split("/")[0]
                    same = (left.split("/")[0] == folder, right.split("/")[0] == folder)
                    await pilot.press("a" if same == (True, False) else "b" if same == (False, True) else "a")
                await pilot.press("q")
        asyncio.run(drive())

    monkeypatch.setattr(LabelApp, "run", run)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve_until_it_answers(cli, words: list[str]) -> str:
    port = _free_port()
    env = {**os.environ, **cli.env, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "stylesearch", *words, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    return reply.read().decode()
            except OSError:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.3)
        raise AssertionError("serve did not answer in 120 s")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_readme_session_runs_as_written(cli, root, tmp_path, monkeypatch):
    from .test_download import Server

    monkeypatch.chdir(tmp_path)
    server = Server(count=48)
    Path("urls.csv").write_text(_url_list(server, 48))
    _drive_labeller(monkeypatch)
    outputs = {}
    try:
        for line in session_lines():
            command = line.split("|")[0]
            words = shlex.split(command)[1:]
            if words[0] == "embed":
                words += ["-m", TINY, "-p", "random"]
            if words[0] == "serve":
                outputs[line] = _serve_until_it_answers(cli, words)
                continue
            result = cli(*words)
            outputs[line] = result
    finally:
        server.close()
    lines = session_lines()
    assert outputs[lines[0]].stderr.startswith("download: ok=48")
    assert outputs[lines[2]].stderr.startswith("atlas: pages=1, items=48")
    assert "embedded=48" in outputs[lines[3]].stderr
    assert "recall_at_10=1.0" in outputs[lines[4]].stderr
    assert len(outputs[lines[5]].stdout.strip().splitlines()) > 20  # a table of 20 results
    paths = outputs[lines[7]].stdout.split("\0")
    assert paths[-1] == "" and len(paths) == 11 and all(Path(p).is_file() for p in paths[:-1])
    assert f"{JUDGMENTS} judgments this session" in outputs[lines[8]].stderr
    assert "train: " in outputs[lines[9]].stderr and "held-out judgments" in outputs[lines[9]].stderr
    assert Path("coords.parquet").stat().st_size > 0 and Path("map.png").stat().st_size > 0
    health = json.loads(outputs[lines[11]])
    assert health["status"] == "ok" and [d["name"] for d in health["datasets"]] == ["photos"]
