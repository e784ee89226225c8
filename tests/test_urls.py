"""fetch_url against a real server on 127.0.0.1, and the address policy on injected DNS answers; no network."""

from __future__ import annotations

import http.server
import ipaddress
import shutil
import ssl
import subprocess
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3.util.connection

from glmv_cli.errors import ERROR_CODES, InputError
from glmv_cli.inputs.urls import fetch_url, is_public_address, is_url
from tests.conftest import SAMPLES, QuietHTTPServer

PNG = (SAMPLES / "invoice-acme.png").read_bytes()
LOOPBACK = ipaddress.ip_address("127.0.0.1")


def only_loopback(ip) -> bool:
    """A test-only policy: the server on 127.0.0.1 and nothing else."""
    return ip == LOOPBACK


def dns(table: dict[str, list[str]]):
    """An injected resolver; a name outside the table fails the test instead of asking real DNS."""

    def resolve(host: str, port: int) -> list[str]:
        assert host in table, f"unexpected DNS look-up of {host}"
        return table[host]

    return resolve


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Safety net: whatever a bug does, no test here may connect beyond this machine."""
    real = urllib3.util.connection.create_connection

    def guarded(address, *args, **kwargs):
        assert address[0] in ("127.0.0.1", "::1"), f"test tried to connect to {address[0]}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # for chunked bodies

    def do_GET(self):
        self.server.seen.append((self.path, self.headers["Host"]))
        route, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
        if route == "/ok":
            self._send(200, PNG)
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.get("to", ["/redirect"])[0])  # no target: a loop
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/big":  # claims 100 MB, sends nothing: the client must refuse on the header alone
            self.send_response(200)
            self.send_header("Content-Length", str(100 * 1024 * 1024))
            self.end_headers()
        elif route == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(64):
                self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif route == "/unsized":  # no length at all: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 65536)
            self.close_connection = True
        elif route == "/slow":
            time.sleep(3)
            self._send(200, PNG)
        elif route == "/trickle":  # each byte is quick, the whole is slow
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(tls: ssl.SSLContext | None = None):
    server = QuietHTTPServer(("127.0.0.1", 0), Handler)  # clients hanging up early is what tests want
    server.seen = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server


@pytest.fixture
def server():
    server = _serve()
    yield server
    server.shutdown()
    server.server_close()


def url(server, path: str, host: str = "img.test", scheme: str = "http") -> str:
    return f"{scheme}://{host}:{server.server_port}{path}"


def refused(code: str, call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    assert info.value.code == code and info.value.code in ERROR_CODES
    assert "\n" not in info.value.one_line()
    return info.value


# The server on 127.0.0.1: refused by the real policy, reached by the test one.


def test_loopback_server_is_refused_even_with_allow_http(server):
    err = refused("url_refused", fetch_url, f"http://127.0.0.1:{server.server_port}/ok", allow_http=True)
    assert "127.0.0.1" in err.message and "not a public address" in err.message
    refused("url_refused", fetch_url, url(server, "/ok"), allow_http=True, resolve=dns({"img.test": ["127.0.0.1"]}))
    refused("url_refused", fetch_url, f"http://[::1]:{server.server_port}/ok", allow_http=True)
    assert server.seen == []


def test_permissive_policy_reaches_the_checked_address_with_the_real_host_header(server):
    body, final = fetch_url(
        url(server, "/ok"), allow_http=True, resolve=dns({"img.test": ["127.0.0.1"]}), policy=only_loopback
    )
    assert body == PNG and final == url(server, "/ok")
    assert server.seen == [("/ok", f"img.test:{server.server_port}")]


def test_the_first_allowed_address_that_connects_is_used(server):
    # ::1 is checked and allowed but nothing listens there on this port: the next checked address is tried.
    body, _ = fetch_url(
        url(server, "/ok"),
        allow_http=True,
        resolve=dns({"img.test": ["::1", "127.0.0.1"]}),
        policy=lambda ip: ip.is_loopback,
    )
    assert body == PNG


def test_redirects_are_followed_and_rechecked(server):
    resolve = dns({"img.test": ["127.0.0.1"], "inner.test": ["127.0.0.2"]})
    hop = url(server, "/redirect?to=" + url(server, "/ok"))
    body, final = fetch_url(hop, allow_http=True, resolve=resolve, policy=only_loopback)
    assert body == PNG and final == url(server, "/ok")

    server.seen.clear()
    for target in (url(server, "/ok", host="inner.test"), "http://10.0.0.1/", f"http://[::1]:{server.server_port}/"):
        hop = url(server, f"/redirect?to={target}")
        err = refused("url_refused", fetch_url, hop, allow_http=True, resolve=resolve, policy=only_loopback)
        assert "not a public address" in err.message
    # Each redirect was served; no refused target was ever asked for /ok.
    assert len(server.seen) == 3 and all(path.startswith("/redirect") for path, _ in server.seen)


def test_redirect_loops_stop(server):
    loop = url(server, "/redirect")
    err = refused(
        "file_unreadable",
        fetch_url,
        loop,
        allow_http=True,
        max_redirects=3,
        resolve=dns({"img.test": ["127.0.0.1"]}),
        policy=only_loopback,
    )
    assert "more than 3 redirects" in err.message and len(server.seen) == 4


def test_http_errors_are_unreadable(server):
    err = refused(
        "file_unreadable",
        fetch_url,
        url(server, "/missing"),
        allow_http=True,
        resolve=dns({"img.test": ["127.0.0.1"]}),
        policy=only_loopback,
    )
    assert "HTTP 404" in err.message


# Size and time caps.


@pytest.mark.parametrize("path", ["/big", "/chunked", "/unsized"])
def test_size_cap(server, path):
    err = refused(
        "file_too_large",
        fetch_url,
        url(server, path),
        allow_http=True,
        max_bytes=10_000,
        resolve=dns({"img.test": ["127.0.0.1"]}),
        policy=only_loopback,
    )
    assert "more than 10000 bytes" in err.message


@pytest.mark.parametrize("path", ["/slow", "/trickle"])
def test_time_cap_covers_the_whole_fetch(server, path):
    started = time.monotonic()
    refused(
        "read_timeout",
        fetch_url,
        url(server, path),
        allow_http=True,
        timeout_s=0.5,
        resolve=dns({"img.test": ["127.0.0.1"]}),
        policy=only_loopback,
    )
    assert time.monotonic() - started < 1.5


# https: SNI and certificate verification against the name, while connecting to the checked address.


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=img.test"]
        + ["-addext", "subjectAltName=DNS:img.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(cert):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    names = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = _serve(context)
    server.sni = names
    yield server
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_against_the_name(tls_server, cert, monkeypatch):
    resolve = dns({"img.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    # Untrusted certificate: refused.
    err = refused(
        "file_unreadable", fetch_url, url(tls_server, "/ok", scheme="https"), resolve=resolve, policy=only_loopback
    )
    assert "certificate" in err.message
    # Trusted, and the name matches: fetched, with SNI and Host naming the host, not the address.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    body, _ = fetch_url(url(tls_server, "/ok", scheme="https"), resolve=resolve, policy=only_loopback)
    assert body == PNG and "img.test" in tls_server.sni
    assert tls_server.seen[-1] == ("/ok", f"img.test:{tls_server.server_port}")
    # Trusted certificate for another name: refused.
    err = refused(
        "file_unreadable",
        fetch_url,
        url(tls_server, "/ok", host="other.test", scheme="https"),
        resolve=resolve,
        policy=only_loopback,
    )
    assert "other.test" in err.message


def test_https_to_http_redirect_needs_allow_http(tls_server, cert, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    hop = url(tls_server, "/redirect?to=http://img.test/ok", scheme="https")
    err = refused("url_refused", fetch_url, hop, resolve=dns({"img.test": ["127.0.0.1"]}), policy=only_loopback)
    assert "--allow-http" in err.message


# URL rules that need no server.


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("http://img.test/a.png", "--allow-http"),
        ("ftp://img.test/a.png", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("https://user:secret@img.test/a.png", "user name or password"),
        ("https:///a.png", "no host"),
        ("https://img.test:99999/a.png", "not a valid URL"),
    ],
)
def test_url_rules(bad, words):
    err = refused("url_refused", fetch_url, bad, resolve=dns({}))
    assert words in err.message


def test_is_url():
    assert is_url("https://img.test/a.png") and is_url("HTTP://x") and is_url("ftp://x")
    assert not is_url("invoice.png") and not is_url("/tmp/a://b") and not is_url("-") and not is_url("C:\\a.png")


# The address policy, on injected DNS answers.

PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:81c::200e", "2002:5db8:d822::1"]
NOT_PUBLIC = [
    "127.0.0.1",
    "127.8.9.10",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "240.0.0.1",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "ff0e::1",  # global-scope multicast
    "fec0::1",  # site-local
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "2002:7f00:1::1",  # 6to4 around 127.0.0.1
    "2002:a00:1::1",  # 6to4 around 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 around 169.254.169.254
    "2001:db8::1",  # documentation
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_other_addresses_are_refused(address):
    assert not is_public_address(ipaddress.ip_address(address))
    err = refused("url_refused", fetch_url, "https://img.test/a.png", resolve=dns({"img.test": [address]}))
    assert address in err.message or str(ipaddress.ip_address(address)) in err.message


def test_one_private_answer_among_public_ones_refuses_the_name():
    resolve = dns({"mixed.test": ["93.184.216.34", "10.0.0.1", "2606:4700:4700::1111"]})
    err = refused("url_refused", fetch_url, "https://mixed.test/a.png", resolve=resolve)
    assert "10.0.0.1" in err.message


def test_a_name_with_no_answers_is_unreadable():
    refused("file_unreadable", fetch_url, "https://empty.test/a.png", resolve=dns({"empty.test": []}))


def test_a_numeric_host_is_judged_without_dns():
    # Literal addresses are checked as written; anything else goes through the (injected) resolver.
    refused("url_refused", fetch_url, "https://169.254.169.254/latest/meta-data/", resolve=dns({}))
    refused("url_refused", fetch_url, "https://2130706433/", resolve=dns({"2130706433": ["127.0.0.1"]}))
