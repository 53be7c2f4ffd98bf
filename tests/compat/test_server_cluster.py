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
"""

from __future__ import annotations

import contextlib
import http.client
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest
import requests
from e2b import Sandbox, SandboxNotFoundException

from conftest import (
    CoveEdge,
    CoveServer,
    RestartableCoveServer,
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


def node_args(node_id: str, database: str, edge: CoveEdge) -> list[str]:
    """A node whose sandbox hosts are the edge's."""
    return [
        "--role", "node", "--node-id", node_id, "--database", database,
        "--domain", edge.domain, "--heartbeat", HEARTBEAT, "--node-down-after", DOWN_AFTER,
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
            args = node_args(f"node-{name}", cluster_database, edge)
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


def command_error(sandbox: Sandbox) -> Optional[str]:
    """The error (class and text) a command in `sandbox` fails with; None if it runs."""
    try:
        sandbox.commands.run("echo still here")
    except Exception as err:  # whichever class the SDK picks, its text is what is checked
        return f"{type(err).__name__}: {err}"
    return None


def fails_saying_lost(sandbox: Sandbox) -> Optional[str]:
    """The error of a command in `sandbox` if it carries the edge's "lost" answer (the SDK's
    own text for any unreachable sandbox says "the connection to it was lost": not that)."""
    error = command_error(sandbox)
    return error if error is not None and "The sandbox is lost: its node" in error else None


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
