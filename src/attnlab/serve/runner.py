"""Running the explorer on uvicorn: in the foreground for ``attnlab serve``, or in a background
thread for tests and benchmarks (the same server either way)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn

from attnlab.serve.app import ServedModel, create_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (``port=0``: a free one). OSError names the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    except (TypeError, ValueError) as err:  # e.g. a NUL or other character no address has
        sock.close()
        raise OSError(f"cannot listen on {host!r}: not a host name or address ({err})") from None
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_ready`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready=None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()


def _config(app, log_level: str) -> uvicorn.Config:
    # One worker, no reload: models live in this process. "h11" keeps the dependency small.
    # uvicorn's access log is off: the app writes one line per request itself, with its outcome.
    return uvicorn.Config(app, log_level=log_level, access_log=False, http="h11",
                          ws="none", lifespan="off", timeout_graceful_shutdown=3)


def _log_requests_to_stderr() -> None:
    """One line per request on standard error, in uvicorn's own style."""
    logger = logging.getLogger("attnlab.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def serve_forever(models: list[ServedModel], host: str, port: int, on_ready=None,
                  log_level: str = "info") -> None:
    """Serve until Ctrl-C; ``on_ready(url)`` once the server answers."""
    sock = bind(host, port)
    port = sock.getsockname()[1]
    app = create_app(models, host=host, port=port)
    _log_requests_to_stderr()
    server = _Server(_config(app, log_level),
                     on_ready=None if on_ready is None else lambda: on_ready(url_of(host, port)))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """The explorer on a free loopback port in a daemon thread: ``with BackgroundServer(models) as
    server: ... server.url ...``. Used by tests and benchmarks."""

    def __init__(self, models: list[ServedModel], host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = url_of(host, self.port)
        self.app = create_app(models, host=host, port=self.port)
        self.server = _Server(_config(self.app, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def explorer(self):
        return self.app.state.explorer

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the explorer did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
