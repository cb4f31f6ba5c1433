"""`stylesearch serve`: the HTTP API and the browser page (FastAPI + uvicorn, imported only here)."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import STATE
from .completion import complete_datasets


def serve(
    datasets: Optional[List[str]] = typer.Argument(None, metavar="[DATASET]...", autocompletion=complete_datasets,
                                                   help="Datasets to serve (default: every dataset)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; beyond loopback needs --token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    token: Optional[str] = typer.Option(None, "--token", envvar="STYLESEARCH_TOKEN", show_envvar=True,
                                        help="Secret clients must send (Authorization: Bearer TOKEN)."),
    device: str = typer.Option("auto", "--device", help="Device for query models: auto, cpu, cuda, mps."),
    preload: bool = typer.Option(True, "--preload/--lazy",
                                 help="Load indexes and query models at start-up (default) or on first use."),
    threads: int = typer.Option(1, "--threads", min=1,
                                help="Threads per query (torch, FAISS, BLAS); 1 is fastest under concurrent load."),
    max_upload_mb: float = typer.Option(16, "--max-upload-mb", min=0.1, help="Largest upload (query images)."),
    cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin", metavar="ORIGIN",
                                                    help="A web origin (e.g. http://127.0.0.1:1235) whose pages "
                                                         "may query this server, like clip-retrieval's front "
                                                         "served elsewhere (repeatable; default: none)."),
) -> None:
    """Serve the HTTP API (docs at /docs) and a page for search, map and labelling (at /)."""
    from ..server.config import ServerConfig, check_bind, set_thread_env, token_from_env, web_origin
    from ..store.paths import existing_dataset

    token = token_from_env(token)
    check_bind(host, token)
    origins = tuple(dict.fromkeys(web_origin(o) for o in cors_origin or []))
    set_thread_env(threads)
    for name in datasets or []:
        existing_dataset(name, STATE.root)
    config = ServerConfig(root=STATE.root, datasets=tuple(dict.fromkeys(datasets or [])), host=host, port=port,
                          token=token, device=device, threads=threads, preload=preload,
                          max_upload_bytes=int(max_upload_mb * 2**20), cors_origins=origins)
    try:
        from ..server.listen import serve as run
    except ImportError as exc:
        from ..errors import UserError

        raise UserError(f"`stylesearch serve` needs FastAPI and uvicorn ({exc}).",
                        "Install them: pip install 'stylesearch[server]'.") from None
    run(config)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
