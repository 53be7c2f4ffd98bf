"""The E2B flows users rely on, through the official Python SDK, on both backends of one
`cove serve` (a test matrix: each test runs once per backend, chosen with the create metadata
`cove.runtime`). Where a backend answers differently, the test says so by name below; nothing
is skipped.

Differences (docs/COMPATIBILITY.md and docs/SECURITY.md say more):
- Both run with E2B's default, internet access on (reached through tests/egress.rs and
  test_server_network_policy.py's test hosts, which stay on this machine).
- GNU `ls` and `stat` would fail on this runsc (its `statx` refuses a flag they pass); gVisor
  sandboxes preload a shim that retries without it, so they work on both (tested below).
"""

import shutil
import time

import pytest
from e2b import CommandExitException, PtySize, Sandbox

from conftest import PtyReader, ensure_killed, wait_until

BACKENDS = ["namespace", "gvisor"]

pytestmark = [pytest.mark.cove_server]


@pytest.fixture(params=BACKENDS)
def backend_sandbox(request, new_sandbox) -> Sandbox:
    runtime = request.param
    if runtime == "gvisor" and shutil.which("runsc") is None:
        pytest.fail("runsc is not installed (scripts/setup installs it): the matrix needs it")
    sandbox = new_sandbox(metadata={"cove.runtime": runtime})
    assert Sandbox.get_info(sandbox.sandbox_id).metadata["cove.runtime"] == runtime
    return sandbox


def test_commands_run_stream_take_stdin_and_end(backend_sandbox):
    sandbox = backend_sandbox
    result = sandbox.commands.run("echo out; echo err >&2; exit 0")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "out\n", "err\n")
    with pytest.raises(CommandExitException) as failed:
        sandbox.commands.run("exit 3")
    assert failed.value.exit_code == 3
    streamed = []
    sandbox.commands.run("for i in 1 2 3; do echo $i; done", on_stdout=streamed.append)
    assert "".join(streamed) == "1\n2\n3\n"
    handle = sandbox.commands.run("read line; echo got $line", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "hello\n")
    assert handle.wait().stdout == "got hello\n"
    sleeper = sandbox.commands.run("sleep 600", background=True)
    assert sleeper.pid in [p.pid for p in sandbox.commands.list()]
    assert sandbox.commands.kill(sleeper.pid) is True
    wait_until(
        lambda: sleeper.pid not in [p.pid for p in sandbox.commands.list()], "the kill"
    )
    assert sandbox.commands.run("whoami").stdout == "user\n"
    assert sandbox.commands.run("whoami", user="root").stdout == "root\n"


def test_files_write_read_list_rename_remove(backend_sandbox):
    sandbox = backend_sandbox
    sandbox.files.write("/home/user/dir/a.txt", "alpha")
    sandbox.files.write("/home/user/dir/b.bin", bytes(range(256)) * 1024)
    assert sandbox.files.read("/home/user/dir/a.txt") == "alpha"
    assert bytes(sandbox.files.read("/home/user/dir/b.bin", format="bytes")) == bytes(
        range(256)
    ) * 1024
    names = sorted(entry.name for entry in sandbox.files.list("/home/user/dir"))
    assert names == ["a.txt", "b.bin"]
    info = sandbox.files.get_info("/home/user/dir/b.bin")
    assert info.size == 256 * 1024
    sandbox.files.rename("/home/user/dir/a.txt", "/home/user/dir/c.txt")
    assert not sandbox.files.exists("/home/user/dir/a.txt")
    assert sandbox.files.read("/home/user/dir/c.txt") == "alpha"
    sandbox.files.remove("/home/user/dir")
    assert not sandbox.files.exists("/home/user/dir")
    # What a command writes, the files API reads, and the other way round.
    sandbox.commands.run("echo made > /home/user/by-command.txt")
    assert sandbox.files.read("/home/user/by-command.txt") == "made\n"


def test_coreutils_list_and_stat_files(backend_sandbox):
    sandbox = backend_sandbox
    sandbox.files.write("/home/user/listed.txt", "12345")
    listing = sandbox.commands.run("ls -la /home/user")
    assert listing.exit_code == 0 and "listed.txt" in listing.stdout, listing
    size = sandbox.commands.run("stat -c %s /home/user/listed.txt")
    assert size.stdout.strip() == "5", size
    copied = sandbox.commands.run("cp -a /home/user/listed.txt /tmp/copy.txt && ls /tmp")
    assert "copy.txt" in copied.stdout, copied


def test_a_watch_sees_what_a_command_does(backend_sandbox):
    sandbox = backend_sandbox
    sandbox.files.make_dir("/home/user/watched")
    handle = sandbox.files.watch_dir("/home/user/watched")
    seen = []
    try:
        sandbox.commands.run("echo x > /home/user/watched/new.txt")

        def new_file_seen():
            seen.extend(e.name for e in handle.get_new_events())
            return "new.txt" in seen

        wait_until(new_file_seen, "the watch to see new.txt", 20, interval=0.2)
    finally:
        handle.stop()


def test_a_pty_echoes_and_resizes(backend_sandbox):
    sandbox = backend_sandbox
    terminal = PtyReader(sandbox.pty.create(PtySize(rows=24, cols=80)))
    try:
        sandbox.pty.send_stdin(terminal.handle.pid, b"stty size; echo pty-$((6*7))\n")
        terminal.wait_for(rb"24 80\r\npty-42")
        sandbox.pty.resize(terminal.handle.pid, PtySize(rows=30, cols=100))
        sandbox.pty.send_stdin(terminal.handle.pid, b"stty size\n")
        terminal.wait_for(rb"30 100")
    finally:
        ensure_killed(sandbox, terminal.handle.pid)


def test_a_port_served_inside_is_reached_through_get_host(backend_sandbox, cove_server):
    sandbox = backend_sandbox
    sandbox.files.write("/home/user/site/index.html", "served")
    sandbox.commands.run(
        "cd /home/user/site && python3 -m http.server 8080 --bind 127.0.0.1", background=True
    )
    host = sandbox.get_host(8080)
    wait_until(
        lambda: cove_server.request("GET", "/", host=host).status == 200, "the server", 30
    )
    assert cove_server.request("GET", "/index.html", host=host).body == b"served"


def test_run_code_keeps_state(backend_sandbox):
    from e2b_code_interpreter import Sandbox as CodeSandbox

    sandbox = CodeSandbox.connect(backend_sandbox.sandbox_id)
    assert sandbox.run_code("x = 20\nx * 2 + 2").text == "42"
    execution = sandbox.run_code("print('printed')\n1/0")
    assert execution.logs.stdout == ["printed\n"]
    assert execution.error.name == "ZeroDivisionError"
    assert sandbox.run_code("x").text == "20"


def test_timeout_metadata_and_kill(backend_sandbox):
    sandbox = backend_sandbox
    sandbox.set_timeout(120)
    info = Sandbox.get_info(sandbox.sandbox_id)
    assert 100 < (info.end_at - info.started_at).total_seconds() <= 130
    assert sandbox.is_running()
    assert sandbox.kill() is True
    assert not sandbox.is_running()
