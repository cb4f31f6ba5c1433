"""Peer tools for the benchmarks, each in its own virtualenv under benchmarks/.venvs/<peer> (git-ignored),
never in the project's environment. torch is held to the project's pin (constraints.txt) so the
peers that need it get the same CPU build.

Usage: python benchmarks/peers.py [PEER ...]     install (default: all); prints each peer's version
       python benchmarks/peers.py --list          where each peer is, and whether it is installed
Benchmarks call `peer_bin(peer, command)` to find a peer's command, None when it is not installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
CONSTRAINTS = HERE.parent / "constraints.txt"
PEERS = {  # peer -> the pip requirements that install it (the first names the peer)
    "clip-retrieval": ["clip-retrieval", "setuptools<81"],  # its `clip` package imports pkg_resources
    "rclip": ["rclip>=3,<4"],  # rclip_compare.py writes rclip 3's ONNX model files (random init)
    "img2dataset": ["img2dataset"],
    "autofaiss": ["autofaiss", "pyarrow<20"],  # it pins numpy<2; newer pyarrow wheels need numpy 2
    "umap-learn": ["umap-learn"],
}


def peer_bin(peer: str, command: str | None = None) -> Path | None:
    """The peer venv's `command` (default: its python), or None when that peer is not installed."""
    path = VENVS / peer / "bin" / (command or "python")
    return path if path.exists() else None


def peer_version(peer: str) -> str | None:
    python = peer_bin(peer)
    if python is None:
        return None
    name = re.split(r"[<>=!~\[; ]", PEERS[peer][0])[0]  # the requirement without its version specifier
    out = subprocess.run([str(python), "-m", "pip", "show", name], capture_output=True, text=True)
    return next((line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Version:")),
                None)


def install(peer: str) -> str:
    target = VENVS / peer
    if not (target / "bin" / "python").exists():
        venv.create(target, with_pip=True)
    subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS),
                    *PEERS[peer]], check=True)
    return peer_version(peer) or "?"


def main(argv: list[str]) -> int:
    if argv == ["--list"]:
        for peer in PEERS:
            print(f"{peer}\t{peer_version(peer) or 'not installed'}\t{VENVS / peer}")
        return 0
    unknown = [p for p in argv if p not in PEERS]
    if unknown:
        print(f"unknown peer(s) {unknown}; choose from {list(PEERS)}", file=sys.stderr)
        return 2
    for peer in argv or list(PEERS):
        print(f"{peer} {install(peer)} in {VENVS / peer}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
