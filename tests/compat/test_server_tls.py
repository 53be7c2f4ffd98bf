"""Preview URLs as a user reaches them: `get_host()` fetched by name with `httpx` (glibc
resolves `*.localhost` through nss-myhostname, which scripts/setup installs), and a server
started with `--tls self-signed`: its local CA trusted by `SSL_CERT_FILE`, the official SDK
speaking https to it (API and, with no E2B_SANDBOX_URL, `https://49983-{id}.{domain}`) and an
`https://{port}-{id}.{domain}` preview URL fetched by `httpx`."""

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import certifi
import httpx
import pytest
from e2b import Sandbox

from conftest import _cove_bin, _free_port, live_session_members, wait_until

pytestmark = pytest.mark.cove_server

PAGE = "<h1>hello over the preview URL</h1>"


def serve_page(sandbox: Sandbox, check) -> None:
    """Serves PAGE on port 8080 in `sandbox`; waits until `check()` sees it."""
    sandbox.files.write("/home/user/site/index.html", PAGE)
    sandbox.commands.run("python3 -m http.server 8080", background=True, cwd="/home/user/site")
    wait_until(check, "the sandbox's http.server to answer through the proxy", timeout=20)


def test_get_host_resolves_for_httpx_without_a_host_override(new_sandbox):
    sandbox = new_sandbox()
    host = sandbox.get_host(8080)
    assert host.split(":")[0].endswith(".localhost")
    # The name itself resolves, as glibc programs see it (nss-myhostname).
    assert {a[4][0] for a in socket.getaddrinfo(host.split(":")[0], None)} <= {"127.0.0.1", "::1"}

    def fetched():
        try:
            return httpx.get(f"http://{host}/", timeout=5).text == PAGE
        except httpx.HTTPError:
            return False

    serve_page(sandbox, fetched)


@pytest.fixture
def tls_server(monkeypatch):
    """`cove serve --tls self-signed --kill-on-exit` on a free port; the SDK pointed at it over
    https with its CA trusted through SSL_CERT_FILE (nothing installed system-wide)."""
    with tempfile.TemporaryDirectory(prefix="cove-compat-tls-") as work:
        work = Path(work)
        port = _free_port()
        key = "e2b_" + secrets.token_hex(20)
        log_path = work / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [_cove_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--state-dir",
                 work / "state", "--kill-on-exit", "--warm-pool", "0", "--tls", "self-signed",
                 "--header-read-timeout", "2s"],
                env={**os.environ, "COVE_API_KEY": key},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ca = work / "state" / "tls" / "ca.pem"
        domain = f"cove.localhost:{port}"
        try:

            def healthy():
                if proc.poll() is not None:
                    raise RuntimeError(log_path.read_text(errors="replace"))
                if not ca.exists():
                    return False
                try:
                    context = ssl.create_default_context(cafile=str(ca))
                    return httpx.get(f"https://{domain}/health", verify=context).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, "the TLS server to answer /health over https", 30)
            monkeypatch.setenv("E2B_API_URL", f"https://{domain}")
            monkeypatch.setenv("E2B_API_KEY", key)
            monkeypatch.setenv("SSL_CERT_FILE", str(ca))
            for name in ("E2B_SANDBOX_URL", "E2B_DEBUG", "E2B_DOMAIN"):
                monkeypatch.delenv(name, raising=False)
            yield domain, ca, key, port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            leaked = live_session_members(proc.pid)
            assert not leaked, f"processes outlived the TLS server: {leaked}"
            state = str((work / "state").resolve())
            assert not [m for m in Path("/proc/mounts").read_text().splitlines() if state in m]


# What a user's program does with the SDK, run as a program of its own: the SDK's transport
# reads the trusted certificates (SSL_CERT_FILE) once, when this process first uses it.
SDK_PROGRAM = """
import json
from e2b import Sandbox
sandbox = Sandbox.create()
out = sandbox.commands.run("echo over tls").stdout
sandbox.files.write("/home/user/site/index.html", PAGE)
# A raw upload large enough for the file upgrade: over TLS its body goes in frames.
import io
big = bytes(range(256)) * (8 << 10)
sandbox.files.write("/home/user/big.bin", io.BytesIO(big))
whole = sandbox.files.read("/home/user/big.bin", format="bytes") == big
sandbox.commands.run("python3 -m http.server 8080", background=True, cwd="/home/user/site")
print(json.dumps({"id": sandbox.sandbox_id, "out": out, "host": sandbox.get_host(8080),
                  "whole": whole}))
"""


def test_https_preview_url_and_the_sdk_over_tls(tls_server):
    domain, ca, key, _ = tls_server
    context = ssl.create_default_context(cafile=str(ca))
    api = httpx.Client(base_url=f"https://{domain}", verify=context, headers={"X-API-KEY": key})
    ran = subprocess.run(
        [sys.executable, "-c", f"PAGE = {PAGE!r}\n{SDK_PROGRAM}"],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )
    assert ran.returncode == 0, ran.stderr
    made = json.loads(ran.stdout.strip().splitlines()[-1])
    try:
        # Every call of the SDK went over https: the API, and the agent at its own host name.
        assert made["out"] == "over tls\n"
        assert made["whole"], "a 2 MiB raw upload over TLS came back different"
        host = made["host"]
        assert host == f"8080-{made['id']}.{domain}"

        def fetched():
            try:
                return httpx.get(f"https://{host}/", verify=context, timeout=5).text == PAGE
            except httpx.HTTPError:
                return False

        wait_until(fetched, "the preview URL to answer over https", timeout=20)
        # Plain http on the TLS port gets no page.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{host}/", timeout=5)
        # Without the CA (the public ones only), the certificate is not trusted.
        public = ssl.create_default_context(cafile=certifi.where())
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://{host}/", verify=public, timeout=5)
    finally:
        assert api.delete(f"/sandboxes/{made['id']}").status_code == 204


def test_a_silent_tls_client_is_closed_by_the_header_timeout(tls_server):
    """The handshake is bounded like a request's headers: a client that connects and sends
    nothing (or stops halfway through its hello) does not hold the connection."""
    _, _, _, port = tls_server
    for first_bytes in (b"", b"\x16\x03\x01\x02\x00\x01"):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(first_bytes)
            sock.settimeout(30)  # a deadline for the test, far above the 2 s it is given
            assert sock.recv(1024) == b"", "the server kept a silent TLS client"
