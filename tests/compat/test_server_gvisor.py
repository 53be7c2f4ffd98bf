"""The gVisor runtime through the official Python SDK: a sandbox asks for it with the create
metadata `cove.runtime: gvisor` on a server whose default is the namespace backend (both run
side by side), runs commands on gVisor's user-space kernel, and a pause with memory
checkpoints it to disk: after the resume the same process goes on with what it held in memory.

What gVisor sandboxes cannot do yet (internet access, volumes, snapshots) is refused with a
clear 400; docs/SECURITY.md lists it.
"""

import shutil

import pytest
from e2b import Sandbox, SandboxState

from conftest import wait_until

pytestmark = [
    pytest.mark.cove_server,
    pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc is not installed"),
]

GVISOR = {"cove.runtime": "gvisor"}

# A process that holds a token drawn at its start in memory and counts; each value is
# written beside the file and renamed over it, so a reader never meets it half written.
HOLDER = (
    "python3 -c \"import os, secrets, time\n"
    "token, i = secrets.token_hex(8), 0\n"
    "while True:\n"
    "    i += 1\n"
    "    open('/home/user/held.new', 'w').write(f'{token} {i}')\n"
    "    os.replace('/home/user/held.new', '/home/user/held')\n"
    "    time.sleep(0.05)\""
)


def held(sandbox) -> tuple[str, int]:
    text = sandbox.commands.run("cat /home/user/held 2>/dev/null || echo none 0").stdout.split()
    return text[0], int(text[1])


def test_a_gvisor_sandbox_runs_beside_namespace_ones(new_sandbox):
    gvisor = new_sandbox(metadata=GVISOR, allow_internet_access=False)
    plain = new_sandbox(allow_internet_access=False)
    # gVisor's kernel answers as Linux 4.4.0, whatever the host runs.
    assert gvisor.commands.run("uname -r").stdout.strip() == "4.4.0"
    assert plain.commands.run("uname -r").stdout.strip() != "4.4.0"
    gvisor.files.write("/home/user/note.txt", "on gVisor")
    assert gvisor.files.read("/home/user/note.txt") == "on gVisor"
    result = gvisor.commands.run("python3 -c 'print(6 * 7)'")
    assert (result.exit_code, result.stdout) == (0, "42\n")
    assert Sandbox.get_info(gvisor.sandbox_id).metadata["cove.runtime"] == "gvisor"


def test_a_pause_keeps_a_process_and_its_memory_under_gvisor(new_sandbox):
    sandbox = new_sandbox(metadata=GVISOR, allow_internet_access=False)
    pid = sandbox.commands.run(HOLDER, background=True).pid
    wait_until(lambda: held(sandbox)[1] > 2, "the process to count")
    token, at_pause = held(sandbox)

    assert sandbox.pause() is True
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED

    resumed = Sandbox.connect(sandbox.sandbox_id, timeout=120)
    # The same process, with the token it drew before the pause, counts on.
    assert pid in [p.pid for p in resumed.commands.list()]
    wait_until(lambda: held(resumed)[1] > at_pause + 2, "the count to go on")
    assert held(resumed)[0] == token


def test_what_gvisor_cannot_do_yet_is_refused_clearly(new_sandbox):
    with pytest.raises(Exception, match="allowInternetAccess false"):
        new_sandbox(metadata=GVISOR)
    with pytest.raises(Exception, match="no runtime \"firecracker\""):
        new_sandbox(metadata={"cove.runtime": "firecracker"}, allow_internet_access=False)



def test_a_sandbox_listening_on_tcp_is_not_lost_to_a_refused_pause(cove_server):
    """This runsc cannot checkpoint a listening TCP socket (a Jupyter kernel's, a dev
    server's): the pause is refused with a clear 400 (the SDK reads a 409 as "paused
    already"), and the sandbox runs on unharmed."""
    from e2b_code_interpreter import Sandbox as CodeSandbox

    sandbox = CodeSandbox.create(metadata=GVISOR, allow_internet_access=False)
    try:
        assert sandbox.run_code("x = 41\nx").text == "41"
        with pytest.raises(Exception, match="400.*listen on TCP port"):
            sandbox.pause()
        assert sandbox.run_code("x + 1").text == "42"
        assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    finally:
        cove_server.api("DELETE", f"/sandboxes/{sandbox.sandbox_id}")

