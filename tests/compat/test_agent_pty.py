"""`sandbox.pty` of the official Python SDK against the agent (Process service with a PTY)."""

import pytest
from e2b import CommandExitException, PtySize

from conftest import USER_HOME, PtyReader, ensure_killed, live_pids, wait_until_gone

pytestmark = pytest.mark.debug_agent


@pytest.fixture
def terminal(sandbox):
    """An interactive bash on a 24x80 PTY, its output read on a thread."""
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    reader = PtyReader(handle)
    yield reader
    ensure_killed(sandbox, handle.pid)


def type_line(sandbox, reader, line):
    # The terminal echoes what is typed: each test's command prints something its own
    # text does not contain, so a match in the output is the command's answer.
    sandbox.pty.send_stdin(reader.handle.pid, f"{line}\n".encode())


def test_pty_runs_an_interactive_shell(sandbox, terminal):
    type_line(sandbox, terminal, "echo $((6 * 7)) $TERM; tty; pwd; id -u")

    terminal.wait_for(rf"42 xterm-256color\r\n/dev/pts/\d+\r\n{USER_HOME}\r\n1000\r\n".encode())
    assert terminal.handle.pid in live_pids(sandbox)

    type_line(sandbox, terminal, "exit 5")
    with pytest.raises(CommandExitException) as exited:
        terminal.finish()
    assert exited.value.exit_code == 5
    wait_until_gone(sandbox, terminal.handle.pid)


def test_pty_resize(sandbox, terminal):
    type_line(sandbox, terminal, "stty size")
    terminal.wait_for(rb"24 80\r\n")

    sandbox.pty.resize(terminal.handle.pid, PtySize(rows=30, cols=100))
    type_line(sandbox, terminal, "stty size")

    terminal.wait_for(rb"30 100\r\n")


def test_pty_kill(sandbox, terminal):
    type_line(sandbox, terminal, "echo $((2 + 3))-ready")
    terminal.wait_for(rb"5-ready\r\n")

    assert sandbox.pty.kill(terminal.handle.pid) is True

    with pytest.raises(CommandExitException) as exited:
        terminal.finish()
    assert exited.value.exit_code == -1
    wait_until_gone(sandbox, terminal.handle.pid)
    assert sandbox.pty.kill(terminal.handle.pid) is False


def test_pty_as_root_with_cwd_and_envs(sandbox, workdir):
    handle = sandbox.pty.create(
        PtySize(rows=24, cols=80), user="root", cwd=workdir, envs={"GREETING": "hi"}
    )
    reader = PtyReader(handle)
    try:
        type_line(sandbox, reader, 'echo "[$(id -u)|$PWD|$GREETING]"; exit')

        reader.wait_for(rf"\[0\|{workdir}\|hi\]\r\n".encode())
        assert reader.finish().exit_code == 0
    finally:
        ensure_killed(sandbox, handle.pid)
