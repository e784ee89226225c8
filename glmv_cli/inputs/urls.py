"""fetch_url: GET an http(s) image or PDF URL, but only from public addresses, within size and time caps.

Rules (shared by `glmv ask` and `glmv serve`):
- http and https only; plain http only with allow_http; no user:password@ in the URL; any port.
- The host is resolved once per hop and EVERY address must pass the policy (default: globally routable
  unicast, IPv4 embedded in IPv6 checked too); one bad address refuses the URL, because a name that mixes
  public and private answers is a rebinding attempt or a misconfiguration, and neither is worth guessing.
- The connection goes to an address that was checked (never a second look-up), with the real Host header,
  and for https SNI plus certificate verification against the host name.
- Redirects are followed by hand, at most max_redirects, each hop checked like the first (https -> http
  is refused unless allow_http).
- The body is read raw (no decompression, so no zip bombs) up to max_bytes; timeout_s bounds the whole
  fetch, redirects included, except the system DNS look-up, which has no timeout of its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from glmv_cli import __version__
from glmv_cli.errors import InputError

MAX_BYTES = 50 * 1024 * 1024
TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], list[str]]
Policy = Callable[[IPAddress], bool]


class _Target(NamedTuple):
    scheme: str
    host: str  # ASCII (IDNA) name or IP literal, without brackets
    port: int
    host_header: str
    path: str


def is_url(text: str) -> bool:
    """True for text shaped like scheme://..., which glmv never reads as a file path."""
    return bool(_URL.match(text))


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses; the default policy."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 (mapped, 6to4, NAT64) reaches that IPv4 host: judge it too.
        nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        embedded = ip.ipv4_mapped or ip.sixtofour or nat64
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.is_site_local:  # deprecated fec0::/10, which is_global still calls global
            return False
    # is_global alone lets multicast through, and its lists differ between Python versions.
    return ip.is_global and not (
        ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback or ip.is_link_local or ip.is_unspecified
    )


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host, in its order; the default resolver."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"cannot resolve {host}: {exc}", code="file_unreadable") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def fetch_url(
    url: str,
    *,
    allow_http: bool = False,
    max_bytes: int = MAX_BYTES,
    timeout_s: float = TIMEOUT_S,
    max_redirects: int = MAX_REDIRECTS,
    resolve: Resolve = resolve_host,
    policy: Policy = is_public_address,
) -> tuple[bytes, str]:
    """GET url and return (body, final URL); every refusal or failure is a one-line InputError."""
    deadline = time.monotonic() + timeout_s
    for _ in range(max_redirects + 1):
        target = _parse(url, allow_http)
        addresses = _checked_addresses(target, resolve, policy)
        with _errors(target), _get(target, addresses, deadline) as response:
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                url = urljoin(url, location.strip())
                continue
            if response.status != 200:
                raise InputError(f"{target.host} answered HTTP {response.status}", code="file_unreadable")
            return _read_capped(response, target, max_bytes, deadline), url
    raise InputError(f"more than {max_redirects} redirects from {target.host}", code="file_unreadable")


def _parse(url: str, allow_http: bool) -> _Target:
    """Split url into where to connect, refusing what the rules forbid."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").rstrip(".")
        host = host if ":" in host else host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise InputError(f"not a valid URL: {exc}", code="url_refused") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"only http and https URLs can be fetched, not {scheme}:", code="url_refused")
    if scheme == "http" and not allow_http:
        raise InputError(f"plain http is refused for {host} (allow it with --allow-http)", code="url_refused")
    if parts.username is not None or parts.password is not None:
        raise InputError("URLs with a user name or password are refused", code="url_refused")
    if not host:
        raise InputError("the URL has no host", code="url_refused")
    port = port or (443 if scheme == "https" else 80)
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port == (443 if scheme == "https" else 80) else f"{bracketed}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme, host, port, host_header, path)


def _checked_addresses(target: _Target, resolve: Resolve, policy: Policy) -> list[str]:
    """The host's addresses, all of which the policy allows, or an InputError."""
    try:
        answers = [ipaddress.ip_address(target.host)]
    except ValueError:
        answers = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(target.host, target.port)]
    if not answers:
        raise InputError(f"cannot resolve {target.host}: no addresses", code="file_unreadable")
    for ip in answers:
        if not policy(ip):
            where = "" if str(ip) == target.host else f" it resolves to {ip},"
            raise InputError(f"refused {target.host}:{where} not a public address", code="url_refused")
    return [str(ip) for ip in answers]


@contextlib.contextmanager
def _get(target: _Target, addresses: list[str], deadline: float) -> Iterator[urllib3.BaseHTTPResponse]:
    """GET target from the first checked address that takes the connection; redirects are the caller's."""
    headers = {"Host": target.host_header, "User-Agent": f"glmv/{__version__}", "Accept-Encoding": "identity"}
    for i, address in enumerate(addresses):
        if target.scheme == "https":
            # Connect to the checked IP, but do SNI and certificate checks against the name.
            pool = urllib3.HTTPSConnectionPool(
                address,
                target.port,
                server_hostname=target.host,
                assert_hostname=target.host,
                cert_reqs="CERT_REQUIRED",
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, target.port)
        with pool:
            remaining = _remaining(deadline)
            try:
                response = pool.urlopen(
                    "GET",
                    target.path,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    preload_content=False,
                    decode_content=False,
                    assert_same_host=False,
                    timeout=urllib3.Timeout(connect=remaining, read=remaining),
                )
            except (NewConnectionError, ConnectTimeoutError):
                if i + 1 < len(addresses):
                    continue  # the host has another checked address; try it as browsers do
                raise
            try:
                yield response
            finally:
                response.close()
            return


def _read_capped(response: urllib3.BaseHTTPResponse, target: _Target, max_bytes: int, deadline: float) -> bytes:
    """The raw body, refused past max_bytes or past the deadline."""
    too_large = InputError(f"{target.host} sent more than {max_bytes} bytes", code="file_too_large")
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large
    # Each read waits at most the time left, so a server that trickles bytes cannot stretch the cap.
    sock = getattr(response.connection, "sock", None)
    body = bytearray()
    while True:
        remaining = _remaining(deadline)
        if sock is not None:
            sock.settimeout(remaining)
        chunk = response.read1(_CHUNK)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise too_large


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise InputError("fetching the URL did not finish in time", code="read_timeout")
    return remaining


@contextlib.contextmanager
def _errors(target: _Target) -> Iterator[None]:
    """Turn urllib3's exceptions into one-line InputErrors."""
    try:
        yield
    except NewConnectionError as exc:  # before the timeouts: urllib3 makes it a ConnectTimeoutError subclass
        reason = _one_line(exc).rpartition(": ")[2]
        raise InputError(f"cannot connect to {target.host}: {reason}", code="file_unreadable") from None
    except (ReadTimeoutError, ConnectTimeoutError, TimeoutError):
        raise InputError(f"fetching from {target.host} did not finish in time", code="read_timeout") from None
    except SSLError as exc:
        reason = str(exc.__context__ or exc).split("(_ssl")[0].strip()
        raise InputError(f"TLS with {target.host} failed: {reason}", code="file_unreadable") from None
    except (ProtocolError, HTTPError, OSError) as exc:
        raise InputError(f"cannot fetch from {target.host}: {_one_line(exc)}", code="file_unreadable") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
