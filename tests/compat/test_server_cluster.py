"""A cluster with the official Python SDK, unchanged: one api, one edge and two nodes on a
PostgreSQL of the module's own (docs/CLUSTER.md), configured as a user would, `E2B_API_URL`
the api (or a node's REST API) and `E2B_SANDBOX_URL` the edge.

Through the api: creates are placed on the nodes, listed together and killed through it.

What is proved: everything the SDK sends to a sandbox (commands, background commands, files,
signed `download_url` / `upload_url` links fetched with `requests`, a server in the sandbox
reached by its `get_host()` name) reaches the node that runs it through the edge, for
sandboxes of either node. A node killed with SIGKILL loses its sandboxes: through the edge
the SDK's errors say "lost", and the other node answers the REST API with 404 (which the SDK
raises as `SandboxNotFoundException`; it replaces the server's message with its own, so the
"lost" is checked in the raw answer). Started again on its state dir and port, the node
takes its sandboxes over and the same `Sandbox` object works again through the edge.

`get_host()` names are `{port}-{id}.localhost:<edge port>`: Python does not resolve
*.localhost, so they are reached by connecting to the edge and sending the name as Host.

The api and the edge can also be ONE process (`--role api,edge`), here serving https with a
certificate of a throwaway CA for `cove.localhost` and `*.cove.localhost`, before a node of a
database of its own: the SDK, given that one https address (and the CA through
SSL_CERT_FILE), creates, uses, lists and kills a sandbox. `--tls self-signed` and a node
with the edge in one process are refused.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import httpx
import pytest
import requests
from e2b import Sandbox, SandboxNotFoundException

from conftest import (
    CoveEdge,
    CoveServer,
    RestartableCoveServer,
    _cove_bin,
    _free_port,
    command_error,
    fails_saying_lost,
    point_sdks_at_cluster,
    postgres_installed,
    running_cove_edge,
    wait_until,
)

pytestmark = [
    pytest.mark.cove_server,
    pytest.mark.skipif(
        not postgres_installed(),
        reason="PostgreSQL is not installed under /usr/lib/postgresql (Debian package postgresql)",
    ),
]

# Heartbeats this often; a node silent this long is down (its sandboxes lost).
HEARTBEAT, DOWN_AFTER = "200ms", "2s"
# Generous: the machine may be busy with other runs.
LOST_WITHIN = 60.0


def node_args(node_id: str, database: str, domain: str) -> list[str]:
    """A node whose sandbox hosts are under `domain` (its edge's)."""
    return [
        "--role", "node", "--node-id", node_id, "--database", database,
        "--domain", domain, "--heartbeat", HEARTBEAT, "--node-down-after", DOWN_AFTER,
        "--warm-pool", "0",
    ]


@pytest.fixture(scope="module")
def cluster(cluster_database: str) -> SimpleNamespace:
    """The edge and nodes `a` and `b` (RestartableCoveServer), each node with its own state
    dir; stopped (nodes first) and checked at the end of the module."""
    with (
        tempfile.TemporaryDirectory(prefix="cove-compat-cluster-") as work,
        contextlib.ExitStack() as stack,
    ):
        work = Path(work)
        edge = stack.enter_context(running_cove_edge(cluster_database, work / "edge.log"))
        nodes = {}
        for name in ("a", "b"):
            args = node_args(f"node-{name}", cluster_database, edge.domain)
            nodes[name] = stack.enter_context(
                RestartableCoveServer(work / f"state-{name}", work / f"node-{name}.log", args)
            )
        api = stack.enter_context(
            running_cove_edge(cluster_database, work / "api.log", role="api")
        )
        yield SimpleNamespace(edge=edge, api=api, **nodes)


@pytest.fixture
def node_a(cluster: SimpleNamespace) -> CoveServer:
    return cluster.a.server


@pytest.fixture
def node_b(cluster: SimpleNamespace) -> CoveServer:
    return cluster.b.server


@pytest.fixture(autouse=True)
def no_sandbox_left(cluster: SimpleNamespace) -> None:
    """Fails a test that leaves sandboxes on a node (they are killed)."""
    yield
    left = {name: getattr(cluster, name).server.kill_all() for name in ("a", "b")}
    assert not any(left.values()), f"the test left sandboxes running (now killed): {left}"


def through_edge(edge: CoveEdge, host: str, target: str = "/") -> Optional[tuple[int, bytes]]:
    """(status, body) of a GET of `target` at the edge with `host` as Host; None when the
    edge cannot be reached."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=10)
    try:
        conn.request("GET", target, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        conn.close()


def check_sandbox_through_edge(sandbox: Sandbox, edge: CoveEdge, word: str) -> None:
    """Commands, files and signed file links of `sandbox`, all through the edge."""
    assert sandbox.commands.run(f"echo {word}").stdout == f"{word}\n"
    sandbox.files.write(f"/home/user/{word}.txt", f"written {word}")
    assert sandbox.files.read(f"/home/user/{word}.txt") == f"written {word}"
    assert f"{word}.txt" in [entry.name for entry in sandbox.files.list("/home/user")]

    content = bytes(range(256)) * 400
    sandbox.files.write(f"/home/user/{word}.bin", content)
    url = sandbox.download_url(f"/home/user/{word}.bin")
    assert url.startswith(f"{edge.url}/files?"), url
    downloaded = requests.get(url, timeout=30)
    assert downloaded.status_code == 200, downloaded.text
    assert downloaded.content == content

    upload = sandbox.upload_url(path=f"/home/user/uploads/{word}.bin")
    assert upload.startswith(f"{edge.url}/files?"), upload
    posted = requests.post(upload, files={"file": (f"{word}.bin", content[::-1])}, timeout=30)
    assert posted.status_code == 200, posted.text
    assert [entry["path"] for entry in posted.json()] == [f"/home/user/uploads/{word}.bin"]
    assert sandbox.files.read(f"/home/user/uploads/{word}.bin", format="bytes") == content[::-1]


def test_a_sandbox_of_node_a_is_used_through_the_edge(cluster, node_a, monkeypatch):
    point_sdks_at_cluster(node_a, cluster.edge, monkeypatch)
    sandbox = Sandbox.create(allow_internet_access=False)
    try:
        check_sandbox_through_edge(sandbox, cluster.edge, "on-a")

        # A background command: a server in the sandbox, reached by its host via the edge.
        server = sandbox.commands.run(
            "python3 -m http.server 8000 --bind 127.0.0.1", background=True, cwd="/home/user"
        )
        assert server.pid in {process.pid for process in sandbox.commands.list()}
        host = sandbox.get_host(8000)
        assert host == f"8000-{sandbox.sandbox_id}.{cluster.edge.domain}"

        def listing() -> Optional[bytes]:
            answer = through_edge(cluster.edge, host)
            return answer[1] if answer is not None and answer[0] == 200 else None

        page = wait_until(
            listing, "the sandbox's server to answer by host through the edge", timeout=30
        )
        assert b"on-a.txt" in page
        assert server.kill()
        wait_until(
            lambda: server.pid not in {process.pid for process in sandbox.commands.list()},
            "the background command to end",
        )
    finally:
        sandbox.kill()
    assert sandbox.sandbox_id not in node_a.sandbox_ids()


def test_a_sandbox_of_node_b_is_used_through_the_same_edge(cluster, node_b, monkeypatch):
    point_sdks_at_cluster(node_b, cluster.edge, monkeypatch)
    sandbox = Sandbox.create(allow_internet_access=False)
    try:
        check_sandbox_through_edge(sandbox, cluster.edge, "on-b")
        handle = sandbox.commands.run("echo started; sleep 0.2; echo ended", background=True)
        assert handle.wait().stdout == "started\nended\n"
    finally:
        sandbox.kill()


def test_a_dead_nodes_sandbox_is_lost_until_the_node_returns(cluster, node_a, node_b, monkeypatch):
    point_sdks_at_cluster(node_a, cluster.edge, monkeypatch)
    sandbox = Sandbox.create(allow_internet_access=False)
    try:
        sandbox.files.write("/home/user/before.txt", "written before the crash")

        cluster.a.crash()
        lost = wait_until(
            lambda: fails_saying_lost(sandbox),
            "a command through the edge to fail saying the sandbox is lost",
            timeout=LOST_WITHIN,
            interval=0.2,
        )
        assert "its node node-a stopped answering" in lost, lost

        # The other node knows where it was, and that it is lost.
        point_sdks_at_cluster(node_b, cluster.edge, monkeypatch)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sandbox.sandbox_id)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(sandbox.sandbox_id)
        answer = node_b.api("GET", f"/sandboxes/{sandbox.sandbox_id}")
        assert answer.status == 404, answer
        assert "is lost: its node node-a stopped answering" in answer.json()["message"], answer

        # Back on its state dir and port, the node takes its sandbox over.
        cluster.a.start_again()
        wait_until(
            lambda: command_error(sandbox) is None,
            "the sandbox to answer through the edge again",
            timeout=LOST_WITHIN,
            interval=0.2,
        )
        assert sandbox.files.read("/home/user/before.txt") == "written before the crash"
        point_sdks_at_cluster(node_a, cluster.edge, monkeypatch)
        again = Sandbox.connect(sandbox.sandbox_id)
        assert again.commands.run("echo again").stdout == "again\n"
        assert Sandbox.get_info(sandbox.sandbox_id).sandbox_id == sandbox.sandbox_id
    finally:
        if cluster.a.proc.poll() is not None:
            cluster.a.start_again()
        sandbox.kill()


def test_the_api_places_lists_and_kills_across_nodes(cluster, node_a, monkeypatch):
    """`E2B_API_URL` the api, `E2B_SANDBOX_URL` the edge: what a cluster's user sets."""
    monkeypatch.setenv("E2B_API_URL", cluster.api.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", cluster.edge.url)
    monkeypatch.setenv("E2B_API_KEY", node_a.api_key)
    for name in ("E2B_DEBUG", "E2B_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    sandboxes = [Sandbox.create(allow_internet_access=False) for _ in range(4)]
    try:
        for n, sandbox in enumerate(sandboxes):
            assert sandbox.commands.run(f"echo {n}").stdout == f"{n}\n"
            sandbox.files.write("/home/user/n.txt", str(n))
            assert sandbox.files.read("/home/user/n.txt") == str(n)
        listed = {info.sandbox_id for info in Sandbox.list().next_items()}
        assert listed == {s.sandbox_id for s in sandboxes}
        # Each runs on one of the nodes (which one is placement's choice, tested with
        # settled reports in crates/cove-cli/tests/control_plane.rs).
        held = [
            entry["sandboxID"]
            for name in ("a", "b")
            for entry in getattr(cluster, name).server.api("GET", "/sandboxes").json()
        ]
        assert sorted(held) == sorted(s.sandbox_id for s in sandboxes)
        assert Sandbox.get_info(sandboxes[0].sandbox_id).sandbox_id == sandboxes[0].sandbox_id
    finally:
        for sandbox in sandboxes:
            sandbox.kill()
    assert Sandbox.list().next_items() == []


# --------------------------------------------------------------------------------------------
# One process for the api and the edge (`--role api,edge`), over https with certificate files.

# The name the certificate is for; `*.localhost` resolves to this machine (nss-myhostname).
GATEWAY_HOST = "cove.localhost"

# What a user's program does, run as a program of its own: the SDK's transports are shared
# by the whole process and read the trusted certificates (SSL_CERT_FILE) when first made,
# which the tests before this one did without it.
SDK_OVER_ONE_ADDRESS = r"""
import json, os, ssl
import httpx
from e2b import Sandbox

seen = {}
sandbox = Sandbox.create(allow_internet_access=False)
try:
    seen["id"] = sandbox.sandbox_id
    seen["stdout"] = sandbox.commands.run("echo over one address").stdout
    sandbox.files.write("/home/user/note.txt", "written over https")
    seen["read"] = sandbox.files.read("/home/user/note.txt")
    seen["listed"] = [info.sandbox_id for info in Sandbox.list().next_items()]
    # A signed link, fetched as a browser would.
    seen["download_url"] = sandbox.download_url("/home/user/note.txt")
    ca = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    seen["downloaded"] = httpx.get(seen["download_url"], verify=ca, timeout=30).text
finally:
    sandbox.kill()
seen["listed_after_kill"] = [info.sandbox_id for info in Sandbox.list().next_items()]
print(json.dumps(seen))
"""


def make_certificates(work: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and, signed by it, a certificate for GATEWAY_HOST and every name under
    it (subjectAltName entries, as clients check): (CA, certificate, key) PEM files."""
    ca_key, ca, key, request, cert = (
        work / name for name in ("ca.key", "ca.pem", "gateway.key", "gateway.csr", "gateway.pem")
    )
    extensions = work / "gateway.ext"
    extensions.write_text(
        f"subjectAltName = DNS:{GATEWAY_HOST}, DNS:*.{GATEWAY_HOST}\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
    )
    for argv in (
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=Cove compat test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", request, "-subj", f"/CN={GATEWAY_HOST}"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-set_serial", "2",
         "-days", "2", "-extfile", extensions, "-out", cert],
    ):
        made = subprocess.run(["openssl", *map(str, argv)], capture_output=True, text=True)
        assert made.returncode == 0, f"openssl {argv[0]} failed:\n{made.stderr}"
    return ca, cert, key


@contextlib.contextmanager
def database_of_its_own(cluster_database: str, name: str) -> Iterator[str]:
    """A fresh database `name` on the module's PostgreSQL (so that no node of the module's
    cluster is in it), dropped at the end; yields its URL."""
    psql = ["psql", "--no-psqlrc", "--quiet", "--set", "ON_ERROR_STOP=1", cluster_database]
    subprocess.run([*psql, "--command", f"CREATE DATABASE {name}"], check=True,
                   capture_output=True)
    try:
        yield cluster_database.rsplit("/", 1)[0] + f"/{name}"
    finally:
        subprocess.run([*psql, "--command", f"DROP DATABASE {name} WITH (FORCE)"], check=True,
                       capture_output=True)


@contextlib.contextmanager
def running_https_gateway(
    database: str, port: int, cert: Path, key: Path, ca: Path, log_path: Path
) -> Iterator[str]:
    """`cove serve --role api,edge` on `port`, serving https with `cert` for the domain
    GATEWAY_HOST:port until the block ends; then stopped with SIGTERM by its pid and checked
    to have exited cleanly. Yields its https URL, once /health answers there."""
    url = f"https://{GATEWAY_HOST}:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [_cove_bin(), "serve", "--role", "api,edge", "--database", database,
             "--listen", f"127.0.0.1:{port}", "--domain", f"{GATEWAY_HOST}:{port}",
             "--tls-cert", cert, "--tls-key", key],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        trusted = ssl.create_default_context(cafile=str(ca))

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"cove serve --role api,edge exited with {proc.returncode}:\n"
                    + log_path.read_text(errors="replace")
                )
            try:
                return httpx.get(f"{url}/health", verify=trusted, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, "the api,edge process to answer /health over https", 30)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode in (0, -signal.SIGTERM), (
            f"cove serve --role api,edge exited with {proc.returncode}:\n"
            + log_path.read_text(errors="replace")
        )


@pytest.fixture(scope="module")
def https_gateway(cluster_database: str) -> Iterator[SimpleNamespace]:
    """A cluster of its own (a database on the module's PostgreSQL): node `c`, and ONE
    process that is its api and its edge, serving https at `cove.localhost:PORT` with a
    certificate of a throwaway CA. Everything is stopped (node first) and removed at the
    end."""
    port = _free_port()
    domain = f"{GATEWAY_HOST}:{port}"
    with (
        tempfile.TemporaryDirectory(prefix="cove-compat-gateway-") as work,
        database_of_its_own(cluster_database, "gateway") as database,
        contextlib.ExitStack() as stack,
    ):
        work = Path(work)
        ca, cert, key = make_certificates(work)
        url = stack.enter_context(
            running_https_gateway(database, port, cert, key, ca, work / "gateway.log")
        )
        node = stack.enter_context(
            RestartableCoveServer(
                work / "state-c", work / "node-c.log", node_args("node-c", database, domain)
            )
        )
        server = node.server
        # The api reads keys made elsewhere (the node's) again at most a second later.
        trusted = ssl.create_default_context(cafile=str(ca))
        wait_until(
            lambda: httpx.get(
                f"{url}/v2/sandboxes", headers={"X-API-KEY": server.api_key}, verify=trusted
            ).status_code == 200,
            "the api to take the node's API key",
        )
        yield SimpleNamespace(
            url=url, domain=domain, ca=ca, node=server, log=work / "gateway.log"
        )


@pytest.mark.parametrize(
    ("sandbox_url", "http_version"),
    [
        ("unset", "2"),
        ("the same address", "2"),
        ("unset", "1.1"),
        ("the same address", "1.1"),
    ],
)
def test_one_https_process_is_the_api_and_the_edge(https_gateway, sandbox_url, http_version):
    """The SDK knows one https address: creates, lists and kills go to the api in it, the
    sandbox's traffic to the edge in it — by the sandbox's own host name
    (`https://49983-{id}.cove.localhost:PORT`, the wildcard of the certificate) when
    E2B_SANDBOX_URL is unset, by the E2b-Sandbox-* headers when it is the same address —
    and the signed download link by its host or its signature. Over HTTP/2 (the SDK's
    default, the host in `:authority`) and HTTP/1.1 (`E2B_HTTP_VERSION`, the host in Host)."""
    env = {
        **os.environ,
        "E2B_API_URL": https_gateway.url,
        "E2B_API_KEY": https_gateway.node.api_key,
        "E2B_HTTP_VERSION": http_version,
        # The CA, trusted by this program only: nothing is installed system-wide.
        "SSL_CERT_FILE": str(https_gateway.ca),
    }
    for name in ("E2B_SANDBOX_URL", "E2B_DEBUG", "E2B_DOMAIN", "SSL_CERT_DIR"):
        env.pop(name, None)
    if sandbox_url == "the same address":
        env["E2B_SANDBOX_URL"] = https_gateway.url
    ran = subprocess.run(
        [sys.executable, "-c", SDK_OVER_ONE_ADDRESS],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert ran.returncode == 0, (
        ran.stderr + "\napi,edge log:\n" + https_gateway.log.read_text(errors="replace")[-3000:]
    )
    seen = json.loads(ran.stdout.strip().splitlines()[-1])

    assert seen["stdout"] == "over one address\n"
    assert seen["read"] == "written over https"
    assert seen["listed"] == [seen["id"]]
    if sandbox_url == "unset":
        assert seen["download_url"].startswith(
            f"https://49983-{seen['id']}.{https_gateway.domain}/files?"
        ), seen["download_url"]
    else:
        assert seen["download_url"].startswith(f"{https_gateway.url}/files?"), seen
    assert seen["downloaded"] == "written over https"
    assert seen["listed_after_kill"] == []
    assert https_gateway.node.sandbox_ids() == set()


def refusal(cluster_database: str, *args: str) -> str:
    """The output of `cove serve ARGS` (a stateless role's), which has to exit non-zero
    before it serves anything."""
    with tempfile.TemporaryDirectory(prefix="cove-compat-refused-") as work:
        ran = subprocess.run(
            [_cove_bin(), "serve", "--database", cluster_database,
             "--listen", f"127.0.0.1:{_free_port()}", "--state-dir", f"{work}/state", *args],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
            start_new_session=True,
        )
    assert ran.returncode != 0, f"cove serve {args} was not refused:\n{ran.stdout}{ran.stderr}"
    return ran.stderr


def test_a_self_signed_ca_and_a_node_beside_the_edge_on_one_listener_are_refused(
    cluster_database,
):
    said = refusal(cluster_database, "--role", "api,edge", "--tls", "self-signed")
    assert "--tls-cert" in said, said
    said = refusal(cluster_database, "--role", "node,edge")
    assert "--node-listen" in said, said
