"""`serve`: the app under uvicorn, with guards on connections below the app.

A connection must send a request's headers within `header_timeout` seconds, and connections are
capped below the file descriptor limit (raised to its hard limit), the one waiting longest for
headers making room (see `header_guarded`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from ..errors import UserError
from .app import create_app
from .config import ServerConfig, check_bind, check_port_free, connection_limits

LISTEN_QUEUE = 4096  # connections the kernel holds for accept() (capped by net.core.somaxconn)


def serve(config: ServerConfig) -> None:
    """Run the server until interrupted (refuses non-loopback binds without a token)."""
    import asyncio

    import uvicorn

    check_bind(config.host, config.token)
    check_port_free(config.host, config.port)
    app = create_app(config)
    server = app.state.server
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stylesearch: %(message)s"))
    logging.getLogger("stylesearch.server").addHandler(handler)
    logging.getLogger("stylesearch.server").setLevel(logging.INFO)
    if config.preload:
        server.start_warm_up()
    print(f"stylesearch: serving {', '.join(server.served_names()) or 'no datasets yet'} on "
          f"http://{_url_host(config.host)}:{config.port}/ (API docs at /docs)", file=sys.stderr, flush=True)
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    connections, batch = connection_limits(config.max_connections)
    protocol = header_guarded(AutoHTTPProtocol, config.header_timeout, connections)
    settings = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                              http=protocol, ws="none", backlog=batch)
    listening = _listen_queue_server(settings)
    try:
        listening.run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    finally:
        server.close()
    if not listening.started:  # as uvicorn.run: a failed start is an error
        raise UserError(f"The server did not start on {_url_host(config.host)}:{config.port} (see above).")


def _listen_queue_server(settings):
    """A uvicorn Server whose listening sockets queue LISTEN_QUEUE connections in the kernel (no
    descriptors), more than the accept batch (`backlog`: kept small so that a batch fits in them)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            for listener in (sock for each in getattr(self, "servers", ()) for sock in each.sockets or ()):
                try:
                    with socket.socket(fileno=os.dup(listener.fileno())) as same:
                        same.listen(LISTEN_QUEUE)
                except OSError:  # no dup of a socket (Windows): the batch-sized queue stays
                    pass
    return Server(settings)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def header_guarded(base: type, header_timeout: float, max_connections: int) -> type:
    """`base` (a uvicorn HTTP protocol class) with a header deadline and a connection cap.

    uvicorn closes no connection that is idle or has sent partial headers (its keep-alive timer runs
    only after a response, and any byte stops it). Here a connection without a request in progress is
    closed `header_timeout` seconds after it opened or got its last response, whatever it sends
    meanwhile (a trickle of bytes does not extend it); and when a new connection makes more than
    `max_connections`, the one waiting longest for a request is closed, so a flood of them cannot
    shut out a client that sends its request at once."""
    live: set = set()
    waiting: dict = {}  # connections without a request in progress, longest waiting first

    class Guarded(base):
        _timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            live.add(self)
            self._await_request()
            while len(live) > max_connections and waiting:
                next(iter(waiting))._drop()

        def connection_lost(self, exc):
            self._stop_waiting()
            live.discard(self)
            super().connection_lost(exc)

        def data_received(self, data):
            super().data_received(data)
            if not self._idle():  # a request's headers are complete
                self._stop_waiting()

        def on_response_complete(self):
            super().on_response_complete()  # may start a pipelined request
            if self._idle() and not self.transport.is_closing():
                self._await_request()
            else:
                self._stop_waiting()

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _await_request(self):
            self._stop_waiting()
            waiting[self] = None
            self._timer = self.loop.call_later(header_timeout, self._deadline)

        def _stop_waiting(self):
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _deadline(self):
            self._timer = None
            if self._idle():
                self._drop()

        def _drop(self):
            self._stop_waiting()
            live.discard(self)
            self.transport.close()

    Guarded.__name__ = Guarded.__qualname__ = f"HeaderGuarded{base.__name__}"
    return Guarded
