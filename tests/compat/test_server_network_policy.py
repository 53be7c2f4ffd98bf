"""A sandbox's own egress rules with the official Python SDK: `network={"allow_out": ...,
"deny_out": ...}` at create and `update_network` on a live sandbox, against a `cove serve`
of this module's own (started with `--allow-private-egress` for the test host's range).

The test host is ours: a network namespace behind a veth pair with private addresses in
10.203.51.0/29, serving HTTP and counting UDP datagrams, standing in for "the internet".
The server's name server is ours too (on the host's side of the link, its address the
server's `/etc/resolv.conf` in a mount namespace of the server's own). Traffic goes only
to addresses on this machine.

The policy tests run once per backend (`cove.runtime` metadata): gVisor sandboxes reach the
outside through the same relay and egress filter, on their own network stack.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
from e2b import Sandbox
from e2b.exceptions import SandboxException
from e2b.sandbox.network import ALL_TRAFFIC

from conftest import (
    HostNetwork,
    NameServer,
    host_gets,
    logs_say,
    point_sdks_at,
    running_cove_server,
    wait_until,
)

pytestmark = pytest.mark.cove_server

N = 51
NET = f"10.203.{N}.0/29"
HOST_SIDE, ALLOWED, DENIED = f"10.203.{N}.1", f"10.203.{N}.2", f"10.203.{N}.3"
PORT, UDP_PORT = 8000, 9999
MARKER = "cove-network-policy-compat-host"
# A name only the test's name server knows.
TEST_NAME = "policy-host.cove.test"

UDP_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
with open(sys.argv[1], "a") as out:
    while True:
        data, _ = s.recvfrom(2048)
        out.write(data.decode(errors="replace") + "\\n")
        out.flush()
"""


@pytest.fixture(scope="module")
def test_host():
    """The test host: its namespace, link and servers, removed by name at the end (also when
    a test fails)."""
    work = tempfile.TemporaryDirectory(prefix="cove-compat-policy-")
    network = HostNetwork("npc", f"{HOST_SIDE}/29", [f"{ALLOWED}/29", f"{DENIED}/29"])
    try:
        www = Path(work.name) / "www"
        www.mkdir()
        (www / "marker.txt").write_text(MARKER)
        datagrams = Path(work.name) / "udp.txt"
        datagrams.write_text("")
        network.spawn([sys.executable, "-m", "http.server", str(PORT), "--bind", "0.0.0.0",
                       "--directory", str(www)])
        network.spawn([sys.executable, "-c", UDP_LISTENER, str(datagrams), str(UDP_PORT)])
        for addr in (ALLOWED, DENIED):
            wait_until(lambda: host_reaches(addr), f"the test host to answer on {addr}", 20)
        yield datagrams
    finally:
        network.close()
        work.cleanup()


def host_reaches(addr: str) -> bool:
    """This process (on the host, unfiltered) gets the marker: the test host is there."""
    return host_gets(f"http://{addr}:{PORT}/marker.txt", MARKER)


@pytest.fixture(scope="module")
def policy_server(test_host):
    with tempfile.TemporaryDirectory(prefix="cove-compat-policy-server-") as work:
        # The host's name server, as the server sees it: on the host's side of the test
        # host's link (an address of the host's own, which sandboxes reach on port 53 only).
        names = NameServer({TEST_NAME: ALLOWED}, bind=(HOST_SIDE, 53))
        try:
            resolv_conf = Path(work) / "resolv.conf"
            resolv_conf.write_text(f"nameserver {HOST_SIDE}\n")
            args = ["--allow-private-egress", NET]
            with running_cove_server(
                Path(work) / "state",
                Path(work) / "server.log",
                extra_args=args,
                resolv_conf=resolv_conf,
            ) as server:
                yield server
        finally:
            names.stop()


@pytest.fixture
def sdk_env(policy_server, monkeypatch):
    point_sdks_at(policy_server, monkeypatch)
    yield policy_server
    policy_server.kill_all()


def fetch(sandbox: Sandbox, addr: str) -> str:
    """What curl in the sandbox gets from the test host: the marker, or "refused"."""
    cmd = f"curl -s -m 5 http://{addr}:{PORT}/marker.txt || echo refused"
    return sandbox.commands.run(cmd).stdout.strip()


def send_datagram(sandbox: Sandbox, addr: str, tag: str) -> None:
    script = (
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
        f".sendto(b'{tag}', ('{addr}', {UDP_PORT}))"
    )
    sandbox.commands.run(f'python3 -c "{script}"')


RUNTIMES = ["namespace", "gvisor"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deny_all_with_an_allow_list(sdk_env, test_host, runtime):
    sandbox = Sandbox.create(
        network={"allow_out": [ALLOWED], "deny_out": [ALL_TRAFFIC]},
        metadata={"cove.runtime": runtime},
    )
    try:
        assert fetch(sandbox, ALLOWED) == MARKER
        assert fetch(sandbox, DENIED) == "refused"
        # An IPv6 literal gets nowhere (the sandbox's network has no IPv6 at all).
        assert fetch(sandbox, "[fc00:203:51::3]") == "refused"
        # The denied datagram, sent first, never arrives; the allowed one after it does.
        send_datagram(sandbox, DENIED, "denied-udp")
        send_datagram(sandbox, ALLOWED, "allowed-udp")
        wait_until(
            lambda: "allowed-udp" in test_host.read_text().split(),
            "the allowed datagram to arrive",
            20,
        )
        assert "denied-udp" not in test_host.read_text().split()
        # A raw socket is refused: sandboxes have no CAP_NET_RAW.
        raw = sandbox.commands.run(
            "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, "
            "socket.IPPROTO_UDP)' 2>&1 || true"
        ).stdout
        assert "PermissionError" in raw, raw
        # Names still resolve under deny-all: the host's name servers stay open for DNS.
        resolved = sandbox.commands.run(f"getent hosts {TEST_NAME} || echo unresolved").stdout
        assert resolved.split() == [ALLOWED, TEST_NAME], resolved
        info = sandbox.get_info()
        assert info.network is not None
        assert info.network.get("allow_out") == [ALLOWED], info.network
        # Refusals are told in the sandbox's log, by the rule that refused them.
        wait_until(
            lambda: logs_say(sdk_env, sandbox.sandbox_id, "refused by denyOut 0.0.0.0/0"),
            "the sandbox's log to tell the refusals",
            30,
        )
    finally:
        sandbox.kill()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_update_network_narrows_and_widens_a_live_sandbox(sdk_env, test_host, runtime):
    sandbox = Sandbox.create(metadata={"cove.runtime": runtime})
    try:
        assert fetch(sandbox, ALLOWED) == MARKER
        sandbox.update_network({"deny_out": [ALLOWED]})
        assert fetch(sandbox, ALLOWED) == "refused"
        assert fetch(sandbox, DENIED) == MARKER
        sandbox.update_network({"allow_out": [ALLOWED], "allow_internet_access": False})
        assert fetch(sandbox, ALLOWED) == MARKER
        assert fetch(sandbox, DENIED) == "refused"
        # Omitted fields are cleared: everything open again.
        sandbox.update_network({})
        assert fetch(sandbox, DENIED) == MARKER
        # The class-level form, by id.
        Sandbox.update_network(sandbox.sandbox_id, {"deny_out": [ALL_TRAFFIC]})
        assert fetch(sandbox, ALLOWED) == "refused"
    finally:
        sandbox.kill()


def test_bad_entries_are_refused_with_their_names(sdk_env):
    url = r"400: allowOut entry `https://github\.com` is not an IP address, range or domain name"
    with pytest.raises(SandboxException, match=url):
        Sandbox.create(network={"allow_out": ["https://github.com"], "deny_out": [ALL_TRAFFIC]})
    sandbox = Sandbox.create()
    try:
        bad = r"400: denyOut entry `10\.0\.0\.0/33` is not an IP address, range or domain name"
        with pytest.raises(SandboxException, match=bad):
            sandbox.update_network({"deny_out": ["10.0.0.0/33"]})
    finally:
        sandbox.kill()
