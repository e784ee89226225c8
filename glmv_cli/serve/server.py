"""run_server: bind the address first (a busy port is a clear error), then serve the app with uvicorn."""

from __future__ import annotations

import socket
import sys

from glmv_cli.engine.base import Backend
from glmv_cli.errors import GlmvError, UsageError
from glmv_cli.serve.app import ServeConfig, create_app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6), or a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --host {host}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise GlmvError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", "pick another --port") from None
    sock.set_inheritable(True)
    return sock


def run_server(backend: Backend, config: ServeConfig, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM; queued requests are answered before the worker stops."""
    import uvicorn

    sock = bind(host, port)
    app = create_app(backend, config)
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(f"glmv serve: {config.served_model_name} on http://{shown}:{sock.getsockname()[1]}/v1\n")
    sys.stderr.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30))
    server.run(sockets=[sock])
