"""Reaching into a sandbox through `cove serve`: user ports by `get_host()`, signed file URLs
(`download_url` / `upload_url`) with plain HTTP clients, and what the proxy answers when there
is nothing to reach.

`get_host(port)` is `{port}-{id}.localhost:{server port}`. Python's resolver does not resolve
*.localhost, so these tests connect to 127.0.0.1 and send that name as Host, as a resolver
that knows *.localhost (curl, browsers) would; one test uses curl with the name itself.
"""

import base64
import hashlib
import io
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import httpx
import pytest
import requests
from e2b import Sandbox, SandboxState

from conftest import wait_until

pytestmark = pytest.mark.cove_server

PORT_NOT_OPEN = "The sandbox is running but port is not open"


def split_url(url: str) -> tuple[str, str]:
    """(host[:port], path?query) of a URL."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc, f"{parts.path}?{parts.query}"


@pytest.fixture
def web_sandbox(new_sandbox, cove_server):
    """A sandbox serving /home/user/site with `python3 -m http.server 8080`."""
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/site/index.html", "<h1>hello from the sandbox</h1>")
    sandbox.files.write("/home/user/site/data.bin", bytes(range(256)) * 64)
    server = sandbox.commands.run(
        "python3 -m http.server 8080", background=True, cwd="/home/user/site"
    )
    host = sandbox.get_host(8080)
    wait_until(
        lambda: cove_server.request("GET", "/", host=host).status == 200,
        "the http.server in the sandbox to answer through the proxy",
        timeout=20,
    )
    yield sandbox
    server.kill()


# --------------------------------------------------------------------------------------------
# User ports.


def test_get_host_reaches_a_server_in_the_sandbox(web_sandbox, cove_server):
    host = web_sandbox.get_host(8080)
    assert host == f"8080-{web_sandbox.sandbox_id}.{cove_server.domain}"

    page = cove_server.request("GET", "/", host=host)
    data = cove_server.request("GET", "/data.bin", host=host)
    missing = cove_server.request("GET", "/nope.txt", host=host)

    assert page.status == 200
    assert page.body == b"<h1>hello from the sandbox</h1>"
    assert data.status == 200 and data.body == bytes(range(256)) * 64
    assert missing.status == 404  # the sandbox's server answered, not the proxy
    assert b"File not found" in missing.body


def test_get_host_with_curl_and_the_name_itself(web_sandbox):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")

    completed = subprocess.run(
        [curl, "-sS", "--max-time", "20", f"http://{web_sandbox.get_host(8080)}/"],
        capture_output=True,
        timeout=30,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == b"<h1>hello from the sandbox</h1>"


def test_user_port_by_routing_headers(web_sandbox, cove_server):
    response = cove_server.request(
        "GET",
        "/index.html",
        headers={"E2b-Sandbox-Id": web_sandbox.sandbox_id, "E2b-Sandbox-Port": "8080"},
    )

    assert response.status == 200
    assert response.body == b"<h1>hello from the sandbox</h1>"


def test_post_to_a_user_port(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox.files.write(
        "/home/user/echo.py",
        """
from http.server import BaseHTTPRequestHandler, HTTPServer

class Echo(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("X-Seen-Host", self.headers["Host"])
        self.end_headers()
        self.wfile.write(body[::-1])

HTTPServer(("127.0.0.1", 9000), Echo).serve_forever()
""",
    )
    server = sandbox.commands.run("python3 /home/user/echo.py", background=True)
    try:
        host = sandbox.get_host(9000)

        def post():
            response = cove_server.request("POST", "/echo", host=host, body=b"abc123")
            return response if response.status != 502 else None

        response = wait_until(post, "the echo server to answer", timeout=20)
        assert response.status == 201
        assert response.body == b"321cba"
        assert response.headers["x-seen-host"] == host
    finally:
        server.kill()


HOST_ECHO = """
from http.server import BaseHTTPRequestHandler, HTTPServer

class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.headers["Host"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", 9001), Echo).serve_forever()
"""


def test_mask_request_host_is_the_host_the_sandbox_sees(new_sandbox, cove_server):
    sandbox = new_sandbox(network={"mask_request_host": "localhost:${PORT}"})
    assert sandbox.get_info().network.get("mask_request_host") == "localhost:${PORT}"
    sandbox.files.write("/home/user/host_echo.py", HOST_ECHO)
    server = sandbox.commands.run("python3 /home/user/host_echo.py", background=True)
    try:
        host = sandbox.get_host(9001)

        def get():
            response = cove_server.request("GET", "/", host=host)
            return response if response.status != 502 else None

        response = wait_until(get, "the echo server to answer", timeout=20)
        assert response.status == 200
        # What the client sent was the sandbox's preview host; the server inside sees the mask.
        assert response.body == b"localhost:9001", response.body
    finally:
        server.kill()
    with pytest.raises(Exception, match=r"400: network.maskRequestHost `http://x` is not HOST"):
        new_sandbox(network={"mask_request_host": "http://x"})


def test_closed_port_answers_502_json(new_sandbox, cove_server):
    sandbox = new_sandbox()

    response = cove_server.request("GET", "/", host=sandbox.get_host(8080))

    assert response.status == 502
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["message"] == PORT_NOT_OPEN
    assert body["code"] == 502
    assert body["sandboxId"] == sandbox.sandbox_id
    assert body["port"] == 8080


def test_port_closes_again_when_its_server_is_killed(web_sandbox, cove_server):
    host = web_sandbox.get_host(8080)
    [server] = [p for p in web_sandbox.commands.list() if "http.server" in " ".join(p.args)]

    assert web_sandbox.commands.kill(server.pid)

    def closed():
        response = cove_server.request("GET", "/", host=host)
        return response.status == 502 and response.json()["message"] == PORT_NOT_OPEN

    wait_until(closed, "the port to close after its server was killed")


def test_unknown_sandbox_by_host(cove_server):
    response = cove_server.request("GET", "/", host=f"8080-nosuchsandbox.{cove_server.domain}")

    assert response.status == 502
    assert response.json()["message"] == "The sandbox was not found"


# --------------------------------------------------------------------------------------------
# Signed file URLs.


def signature(path: str, op: str, token: str, user: str = "", expiration=None) -> str:
    """The E2B file-URL signature (notes/control-plane.md §4.4)."""
    raw = f"{path}:{op}:{user}:{token}" + (f":{expiration}" if expiration is not None else "")
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")


def http_status(url: str, **kwargs) -> int:
    """The status of a plain urllib request; error answers must be JSON `{code, message}`."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, **kwargs), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        assert err.headers["content-type"].startswith("application/json")
        body = json.loads(err.read())
        assert body["code"] == err.code and isinstance(body["message"], str)
        return err.code


def test_download_url_with_plain_urllib(new_sandbox, cove_server):
    sandbox = new_sandbox()
    content = bytes(range(256)) * 1000
    sandbox.files.write("/home/user/report.bin", content)

    url = sandbox.download_url("/home/user/report.bin")

    assert url.startswith(cove_server.url + "/files?")
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.read() == content


def test_download_url_with_expiration_and_user(new_sandbox):
    sandbox = new_sandbox()
    sandbox.files.write("/root/only-root.txt", "root's file", user="root")
    sandbox.files.write("/home/user/a b&c.txt", "odd name")

    root_url = sandbox.download_url("/root/only-root.txt", user="root", use_signature_expiration=60)
    odd_url = sandbox.download_url("/home/user/a b&c.txt")

    with urllib.request.urlopen(root_url, timeout=30) as response:
        assert response.read() == b"root's file"
    with urllib.request.urlopen(odd_url, timeout=30) as response:
        assert response.read() == b"odd name"


def test_upload_url_with_plain_multipart_post(new_sandbox):
    sandbox = new_sandbox()
    content = b"uploaded through a signed URL\n\x00\xff"

    url = sandbox.upload_url("/home/user/uploads/from-url.bin")
    response = httpx.post(url, files={"file": ("from-url.bin", content)}, timeout=30)

    assert response.status_code == 200, response.text
    [entry] = response.json()
    assert entry["path"] == "/home/user/uploads/from-url.bin"
    assert sandbox.files.read("/home/user/uploads/from-url.bin", format="bytes") == content
    owner = sandbox.commands.run("stat -c %U /home/user/uploads/from-url.bin").stdout
    assert owner == "user\n"


def test_upload_url_with_urllib(new_sandbox):
    sandbox = new_sandbox()
    boundary = "----cove-compat-boundary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="note.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
        "hand-made multipart\r\n"
        f"--{boundary}--\r\n"
    ).encode()

    request = urllib.request.Request(
        sandbox.upload_url("/home/user/note.txt"),
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200

    assert sandbox.files.read("/home/user/note.txt") == "hand-made multipart"


def test_large_raw_uploads_by_the_sdk_and_by_curl(new_sandbox, tmp_path):
    """Raw uploads of 256 KiB or more go to the agent through the file upgrade, past the
    server's HTTP stack: the SDK's stream write, curl's (which waits for `100 Continue`
    first), and a refused one, whose file is never made."""
    sandbox = new_sandbox()
    big = bytes(range(256)) * (12 << 10) + b"tail"  # 3 MiB and 4 bytes

    sandbox.files.write("/home/user/big.bin", io.BytesIO(big))
    assert sandbox.files.read("/home/user/big.bin", format="bytes") == big
    owner = sandbox.commands.run("stat -c %U /home/user/big.bin").stdout
    assert owner == "user\n"

    local = tmp_path / "curl.bin"
    local.write_bytes(big[::-1])
    posted = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/octet-stream",
         "--data-binary", f"@{local}", sandbox.upload_url("/home/user/curl.bin")],
        capture_output=True, text=True, timeout=60,
    )
    body, code = posted.stdout.rsplit("\n", 1)
    assert code == "200", posted
    assert json.loads(body)[0]["path"] == "/home/user/curl.bin"
    assert sandbox.files.read("/home/user/curl.bin", format="bytes") == big[::-1]

    url = sandbox.upload_url("/home/user/refused.bin")
    tampered = url.replace("signature=v1_", "signature=v1_x")
    refused = requests.post(tampered, data=big,
                            headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert refused.status_code == 401, refused.text
    assert not sandbox.files.exists("/home/user/refused.bin")


def test_tampered_signatures_are_refused(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/secret.txt", "do not leak")
    sandbox.files.write("/home/user/other.txt", "nor this")
    url = sandbox.download_url("/home/user/secret.txt")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    base = url.split("?", 1)[0]

    def with_query(**changes):
        return base + "?" + urllib.parse.urlencode({**query, **changes})

    sig = query["signature"]
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    token = sandbox._envd_access_token
    past = int(time.time()) - 10

    assert http_status(url) == 200
    assert http_status(with_query(signature=flipped)) == 401
    assert http_status(with_query(path="/home/user/other.txt")) == 401  # other file, same sig
    assert http_status(with_query(username="root")) == 401  # other user, same sig
    # Unsigned: without a signature such a URL names no sandbox at all (401 or 404 both
    # refuse it); routed by Host to the sandbox it is refused as unauthenticated.
    unsigned = "/files?" + urllib.parse.urlencode({"path": query["path"]})
    assert http_status(base.removesuffix("/files") + unsigned) in (401, 404)
    assert cove_server.request("GET", unsigned, host=sandbox.get_host(49983)).status == 401
    # An upload signature does not allow a download, nor the reverse.
    upload = sandbox.upload_url("/home/user/secret.txt")
    assert http_status(upload) == 401
    assert http_status(url, data=b"x", method="POST") == 401
    # An expired signature is refused even though it is otherwise right.
    expired = signature("/home/user/secret.txt", "read", token, expiration=past)
    assert http_status(with_query(signature=expired, signature_expiration=str(past))) == 401
    # The same with a future expiry is accepted: the check is the expiry, not the format.
    future = int(time.time()) + 60
    valid = signature("/home/user/secret.txt", "read", token, expiration=future)
    assert http_status(with_query(signature=valid, signature_expiration=str(future))) == 200
    assert sandbox.files.read("/home/user/secret.txt") == "do not leak"


def refusal(response) -> dict:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def test_expired_signed_urls_answer_as_envd(new_sandbox):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/soon.txt", "gone soon")
    download = sandbox.download_url("/home/user/soon.txt", use_signature_expiration=1)
    upload = sandbox.upload_url("/home/user/soon.txt", use_signature_expiration=1)
    expires = int(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(download).query))["signature_expiration"])

    wait_until(lambda: time.time() > expires + 1, "the links to expire", 10)

    expired = {"code": 401, "message": "signature is already expired"}
    assert refusal(requests.get(download, timeout=30)) == expired
    assert refusal(requests.post(upload, files={"file": b"late"}, timeout=30)) == expired
    assert sandbox.files.read("/home/user/soon.txt") == "gone soon"


def test_signature_refusals_use_envds_words(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/secret.txt", "do not leak")
    url = sandbox.download_url("/home/user/secret.txt", use_signature_expiration=60)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    base = url.split("?", 1)[0]
    host = sandbox.get_host(49983)
    # Routed by host, as E2B routes every link, so the agent's own answers show.
    via_host = lambda **q: cove_server.request(
        "GET", "/files?" + urllib.parse.urlencode(q), host=host
    )

    flipped = query["signature"][:-1] + ("A" if query["signature"][-1] != "A" else "B")
    assert via_host(**{**query, "signature": flipped}).json() == {
        "code": 401,
        "message": "invalid signature",
    }
    # A later expiry than the one signed is a wrong signature, not a longer life.
    later = str(int(query["signature_expiration"]) + 3600)
    assert via_host(**{**query, "signature_expiration": later}).json()["message"] == "invalid signature"
    assert via_host(path=query["path"]).json() == {
        "code": 401,
        "message": "missing signature query parameter",
    }
    wrong_token = cove_server.request(
        "GET",
        "/files?" + urllib.parse.urlencode({"path": query["path"]}),
        host=host,
        headers={"X-Access-Token": "not-the-token"},
    )
    assert wrong_token.status == 401
    assert wrong_token.json()["message"] == "access token present in header but does not match"
    # Not routed by host, a signature no sandbox made gets the same words.
    assert refusal(requests.get(base + "?" + urllib.parse.urlencode({**query, "signature": flipped}), timeout=30)) == {
        "code": 401,
        "message": "invalid signature",
    }


def test_signed_url_routed_by_host(new_sandbox, cove_server):
    """Without E2B_SANDBOX_URL the SDK would build `https://49983-{id}.{domain}/files?...`;
    the same request over plain http is routed by its Host."""
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/by-host.txt", "routed by host")
    _, target = split_url(sandbox.download_url("/home/user/by-host.txt"))
    host = sandbox.get_host(49983)

    good = cove_server.request("GET", target, host=host)
    bad = cove_server.request("GET", target.replace("signature=v1_", "signature=v1_x"), host=host)

    assert good.status == 200 and good.body == b"routed by host"
    assert bad.status == 401


# --------------------------------------------------------------------------------------------
# Connection reuse after the proxy refuses a request early.


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (header block, body); what the
    peer sent before closing if it closed early."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, b""
        data += chunk
    header_block, body = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in header_block.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return header_block, body


def test_connection_stays_usable_after_early_502(cove_server):
    """The SDK keeps one connection pool for the API and the sandboxes (same origin here), so
    a connection the server drops unannounced breaks whatever request reuses it next."""
    body = b'\x00\x00\x00\x00\x1a{"process":{"cmd":"true"}}'
    head = (
        "POST /process.Process/Start HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "E2b-Sandbox-Id: nosuchsandbox0000000\r\n"
        "E2b-Sandbox-Port: 49983\r\n"
        "Content-Type: application/connect+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", cove_server.port), timeout=10) as sock:
        # As the SDK's client may, send the head first; the answer comes before the body.
        sock.sendall(head)
        header_block, _ = read_response(sock)
        assert header_block.startswith(b"HTTP/1.1 502")
        if b"\r\nconnection: close" in header_block.lower():
            return  # announced: no client reuses the connection

        # Unannounced, the connection must stay open for the body and the next request.
        sock.settimeout(1.0)
        try:
            early = sock.recv(1)
        except TimeoutError:
            early = None  # still open, as it should be
        assert early is None, f"the server closed the keep-alive connection ({early!r})"
        sock.settimeout(10)
        sock.sendall(body + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        following, _ = read_response(sock)
        assert following.startswith(b"HTTP/1.1 200"), following


def test_signed_urls_of_a_paused_sandbox(new_sandbox):
    """A link routed by its signature reaches a paused sandbox as its headers would: 502
    "paused" unless it asked for autoResume, which the link's signature (made with the
    access token) may trigger."""
    asleep = new_sandbox()
    asleep.files.write("/home/user/a.txt", "asleep")
    url = asleep.download_url("/home/user/a.txt", use_signature_expiration=120)
    asleep.pause()

    refused = requests.get(url, timeout=30)

    assert refused.status_code == 502
    assert refused.json()["message"] == "The sandbox is paused"
    assert Sandbox.get_info(asleep.sandbox_id).state == SandboxState.PAUSED

    waking = new_sandbox(lifecycle={"on_timeout": "pause", "auto_resume": True})
    waking.files.write("/home/user/b.txt", "woken")
    url = waking.download_url("/home/user/b.txt", use_signature_expiration=120)
    waking.pause()

    woken = requests.get(url, timeout=30)

    assert (woken.status_code, woken.text) == (200, "woken")
    assert Sandbox.get_info(waking.sandbox_id).state == SandboxState.RUNNING
