"""The gVisor runtime through the official Python SDK: a sandbox asks for it with the create
metadata `cove.runtime: gvisor` on a server whose default is the namespace backend (both run
side by side), runs commands on gVisor's user-space kernel, and a pause with memory
checkpoints it to disk: after the resume the same process goes on with what it held in memory.
Snapshots and forks of a gVisor sandbox carry its processes and memory: a fork, or a sandbox
made from a snapshot, starts with the source's processes running, under its own id and token.

A gVisor sandbox with internet access (E2B's default) reaches it through a link of its own
(tests/egress.rs attacks it); this runsc cannot save its network stack, so such a sandbox
pauses frozen in place, its memory kept in the host's, and snapshots keep only its files.
"""

import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from e2b import Sandbox, SandboxState

from conftest import point_sdks_at, running_cove_server, wait_until

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
    # Uploads of some MiB reach gVisor's agent whole: a raw one (through the file upgrade)
    # and a multipart one. Both stalled for good while the host's socket to the agent had
    # a widened send buffer.
    big = bytes(range(256)) * (12 << 10) + b"end"
    gvisor.files.write("/home/user/big.bin", io.BytesIO(big))
    assert gvisor.files.read("/home/user/big.bin", format="bytes") == big
    gvisor.files.write("/home/user/form.bin", big[::-1])
    assert gvisor.files.read("/home/user/form.bin", format="bytes") == big[::-1]
    result = gvisor.commands.run("python3 -c 'print(6 * 7)'")
    assert (result.exit_code, result.stdout) == (0, "42\n")
    assert Sandbox.get_info(gvisor.sandbox_id).metadata["cove.runtime"] == "gvisor"


def snapshot_of(cove_server, sandbox_id: str, memory: bool):
    """The raw answer to a snapshot request with Cove's `memory` field (the SDK sends none)."""
    return cove_server.request(
        "POST",
        f"/sandboxes/{sandbox_id}/snapshots",
        headers={"X-API-KEY": cove_server.api_key, "Content-Type": "application/json"},
        body=json.dumps({"memory": memory}).encode(),
        timeout=120,
    )


def paused_and_resumed(sandbox) -> tuple[Sandbox, int]:
    """Pauses `sandbox` with a counting process in it and resumes it: the same process, with
    the token it drew before the pause, counts on. The resumed sandbox and the count at the
    pause."""
    pid = sandbox.commands.run(HOLDER, background=True).pid
    wait_until(lambda: held(sandbox)[1] > 2, "the process to count")
    token, at_pause = held(sandbox)

    assert sandbox.pause() is True
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED

    resumed = Sandbox.connect(sandbox.sandbox_id, timeout=120)
    assert pid in [p.pid for p in resumed.commands.list()]
    wait_until(lambda: held(resumed)[1] > at_pause + 2, "the count to go on")
    assert held(resumed)[0] == token
    return resumed, at_pause


def test_a_pause_keeps_a_process_and_its_memory_under_gvisor(new_sandbox):
    paused_and_resumed(new_sandbox(metadata=GVISOR, allow_internet_access=False))


def test_forks_start_with_the_processes_and_memory_of_their_source(new_sandbox, cove_server):
    source = new_sandbox(metadata=GVISOR, allow_internet_access=False, timeout=300)
    source.commands.run(HOLDER, background=True)
    wait_until(lambda: held(source)[1] > 2, "the process to count")
    token, at_fork = held(source)

    forks = source.fork(count=2, timeout=120)
    try:
        assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks)
        ids = [source.sandbox_id, *(f.sandbox_id for f in forks)]
        assert len(set(ids)) == 3
        for fork in forks:
            # The source's process runs in each, with the token it drew, counting on.
            wait_until(lambda: held(fork)[1] > at_fork, "the fork's copy to count on")
            assert held(fork)[0] == token
            # Its own identity for what starts now.
            assert fork.commands.run("printenv E2B_SANDBOX_ID").stdout.strip() == fork.sandbox_id
            assert Sandbox.get_info(fork.sandbox_id).metadata["cove.runtime"] == "gvisor"
        # They go their own ways: a value written in one is in none of the others.
        forks[0].commands.run("python3 -c \"open('/home/user/mine', 'w').write('fork 0')\"")
        assert not forks[1].files.exists("/home/user/mine")
        assert not source.files.exists("/home/user/mine")
        # The source ran on through the fork, with its own process.
        wait_until(lambda: held(source)[1] > at_fork + 2, "the source to count on")
        assert held(source)[0] == token
    finally:
        for fork in forks:
            if isinstance(fork, Sandbox):
                cove_server.api("DELETE", f"/sandboxes/{fork.sandbox_id}")


def test_a_memory_snapshot_starts_sandboxes_with_its_processes_running(new_sandbox, cove_server):
    source = new_sandbox(metadata=GVISOR, allow_internet_access=False)
    source.commands.run(HOLDER, background=True)
    wait_until(lambda: held(source)[1] > 2, "the process to count")
    token, at_snapshot = held(source)
    source.files.write("/home/user/prepared.txt", "prepared once")

    snapshot = source.create_snapshot()
    listed = cove_server.api("GET", f"/snapshots?sandboxID={source.sandbox_id}")
    assert [s["mode"] for s in listed.json()] == ["full"]
    # No runtime named: a snapshot with memory starts where it can be restored, on gVisor.
    # With internet access (the default): restored onto a link of its own.
    copy = new_sandbox(template=snapshot.snapshot_id)
    wait_until(lambda: held(copy)[1] > at_snapshot, "the copy's process to count on")
    assert held(copy)[0] == token
    assert copy.files.read("/home/user/prepared.txt") == "prepared once"
    assert Sandbox.get_info(copy.sandbox_id).metadata["cove.runtime"] == "gvisor"
    # The namespace backend cannot restore it: said so, not started without its processes.
    with pytest.raises(Exception, match="starts only on gvisor"):
        new_sandbox(
            template=snapshot.snapshot_id,
            metadata={"cove.runtime": "namespace"},
            allow_internet_access=False,
        )
    # Files only, when asked: its sandboxes start afresh on the files.
    files_only = snapshot_of(cove_server, source.sandbox_id, memory=False)
    assert files_only.status == 201 and files_only.json()["mode"] == "filesystem"
    plain = new_sandbox(
        template=files_only.json()["snapshotID"], metadata=GVISOR, allow_internet_access=False
    )
    assert plain.files.read("/home/user/prepared.txt") == "prepared once"
    assert "held" not in plain.commands.run("ps -eo args").stdout
    assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
    # The copy runs on without its snapshot.
    wait_until(lambda: held(copy)[1] > at_snapshot + 5, "the copy to count on")


def test_an_unknown_runtime_is_refused_clearly(new_sandbox):
    with pytest.raises(Exception, match="no runtime \"firecracker\""):
        new_sandbox(metadata={"cove.runtime": "firecracker"}, allow_internet_access=False)


def test_a_sandbox_with_internet_access_pauses_frozen_and_snapshots_its_files(
    new_sandbox, cove_server
):
    sandbox = new_sandbox(metadata=GVISOR)
    # Frozen in place rather than checkpointed: the same process counts on all the same.
    resumed, at_pause = paused_and_resumed(sandbox)

    # A snapshot keeps the files where memory cannot be kept; asked for memory, it says why.
    snapshot = resumed.create_snapshot()
    listed = cove_server.api("GET", f"/snapshots?sandboxID={sandbox.sandbox_id}")
    assert [s["mode"] for s in listed.json()] == ["filesystem"]
    with_memory = snapshot_of(cove_server, sandbox.sandbox_id, memory=True)
    assert with_memory.status == 400, with_memory.body
    assert b"internet access" in with_memory.body
    copy = new_sandbox(template=snapshot.snapshot_id, metadata=GVISOR)
    assert copy.files.exists("/home/user/held")
    assert "secrets" not in copy.commands.run("ps -eo args").stdout
    # The source ran on through it all.
    wait_until(lambda: held(resumed)[1] > at_pause + 10, "the source to count on")



def test_a_sandbox_listening_on_tcp_is_not_lost_to_a_refused_pause(new_sandbox):
    """This runsc cannot checkpoint a listening TCP socket (a dev server's): the pause is
    refused with a clear 400 (the SDK reads a 409 as "paused already"), and the sandbox runs
    on unharmed, its server too."""
    sandbox = new_sandbox(metadata=GVISOR, allow_internet_access=False)
    sandbox.commands.run("python3 -m http.server 8123 --bind 127.0.0.1", background=True)
    wait_until(
        lambda: sandbox.commands.run(
            "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8123')\" && echo up || true"
        ).stdout.strip() == "up",
        "the server to listen",
    )
    with pytest.raises(Exception, match="400.*listen on TCP port.*8123"):
        sandbox.pause()
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    out = sandbox.commands.run(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8123').status)\""
    )
    assert out.stdout.strip() == "200"


def test_a_code_interpreter_keeps_its_variables_through_pause_fork_and_snapshot(cove_server):
    """Kernels of a gVisor sandbox listen on Unix sockets (ZeroMQ ipc), which this runsc
    checkpoints: a pause keeps the kernel and its variables, a fork or a sandbox made from a
    memory snapshot starts with them, and the first run_code there pays no kernel start."""
    from e2b_code_interpreter import Sandbox as CodeSandbox

    sandbox = CodeSandbox.create(metadata=GVISOR, allow_internet_access=False)
    made = [sandbox]
    try:
        assert sandbox.run_code("x = 41\nx").text == "41"
        assert sandbox.pause() is True
        resumed = CodeSandbox.connect(sandbox.sandbox_id, timeout=120)
        assert resumed.run_code("x += 1\nx").text == "42"

        snapshot = resumed.create_snapshot()
        copy = CodeSandbox.create(snapshot.snapshot_id, allow_internet_access=False)
        made.append(copy)
        assert copy.run_code("x * 10").text == "420"
        forks = resumed.fork(count=2, timeout=120)
        made.extend(f for f in forks if isinstance(f, Sandbox))
        assert [CodeSandbox.connect(f.sandbox_id).run_code("x").text for f in forks] == ["42", "42"]
        # Each kernel is its own from here on.
        CodeSandbox.connect(forks[0].sandbox_id).run_code("x = 0")
        assert CodeSandbox.connect(forks[1].sandbox_id).run_code("x").text == "42"
        assert resumed.run_code("x").text == "42"
    finally:
        for each in made:
            cove_server.api("DELETE", f"/sandboxes/{each.sandbox_id}")


def kernels(sandbox) -> int:
    """How many Python kernels run in the sandbox now."""
    listing = sandbox.commands.run("ps -eo args").stdout
    return sum("ipykernel" in line for line in listing.splitlines())


def test_code_interpreter_sandboxes_start_from_a_kernel_image(monkeypatch):
    """A code-interpreter sandbox on gVisor starts restored from its template's kernel image
    (a memory snapshot taken once the kernel was up), its kernel already running, under its
    own identity and environment; the image is made after the first such create, and warm
    ones are restored from it ahead of demand. A server of its own: the image is made once
    per server."""
    from e2b_code_interpreter import Sandbox as CodeSandbox

    with tempfile.TemporaryDirectory(prefix="cove-compat-kernel-image-") as work:
        with running_cove_server(Path(work) / "state", Path(work) / "server.log") as server:
            point_sdks_at(server, monkeypatch)
            first = CodeSandbox.create(metadata=GVISOR)
            try:
                # Made the usual way: its kernel starts on first use.
                assert kernels(first) == 0
                assert first.run_code("6 * 7").text == "42"
            finally:
                first.kill()
            wait_until(
                lambda: "kernel image ready" in server.log.read_text(errors="replace"),
                "the kernel image to be made",
                180,
            )
            made = []
            try:
                for n in range(3):
                    sandbox = CodeSandbox.create(metadata=GVISOR, envs={"MINE": f"yes {n}"})
                    made.append(sandbox)
                    # Restored with the kernel running, before any code ran in it.
                    assert kernels(sandbox) == 1
                    execution = sandbox.run_code(
                        "import os\n(os.environ['E2B_SANDBOX_ID'], os.environ.get('MINE'))"
                    )
                    assert execution.error is None, execution.error
                    assert execution.text == repr((sandbox.sandbox_id, f"yes {n}"))
                    assert sandbox.run_code("x = 1\nx + 1").text == "2"
                # Each copy of the kernel draws its own random numbers.
                draws = {s.run_code("import random\nrandom.random()").text for s in made}
                assert len(draws) == len(made), draws
                # A plain sandbox of the same template is made the usual way.
                plain = Sandbox.create(metadata=GVISOR, allow_internet_access=False)
                made.append(plain)
                assert kernels(plain) == 0
                # The image's layers are the sandboxes' files: kept while they run.
                assert made[0].commands.run("echo kept > /home/user/f && cat /home/user/f").stdout == "kept\n"
            finally:
                for sandbox in made:
                    sandbox.kill()
