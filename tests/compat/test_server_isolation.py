"""Two sandboxes on one server share nothing a user can see: files, processes, ports."""

import re
import sys
import tempfile
from pathlib import Path

import pytest
from e2b import CommandExitException, FileNotFoundException

from conftest import HostNetwork, host_gets, wait_until

pytestmark = pytest.mark.cove_server


@pytest.fixture
def pair(new_sandbox):
    return new_sandbox(), new_sandbox()


def test_files_written_in_one_are_not_in_the_other(pair):
    a, b = pair

    a.files.write("/home/user/secret.txt", "only in A")
    a.files.write("/tmp/scratch/a.bin", b"\x00\x01")
    a.commands.run("echo root-was-here > /etc/marker", user="root")

    assert not b.files.exists("/home/user/secret.txt")
    assert not b.files.exists("/tmp/scratch")
    with pytest.raises(FileNotFoundException):
        b.files.read("/home/user/secret.txt")
    assert "secret.txt" not in {e.name for e in b.files.list("/home/user")}
    # Empty but for the connection file of a kernel still starting (a warm sandbox's agent
    # starts one ahead of use and removes the file once the kernel answers).
    in_tmp = b.commands.run("ls -A /tmp").stdout.split()
    assert [name for name in in_tmp if not re.fullmatch(r"\.cove-kernel-[0-9a-f]{32}\.json", name)] == []
    with pytest.raises(CommandExitException):
        b.commands.run("cat /etc/marker")
    assert a.files.read("/home/user/secret.txt") == "only in A"


def test_same_path_holds_each_sandboxs_own_content(pair):
    a, b = pair

    a.files.write("/home/user/notes.txt", "A")
    b.files.write("/home/user/notes.txt", "B")

    assert a.files.read("/home/user/notes.txt") == "A"
    assert b.files.read("/home/user/notes.txt") == "B"
    a.files.remove("/home/user/notes.txt")
    assert b.files.read("/home/user/notes.txt") == "B"


def test_processes_of_one_are_not_in_the_other(pair):
    a, b = pair
    sleeper = a.commands.run("sleep 313", background=True)
    try:
        wait_until(
            lambda: "sleep 313" in a.commands.run("ps -eo args").stdout,
            "the sleep to show in A's ps",
        )
        assert sleeper.pid in {p.pid for p in a.commands.list()}

        assert "sleep 313" not in b.commands.run("ps -eo args").stdout
        assert all("sleep 313" not in " ".join([p.cmd, *p.args]) for p in b.commands.list())
        # B cannot signal what it cannot see: pids are per sandbox.
        assert b.commands.kill(sleeper.pid) is False
        assert "sleep 313" in a.commands.run("ps -eo args").stdout
    finally:
        sleeper.kill()


def test_each_sandbox_has_its_own_pid_1(pair):
    a, b = pair

    for sbx in (a, b):
        # Its own pid namespace: PID 1, this command (bash execs into ps) and, in a sandbox
        # from the warm pool, the Python kernel its agent started ahead of use; nothing else.
        processes = sbx.commands.run("ps -eo pid=,args=").stdout.splitlines()
        args = [line.split(None, 1)[1] for line in processes]
        kernels = [a for a in args if "ipykernel_launcher -f /tmp/.cove-kernel-" in a]
        assert len(kernels) <= 1, args
        assert [a for a in args if a not in kernels] == [
            "cove-agent __sandbox-init --pid1",
            "ps -eo pid=,args=",
        ]


def test_a_port_served_in_one_is_not_open_in_the_other(pair):
    a, b = pair
    server = a.commands.run("python3 -m http.server 8080", background=True, cwd="/home/user")
    try:

        def status(sbx):
            probe = sbx.commands.run(
                "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/ || true"
            )
            return probe.stdout

        wait_until(lambda: status(a) == "200", "A's server to answer on port 8080")
        assert status(b) == "000"  # connection refused: B has its own network namespace
    finally:
        server.kill()


# A server of the test's own on an address from a range Cove leaves open (198.18.0.0/15),
# in a network namespace behind a veth pair: it stands in for the internet, and traffic
# stays on this machine.
INTERNET_HOST_SIDE, INTERNET = "198.18.90.1", "198.18.90.2"
INTERNET_MARKER = "cove-compat-internet-stand-in"


@pytest.fixture
def internet():
    """The stand-in's URL while it serves; its namespace, link and server go at the end."""
    with tempfile.TemporaryDirectory(prefix="cove-compat-internet-") as www:
        (Path(www) / "marker.txt").write_text(INTERNET_MARKER)
        network = HostNetwork("inet", f"{INTERNET_HOST_SIDE}/24", [f"{INTERNET}/24"])
        try:
            network.spawn([sys.executable, "-m", "http.server", "8000", "--bind", INTERNET,
                           "--directory", www])
            url = f"http://{INTERNET}:8000/marker.txt"
            wait_until(lambda: host_gets(url, INTERNET_MARKER), "the stand-in for the internet to answer", 60)
            yield url
        finally:
            network.close()


def test_internet_access_is_per_sandbox(new_sandbox, internet):
    # The default, as on E2B: the sandbox reaches the internet (here a stand-in of the
    # test's own). Without it: nothing beyond the sandbox.
    online = new_sandbox()
    offline = new_sandbox(allow_internet_access=False)
    probe = f"curl -s -m 20 {internet} || echo unreachable"

    assert online.commands.run(probe).stdout == INTERNET_MARKER
    assert offline.commands.run(probe).stdout == "unreachable\n"
    assert online.get_info().allow_internet_access is True
    assert offline.get_info().allow_internet_access is False
