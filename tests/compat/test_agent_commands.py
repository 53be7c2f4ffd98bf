"""`sandbox.commands` of the official Python SDK against the agent (envd Process service)."""

import time
import uuid

import pytest
from e2b import (
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    TimeoutException,
)

from conftest import USER_HOME, ensure_killed, live_pids, wait_until, wait_until_gone

pytestmark = pytest.mark.debug_agent

UNKNOWN_PID = 999_999  # above any pid a fresh PID namespace hands out in a test run


@pytest.fixture
def background(sandbox):
    """Starts background commands and makes sure none outlives the test."""
    handles = []

    def start(cmd, **kwargs):
        handle = sandbox.commands.run(cmd, background=True, **kwargs)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        ensure_killed(sandbox, handle.pid)


def test_foreground_result(sandbox):
    result = sandbox.commands.run("echo out; echo err >&2")

    assert (result.exit_code, result.stdout, result.stderr, result.error) == (
        0,
        "out\n",
        "err\n",
        None,
    )


def test_send_stdin(sandbox, background):
    handle = background("head -n 1", stdin=True)

    sandbox.commands.send_stdin(handle.pid, "first line\n")

    assert handle.wait().stdout == "first line\n"


def test_send_stdin_through_handle_and_close_stdin(sandbox, background):
    handle = background("od -An -tx1 -v", stdin=True)  # hex dump of stdin, ends at EOF

    handle.send_stdin("abc ")
    handle.send_stdin(b"\x00\x01\xff def")
    sandbox.commands.close_stdin(handle.pid)

    result = handle.wait()
    assert bytes.fromhex(result.stdout) == b"abc \x00\x01\xff def"


def test_stdin_is_closed_unless_requested(sandbox):
    result = sandbox.commands.run("cat; echo done", timeout=5)

    assert result.stdout == "done\n"


def test_kill(sandbox, background):
    handle = background("sleep 30")
    assert handle.pid in live_pids(sandbox)

    assert sandbox.commands.kill(handle.pid) is True

    with pytest.raises(CommandExitException) as exited:
        handle.wait()
    assert exited.value.exit_code == -1
    assert exited.value.error == "signal: killed"
    wait_until_gone(sandbox, handle.pid)


def test_kill_unknown_pid_returns_false(sandbox):
    assert sandbox.commands.kill(UNKNOWN_PID) is False


def test_list_reports_running_commands(sandbox, background, workdir):
    handle = background("sleep 30", envs={"LISTED": "yes"}, cwd=workdir)

    listed = {p.pid: p for p in sandbox.commands.list()}

    process = listed[handle.pid]
    assert process.cmd == "/bin/bash"
    assert process.args == ["-l", "-c", "sleep 30"]
    assert process.envs == {"LISTED": "yes"}
    assert process.cwd == workdir
    assert process.tag is None

    sandbox.commands.kill(handle.pid)
    wait_until_gone(sandbox, handle.pid)


def test_connect_reattaches_to_background_process(sandbox, background):
    handle = background("read line; echo got:$line; echo bye >&2; exit 3", stdin=True)
    handle.disconnect()

    attached = sandbox.commands.connect(handle.pid)
    assert attached.pid == handle.pid
    sandbox.commands.send_stdin(handle.pid, "later\n")

    with pytest.raises(CommandExitException) as exited:
        attached.wait()
    assert exited.value.exit_code == 3
    assert exited.value.stdout == "got:later\n"
    assert exited.value.stderr == "bye\n"


def test_connect_shortly_after_exit_returns_the_end(sandbox, background):
    handle = background("echo done; exit 4")
    with pytest.raises(CommandExitException):
        handle.wait()

    # envd keeps the end of an exited process for 30 s for late re-attachment.
    with pytest.raises(CommandExitException) as exited:
        sandbox.commands.connect(handle.pid).wait()
    assert exited.value.exit_code == 4


def test_connect_unknown_pid_raises_not_found(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(UNKNOWN_PID)


def test_output_of_background_children_is_waited_for(sandbox):
    # envd ends a command when its output pipes close, not when the shell exits.
    result = sandbox.commands.run("(sleep 0.5; echo late) & echo early")

    assert result.stdout == "early\nlate\n"


def test_nonzero_exit_raises_command_exit_exception(sandbox):
    with pytest.raises(CommandExitException) as exited:
        sandbox.commands.run("echo partial; echo 'it broke' >&2; exit 7")

    assert exited.value.exit_code == 7
    assert exited.value.stdout == "partial\n"
    assert exited.value.stderr == "it broke\n"
    assert exited.value.error == "exit status 7"


def test_unknown_command_exits_127(sandbox):
    with pytest.raises(CommandExitException) as exited:
        sandbox.commands.run("no-such-command-anywhere")

    assert exited.value.exit_code == 127
    assert "no-such-command-anywhere: command not found" in exited.value.stderr


def test_timeout_raises_and_kills_the_process(sandbox):
    marker = uuid.uuid4().hex
    started = time.monotonic()

    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 10", envs={"COVE_MARKER": marker}, timeout=1)

    assert time.monotonic() - started < 5
    wait_until(
        lambda: all(p.envs.get("COVE_MARKER") != marker for p in sandbox.commands.list()),
        "the timed-out command to leave the list",
    )


def test_timeout_of_background_command_kills_it(sandbox, background):
    handle = background("sleep 10", timeout=1)

    with pytest.raises(TimeoutException):
        handle.wait()

    wait_until_gone(sandbox, handle.pid)


def test_default_user_and_root(sandbox):
    assert sandbox.commands.run("id -u").stdout == "1000\n"
    assert sandbox.commands.run("whoami").stdout == "user\n"
    assert sandbox.commands.run("id -u", user="root").stdout == "0\n"
    assert sandbox.commands.run("echo $HOME", user="root").stdout == "/root\n"


def test_unknown_user_is_rejected(sandbox):
    with pytest.raises(AuthenticationException):
        sandbox.commands.run("id", user="no-such-user")


def test_default_cwd_is_home(sandbox):
    assert sandbox.commands.run("pwd").stdout == f"{USER_HOME}\n"


def test_relative_cwd_resolves_against_home(sandbox, workdir):
    relative = workdir.removeprefix(f"{USER_HOME}/")

    assert sandbox.commands.run("pwd", cwd=relative).stdout == f"{workdir}\n"


def test_missing_cwd_is_an_error(sandbox, workdir):
    with pytest.raises(InvalidArgumentException) as raised:
        sandbox.commands.run("pwd", cwd=f"{workdir}/missing")

    assert "does not exist" in str(raised.value)


def test_envs(sandbox):
    result = sandbox.commands.run(
        'printf "%s|%s|%s" "$ONE" "$SPACED" "$HOME"',
        envs={"ONE": "1", "SPACED": "two words", "HOME": "/overridden"},
    )

    assert result.stdout == "1|two words|/overridden"


def test_base_environment(sandbox):
    result = sandbox.commands.run('printf "%s|%s|%s" "$HOME" "$USER" "$LOGNAME"')

    assert result.stdout == f"{USER_HOME}|user|user"


def test_e2b_sandbox_variable_is_set(sandbox):
    # envd puts E2B_SANDBOX=true in every process's environment; code checks it to know it
    # runs in a sandbox.
    assert sandbox.commands.run("echo $E2B_SANDBOX").stdout == "true\n"


def test_large_output_arrives_complete(sandbox):
    count = 750_000  # `seq` prints about 5.2 MB; order and completeness are both checked
    expected = "".join(f"{i}\n" for i in range(1, count + 1))

    result = sandbox.commands.run(f"seq 1 {count}")

    assert len(result.stdout) == len(expected) > 5_000_000
    assert result.stdout == expected


def test_large_stderr_arrives_complete(sandbox):
    result = sandbox.commands.run("head -c 3000000 /dev/zero | tr '\\0' e >&2")

    assert result.stderr == "e" * 3_000_000
    assert result.stdout == ""


@pytest.mark.asyncio
async def test_async_run_streams_output_while_running(async_sandbox):
    arrivals = []

    result = await async_sandbox.commands.run(
        "for i in 1 2 3; do echo tick $i; sleep 0.4; done",
        on_stdout=lambda data: arrivals.append((time.monotonic(), data)),
    )
    ended = time.monotonic()

    assert result.stdout == "tick 1\ntick 2\ntick 3\n"
    assert "".join(data for _, data in arrivals) == result.stdout
    assert arrivals[0][0] < ended - 0.6  # the first line came while the loop still ran


@pytest.mark.asyncio
async def test_async_background_kill(async_sandbox):
    handle = await async_sandbox.commands.run("sleep 30", background=True)

    assert await async_sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as exited:
        await handle.wait()
    assert exited.value.exit_code == -1
    assert await async_sandbox.commands.kill(handle.pid) is False
