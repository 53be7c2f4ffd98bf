"""The cluster as it runs on several machines (docs/CLUSTER.md), here on one: three nodes, each
in a network namespace of its own behind a veth pair, so that each is a host of its own to the
network (it listens on its own address and is reached there), and on the host one api, one
edge, a PostgreSQL and a registry (Debian's docker-registry seeded with the test image, the
nodes' mirror of docker.io). The nodes reach the database and the registry at the host side
of their veth (`TcpRelay`s there: both listen on the loopback only); the api and the edge
reach the nodes at their addresses. The nodes share an object store, a directory
(`--object-store file://…`), as the nodes of a cluster share a bucket. The official Python SDK
is set up as a user of the cluster sets it up, `E2B_API_URL` the api and `E2B_SANDBOX_URL`
the edge.

What is proved, with real sandboxes:

- 60 sandboxes created 8 at a time spread over the three nodes (each node's own listing says
  which it runs, and `cove nodes list` counts the same), and each takes a file written, read
  back and used by a command, through the edge;
- a node killed with SIGKILL: its sandboxes are reported lost through the edge, the other
  nodes' keep working and new creates go to those nodes; started again on its state dir (same
  id, same namespace) it is up again, and its sandboxes answer again with their files;
- a drained node (`cove nodes drain`) gets no creates while its sandboxes keep working;
  undrained, it gets creates again;
- a template built on one node (`cove template build` against its own REST API) starts
  sandboxes on the others: created through the api, and through each other node's own REST
  API where the api put none, each runs what the build's RUN step wrote; a node has the
  template's layers (those the build stored in the object store) only once a sandbox of it
  was created there;
- a snapshot taken on one node (stored in the object store) starts sandboxes with its files
  on the other nodes while its own node is killed, is listed, and is deleted.

Every address used is on this machine (10.201.X.0/24 on the veths). The nodes' sandboxes are
killed and the nodes stopped and checked as `RestartableCoveServer` does; the namespaces,
links, relays, state directories and the object store go too, also when a test fails. No
timing is asserted: the waits are generous, speed is the benchmark's business (cove-bench
--only cluster).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import subprocess
import tempfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Optional, TypeVar

import pytest
from e2b import Sandbox

from conftest import (
    CoveServer,
    HostNetwork,
    RestartableCoveServer,
    TcpRelay,
    _cove_bin,
    command_error,
    fails_saying_lost,
    postgres_installed,
    running_cove_edge,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not postgres_installed(),
    reason="PostgreSQL is not installed under /usr/lib/postgresql (Debian package postgresql)",
)

NODES = ("node-1", "node-2", "node-3")
# Heartbeats this often; a node silent this long is down (its sandboxes lost).
HEARTBEAT, DOWN_AFTER = "200ms", "2s"
# Generous bounds for what the cluster does on its own: the machine may be busy.
WITHIN = 60.0
# How many creates (and checks) run at once.
AT_ONCE = 8
# The sandboxes' lifetime: longer than the module takes on a slow machine.
SANDBOX_TIMEOUT = 3600
FILE = "/home/user/mark.txt"
# The template built on one node; what its RUN step writes, and where.
BUILDER = "node-1"
TEMPLATE = "built-on-one-host"
BUILT_FILE, BUILT_TEXT = "/built.txt", f"built on {BUILDER}"
DOCKERFILE = f"FROM debian:bookworm\nRUN echo {BUILT_TEXT} > {BUILT_FILE}\n"
# A create that fetches the template's layers first (unpacked by a debug build) may be slow.
FETCH_WITHIN = 600.0

T = TypeVar("T")
R = TypeVar("R")


def free_subnets(count: int) -> list[int]:
    """Third octets of `count` networks 10.201.X.0/24 that no address of this machine is in,
    starting from one that depends on this process (runs side by side take different ones)."""
    listed = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    used = {int(octet) for octet in re.findall(r"inet 10\.201\.(\d+)\.", listed)}
    start = os.getpid() % 250
    free = [n for n in ((start + i) % 250 + 1 for i in range(250)) if n not in used]
    assert len(free) >= count, f"10.201.0.0/16 is taken on this machine: {sorted(used)}"
    return free[:count]


@pytest.fixture(scope="module")
def cluster(cluster_database: str, template_registry: str) -> SimpleNamespace:
    """The edge, nodes `node-1` … `node-3` (RestartableCoveServer, each in its network
    namespace with its own state dir, all sharing the object store `depot`) and the api; all
    stopped and checked at the end of the module (the nodes' sandboxes killed first), then the
    namespaces and links removed."""
    database = urllib.parse.urlsplit(cluster_database)
    registry = urllib.parse.urlsplit(template_registry)
    with (
        tempfile.TemporaryDirectory(prefix="cove-compat-hosts-") as work,
        contextlib.ExitStack() as stack,
    ):
        work = Path(work)
        depot = work / "object-store"
        depot.mkdir()
        edge = stack.enter_context(running_cove_edge(cluster_database, work / "edge.log"))
        nodes = {}
        subnets = zip(NODES, free_subnets(len(NODES)), strict=True)
        for k, (node_id, octet) in enumerate(subnets, start=1):
            host_side, node_side = f"10.201.{octet}.1", f"10.201.{octet}.2"
            network = HostNetwork(f"ch{k}", f"{host_side}/24", [f"{node_side}/24"])
            stack.callback(network.close)

            def seen_from_node(
                service: urllib.parse.SplitResult, host_side: str = host_side
            ) -> str:
                """The URL of `service` as the node reaches it: the test's PostgreSQL and
                registry listen on the loopback only (and the database trusts no one else),
                so the node reaches them at the host side of its veth, as it would services
                on another machine, and a relay there passes its connections on."""
                relay = TcpRelay((host_side, 0), (service.hostname, service.port))
                stack.callback(relay.close)
                user = f"{service.username}@" if service.username else ""
                return service._replace(netloc=f"{user}{host_side}:{relay.port}").geturl()

            node = RestartableCoveServer(
                work / f"state-{k}",
                work / f"{node_id}.log",
                [
                    "--role", "node", "--node-id", node_id,
                    "--database", seen_from_node(database),
                    "--domain", edge.domain, "--heartbeat", HEARTBEAT,
                    "--node-down-after", DOWN_AFTER, "--warm-pool", "0",
                    "--object-store", f"file://{depot}",
                    "--registry-mirror", f"docker.io={seen_from_node(registry)}",
                ],
                netns=network.netns,
                address=node_side,
            )
            # Its --advertise is where the api and the edge reach it: its own address.
            node.extra_args += ["--advertise", f"http://{node_side}:{node.port}"]
            nodes[node_id] = stack.enter_context(node)
        api = stack.enter_context(
            running_cove_edge(cluster_database, work / "api.log", role="api")
        )

        def cove_nodes(*args: str) -> str:
            """`cove nodes ARGS` against the cluster's database; its standard output."""
            done = subprocess.run(
                [_cove_bin(), "nodes", *args, "--database", cluster_database,
                 "--state-dir", str(work / "cli-state")],
                env={**os.environ, "COVE_LOG": "warn"},
                capture_output=True, text=True, timeout=60, check=False,
            )
            assert done.returncode == 0, f"cove nodes {args}: {done.stderr}"
            return done.stdout

        yield SimpleNamespace(
            edge=edge, api=api, nodes=nodes, cove_nodes=cove_nodes, depot=depot
        )


def node_table(cluster: SimpleNamespace) -> dict[str, dict]:
    """`cove nodes list --json`, by node id."""
    return {node["id"]: node for node in json.loads(cluster.cove_nodes("list", "--json"))}


def states(cluster: SimpleNamespace) -> dict[str, str]:
    """Each node's state (up, draining, down) as `cove nodes list` says."""
    return {node_id: node["state"] for node_id, node in node_table(cluster).items()}


def placement(cluster: SimpleNamespace, nodes: Iterable[str] = NODES) -> dict[str, str]:
    """Sandbox id → node id, by the listings of `nodes` (a node lists the sandboxes it runs)."""
    return {
        sandbox_id: node_id
        for node_id in nodes
        for sandbox_id in cluster.nodes[node_id].server.sandbox_ids()
    }


@pytest.fixture
def sdk(cluster: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user of the cluster sets: the api for REST, the edge for sandbox traffic. Every
    node knows every key (they are in the database): node-1's will do."""
    monkeypatch.setenv("E2B_API_URL", cluster.api.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", cluster.edge.url)
    monkeypatch.setenv("E2B_API_KEY", cluster.nodes["node-1"].api_key)
    for name in ("E2B_DEBUG", "E2B_DOMAIN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def node_1(cluster: SimpleNamespace) -> CoveServer:
    return cluster.nodes["node-1"].server


@pytest.fixture
def node_2(cluster: SimpleNamespace) -> CoveServer:
    return cluster.nodes["node-2"].server


@pytest.fixture
def node_3(cluster: SimpleNamespace) -> CoveServer:
    return cluster.nodes["node-3"].server


@pytest.fixture(autouse=True)
def every_node_up_and_empty(
    cluster: SimpleNamespace, node_1: CoveServer, node_2: CoveServer, node_3: CoveServer
) -> None:
    """After each test: a node it left crashed is started again and one it left drained is
    undrained (the next test starts from three nodes up); a sandbox it left fails it (all
    are killed). The nodes are asked for so that a failed test's report ends with their logs
    (conftest's pytest_runtest_makereport)."""
    yield
    for node_id, node in cluster.nodes.items():
        if node.proc.poll() is not None:
            node.start_again()
        cluster.cove_nodes("undrain", node_id)
    left = {node_id: node.server.kill_all() for node_id, node in cluster.nodes.items()}
    assert not any(left.values()), f"the test left sandboxes running (now killed): {left}"


def in_parallel(work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`work` on each of `items`, AT_ONCE at a time; the results in order (the first error
    is raised once all have run)."""
    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(work, items))


def create(count: int, made: list[Sandbox], **opts: object) -> list[Sandbox]:
    """Creates `count` sandboxes through the api (or as `opts` say: `template`, `api_url` …),
    AT_ONCE at a time; each is added to `made` as soon as it exists (for the test to kill,
    whatever fails next)."""

    def one(_: int) -> Sandbox:
        sandbox = Sandbox.create(allow_internet_access=False, timeout=SANDBOX_TIMEOUT, **opts)
        made.append(sandbox)
        return sandbox

    return in_parallel(one, range(count))


def use(sandbox: Sandbox) -> None:
    """Writes a file naming the sandbox, reads it back and reads it with a command, through
    the edge."""
    text = f"written in {sandbox.sandbox_id}"
    sandbox.files.write(FILE, text)
    assert sandbox.files.read(FILE) == text
    uses_again(sandbox)


def uses_again(sandbox: Sandbox) -> None:
    """The file `use` wrote is there, read by a command and by the file API."""
    text = f"written in {sandbox.sandbox_id}"
    assert sandbox.commands.run(f"cat {FILE}").stdout == text
    assert sandbox.files.read(FILE) == text


def kill_all(sandboxes: list[Sandbox]) -> list[str]:
    """Kills each sandbox through the SDK; what failed."""

    def kill(sandbox: Sandbox) -> Optional[str]:
        try:
            sandbox.kill()
        except Exception as err:  # reported by the caller
            return f"{sandbox.sandbox_id}: {err!r}"
        return None

    return [error for error in in_parallel(kill, sandboxes) if error is not None]


def test_sixty_sandboxes_spread_over_three_hosts_and_outlive_one_crashing(cluster, sdk):
    made: list[Sandbox] = []
    try:
        sandboxes = create(60, made)
        where = placement(cluster)
        assert sorted(where) == sorted(s.sandbox_id for s in sandboxes)
        held = collections.Counter(where.values())
        assert set(held) == set(NODES), f"a node got none of the 60 sandboxes: {dict(held)}"
        # The nodes' reports (what placement reads) say the same.
        wait_until(
            lambda: {i: n["capacity"]["sandboxes"] for i, n in node_table(cluster).items()}
            == held,
            f"the nodes to report {dict(held)} sandboxes",
            timeout=WITHIN,
        )
        in_parallel(use, sandboxes)

        # A host dies: node-2's process is SIGKILLed, its sandboxes run on unreachable.
        crashed = "node-2"
        lost = [s for s in sandboxes if where[s.sandbox_id] == crashed]
        kept = [s for s in sandboxes if where[s.sandbox_id] != crashed]
        cluster.nodes[crashed].crash()
        for sandbox in lost:
            error = wait_until(
                functools.partial(fails_saying_lost, sandbox),
                f"a command in {sandbox.sandbox_id} to fail through the edge saying it is lost",
                timeout=WITHIN,
                interval=0.2,
            )
            assert f"its node {crashed} stopped answering" in error, error
        assert states(cluster) == {"node-1": "up", "node-2": "down", "node-3": "up"}
        in_parallel(uses_again, kept)

        # New sandboxes go to the nodes that are up, and work.
        alive = [node_id for node_id in NODES if node_id != crashed]
        more = create(9, made)
        where_more = placement(cluster, alive)
        assert {s.sandbox_id for s in more} <= set(where_more), where_more
        in_parallel(use, more)

        # The host comes back: the node starts on its state dir, in its namespace, with its id.
        cluster.nodes[crashed].start_again()
        wait_until(
            lambda: states(cluster)[crashed] == "up", f"{crashed} to be up again", WITHIN
        )
        for sandbox in lost:
            wait_until(
                lambda s=sandbox: command_error(s) is None,
                f"{sandbox.sandbox_id} to answer through the edge again",
                timeout=WITHIN,
                interval=0.2,
            )
        in_parallel(uses_again, lost)
        assert {i for i, node_id in placement(cluster).items() if node_id == crashed} == {
            s.sandbox_id for s in lost
        }
    finally:
        failed = kill_all(made)
    assert not failed, f"kills through the SDK failed: {failed}"
    assert Sandbox.list().next_items() == []


def test_a_drained_host_takes_no_creates_and_keeps_its_sandboxes(cluster, sdk):
    made: list[Sandbox] = []
    try:
        sandboxes = create(9, made)
        where = placement(cluster)
        in_parallel(use, sandboxes)
        # The node with the most of them (three at least) is drained.
        drained = collections.Counter(where.values()).most_common(1)[0][0]
        its_own = [s for s in sandboxes if where[s.sandbox_id] == drained]
        cluster.cove_nodes("drain", drained)
        wait_until(
            lambda: states(cluster)[drained] == "draining", f"{drained} to be draining", WITHIN
        )

        more = create(12, made)
        where = placement(cluster)
        on_drained = [s.sandbox_id for s in more if where[s.sandbox_id] == drained]
        assert not on_drained, f"creates went to the drained {drained}: {on_drained}"
        in_parallel(use, more)
        in_parallel(uses_again, its_own)

        cluster.cove_nodes("undrain", drained)
        wait_until(lambda: states(cluster)[drained] == "up", f"{drained} to be up", WITHIN)

        # It has the fewest sandboxes now, so placement takes it whenever it is one of the
        # two nodes drawn: one create after another, one soon lands there.
        def lands_on_drained() -> bool:
            (sandbox,) = create(1, made)
            return cluster.nodes[drained].server.api(
                "GET", f"/sandboxes/{sandbox.sandbox_id}"
            ).status == 200

        assert any(lands_on_drained() for _ in range(20)), f"no create went to {drained}"
    finally:
        failed = kill_all(made)
    assert not failed, f"kills through the SDK failed: {failed}"
    assert Sandbox.list().next_items() == []


def build_template(node: CoveServer, context: Path, name: str) -> str:
    """`cove template build CONTEXT --name NAME` against `node`'s own REST API (at its own
    address, as from another machine); what it printed."""
    done = subprocess.run(
        [_cove_bin(), "template", "build", str(context), "--name", name],
        env={
            **os.environ,
            "COVE_API_URL": node.url,
            "COVE_API_KEY": node.api_key,
            "COVE_LOG": "warn",
        },
        capture_output=True, text=True, timeout=900, check=False,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed
    assert f"{name} is ready" in done.stdout, printed
    return printed


def shared_layers(cluster: SimpleNamespace) -> set[str]:
    """The layers in the object store, by id (each is an archive and its record)."""
    return {
        record.name.removesuffix(".json")
        for record in (cluster.depot / "layers" / "sha256").glob("*.json")
    }


def held(node: CoveServer, layers: set[str]) -> set[str]:
    """Which of `layers` the node's layer store holds."""
    store = node.state_dir / "images" / "layers" / "sha256"
    return {entry.name for entry in store.iterdir()} & layers if store.is_dir() else set()


def runs_what_was_built(sandbox: Sandbox) -> None:
    """The file the template's RUN step wrote is there, read by a command through the edge."""
    assert sandbox.commands.run(f"cat {BUILT_FILE}").stdout == f"{BUILT_TEXT}\n"


def test_a_template_built_on_one_host_starts_sandboxes_on_the_others(cluster, sdk):
    builder = cluster.nodes[BUILDER].server
    others = [node_id for node_id in NODES if node_id != BUILDER]
    with tempfile.TemporaryDirectory(prefix="cove-compat-hosts-context-") as context:
        (Path(context) / "Dockerfile").write_text(DOCKERFILE)
        printed = build_template(builder, Path(context), TEMPLATE)
    assert "in the object store" in printed, printed
    # The base image's layers and the build's own, each stored once for every node.
    layers = shared_layers(cluster)
    assert len(layers) >= 2, f"the object store holds {layers}"
    assert held(builder, layers) == layers, "the builder keeps the layers it stored"
    for node_id in others:
        assert not held(cluster.nodes[node_id].server, layers), (
            f"{node_id} has layers of {TEMPLATE} before any sandbox of it was created there"
        )

    made: list[Sandbox] = []
    try:
        # As a user creates them, through the api: placement picks the nodes.
        sandboxes = create(6, made, template=TEMPLATE, request_timeout=FETCH_WITHIN)
        where = placement(cluster)
        assert sorted(where) == sorted(s.sandbox_id for s in sandboxes)
        # A node that fetched the layers has all of them; one that got no create, none.
        for node_id in others:
            got_some = node_id in where.values()
            expected = layers if got_some else set()
            assert held(cluster.nodes[node_id].server, layers) == expected, (
                f"{node_id} ({'some' if got_some else 'none'} of the sandboxes)"
            )

        # Through its own REST API, each other node the api gave none gets one: it fetches
        # the layers then.
        for node_id in others:
            if node_id in where.values():
                continue
            node = cluster.nodes[node_id].server
            (sandbox,) = create(
                1, made, template=TEMPLATE, api_url=node.url, request_timeout=FETCH_WITHIN
            )
            assert placement(cluster, [node_id]) == {sandbox.sandbox_id: node_id}
            assert held(node, layers) == layers, f"{node_id} after a sandbox of {TEMPLATE}"
            sandboxes.append(sandbox)

        where = placement(cluster)
        assert sorted(where) == sorted(s.sandbox_id for s in sandboxes)
        ran_on = collections.Counter(where.values())
        assert set(others) <= set(ran_on), dict(ran_on)
        in_parallel(runs_what_was_built, sandboxes)
    finally:
        failed = kill_all(made)
    assert not failed, f"kills through the SDK failed: {failed}"
    assert Sandbox.list().next_items() == []


def test_a_snapshot_outlives_the_host_it_was_taken_on(cluster, sdk):
    made: list[Sandbox] = []
    taken_on = None
    try:
        (source,) = create(1, made)
        source.files.write("/home/user/kept.txt", "taken before the host died")
        snapshot = source.create_snapshot()
        taken_on = placement(cluster)[source.sandbox_id]
        others = [node_id for node_id in NODES if node_id != taken_on]

        cluster.nodes[taken_on].crash()
        wait_until(
            lambda: states(cluster)[taken_on] == "down", f"{taken_on} to be down", WITHIN
        )
        # Through the api: started on the other hosts, which fetch it from the object store.
        copies = create(4, made, template=snapshot.snapshot_id, request_timeout=FETCH_WITHIN)
        where = placement(cluster, others)
        assert {c.sandbox_id for c in copies} <= set(where), where
        for copy in copies:
            assert copy.files.read("/home/user/kept.txt") == "taken before the host died"
        listed = [s.snapshot_id for s in Sandbox.list_snapshots().next_items()]
        assert listed == [snapshot.snapshot_id], listed
        assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
        with pytest.raises(Exception, match="not found"):
            Sandbox.create(template=snapshot.snapshot_id, allow_internet_access=False)
    finally:
        if taken_on is not None and states(cluster)[taken_on] != "up":
            cluster.nodes[taken_on].start_again()
            wait_until(
                lambda: states(cluster)[taken_on] == "up", f"{taken_on} to be up again", WITHIN
            )
        failed = kill_all(made)
    assert not failed, f"kills through the SDK failed: {failed}"
    assert Sandbox.list().next_items() == []
