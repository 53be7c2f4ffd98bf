"""How file reads travel (docs/COMPATIBILITY.md, "File transfers"): compressed only when the
client asks for gzip in particular (the SDKs' `gzip=True` sends `Accept-Encoding: gzip`)
and the file compresses; the `gzip, deflate` every Python and Node HTTP client sends by
default gets the bytes as they are, which is what keeps reads at full speed on a fast link.

The SDK's HTTP stack (reqwest under httpx) decodes gzip itself and drops the
`Content-Encoding` header, so what went over the wire is counted by a TCP relay the
sandbox traffic goes through, and the requests' headers are read off the SDK's client.
"""

import gzip
import os
import socket
import threading

import pytest
import requests
pytestmark = pytest.mark.cove_server

LINE = b"2026-11-25T00:42:17.512Z INFO  worker-3 GET /api/v1/items/4711 200 12 ms user=9f2c41aa\n"
TEXT = LINE * 20_000  # 1.7 MB of log lines: gzip shrinks it to a few percent
RANDOM = os.urandom(1 << 20)  # gzip cannot shrink it
HEAD_BYTES = 4096


class Relay:
    """A TCP relay on the loopback in front of cove serve that counts the bytes it carries
    back to the client."""

    def __init__(self, port: int):
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = 0
        self.head = b""
        self.lock = threading.Lock()
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source, sink, counted):
        try:
            while data := source.recv(1 << 16):
                if counted:
                    with self.lock:
                        if len(self.head) < HEAD_BYTES:
                            self.head += data[: HEAD_BYTES - len(self.head)]
                        self.received += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> tuple[int, dict[str, str]]:
        """Bytes carried back to the client since the last call, and the headers of the
        first response among them (names in lower case)."""
        with self.lock:
            received, head = self.received, self.head
            self.received, self.head = 0, b""
        lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
        headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
        return received, headers

    def close(self):
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def relay(cove_server, server_env, monkeypatch):
    """Sandbox traffic (E2B_SANDBOX_URL) through a counting relay; the API goes direct."""
    relay = Relay(cove_server.port)
    monkeypatch.setenv("E2B_SANDBOX_URL", relay.url)
    yield relay
    relay.close()


def requests_seen(client):
    """The requests `client` (an httpx client of the SDK) sends from now on."""
    sent = []
    client.event_hooks["request"].append(sent.append)
    return sent


def test_gzip_read_returns_the_same_bytes_compressed_on_the_wire(new_sandbox, relay):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/log.txt", TEXT)
    sent = requests_seen(sandbox.files._envd_api_download)
    relay.take()

    assert sandbox.files.read("/home/user/log.txt", format="bytes", gzip=True) == TEXT

    assert [r.headers["accept-encoding"] for r in sent] == ["gzip"]
    received, headers = relay.take()
    assert headers["content-encoding"] == "gzip"
    assert received < len(TEXT) // 10


def test_gzip_stream_read_returns_the_same_bytes(new_sandbox, relay):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/log.txt", TEXT)
    relay.take()

    streamed = b"".join(sandbox.files.read("/home/user/log.txt", format="stream", gzip=True))

    assert streamed == TEXT
    received, headers = relay.take()
    assert headers["content-encoding"] == "gzip"
    assert received < len(TEXT) // 10


@pytest.mark.parametrize("content", [RANDOM, TEXT], ids=["random", "text"])
def test_default_read_is_not_compressed(new_sandbox, relay, content):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/data", content)
    sent = requests_seen(sandbox.files._envd_api_download)
    relay.take()

    assert sandbox.files.read("/home/user/data", format="bytes") == content

    # What httpx sends unless told otherwise: a list, not a request for compression.
    assert [r.headers["accept-encoding"] for r in sent] == ["gzip, deflate"]
    received, headers = relay.take()
    assert "content-encoding" not in headers
    assert headers["content-length"] == str(len(content))
    assert len(content) < received < len(content) + 1024


def test_gzip_read_of_data_that_does_not_compress_comes_as_it_is(new_sandbox, relay):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/random.bin", RANDOM)
    relay.take()

    assert sandbox.files.read("/home/user/random.bin", format="bytes", gzip=True) == RANDOM

    received, headers = relay.take()
    assert "content-encoding" not in headers
    assert headers["content-length"] == str(len(RANDOM))
    assert len(RANDOM) < received < len(RANDOM) + 1024


def test_the_answers_say_how_they_are_encoded(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/log.txt", TEXT)
    sandbox.files.write("/home/user/random.bin", RANDOM)
    url = sandbox.download_url("/home/user/log.txt")
    target = url[url.index("/files?"):]

    def get(target, accept):
        return cove_server.request("GET", target, headers={"Accept-Encoding": accept})

    gzipped = get(target, "gzip")
    assert gzipped.status == 200
    assert gzipped.headers["content-encoding"] == "gzip"
    assert gzipped.headers["vary"] == "accept-encoding"
    assert gzip.decompress(gzipped.body) == TEXT
    plain = get(target, "gzip, deflate")
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-length"] == str(len(TEXT))
    assert plain.body == TEXT
    # Refusing the bytes as they are forces gzip, even of data it cannot shrink.
    random_url = sandbox.download_url("/home/user/random.bin")
    forced = get(random_url[random_url.index("/files?"):], "gzip, identity;q=0")
    assert forced.headers["content-encoding"] == "gzip"
    assert gzip.decompress(forced.body) == RANDOM


def test_download_url_with_requests_is_not_compressed(new_sandbox):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/log.txt", TEXT)

    response = requests.get(sandbox.download_url("/home/user/log.txt"), stream=True, timeout=30)

    assert response.status_code == 200
    assert response.request.headers["Accept-Encoding"] == "gzip, deflate"
    assert "content-encoding" not in response.headers
    assert response.raw.read() == TEXT


def test_gzip_write_and_read_round_trip(new_sandbox):
    sandbox = new_sandbox()

    sandbox.files.write("/home/user/up.txt", TEXT, gzip=True)

    assert sandbox.files.read("/home/user/up.txt", format="bytes") == TEXT
    assert sandbox.files.read("/home/user/up.txt", format="bytes", gzip=True) == TEXT
