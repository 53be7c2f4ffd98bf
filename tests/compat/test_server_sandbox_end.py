"""A sandbox that ends while a command streams, as the official SDKs see it.

The SDK (e2b >= 2.40) reacts to a stream dropped mid-way by probing the agent's `/health`
through the proxy: a 502 "sandbox was not found" makes it raise `SandboxNotRunningException`
(a `TimeoutException`) saying the sandbox "was killed or reached its end of life"; anything
else leaves the user with the bare transport error. So from the moment an end begins, the
proxy must answer 502 for the sandbox, before its processes die and the stream drops.
"""

import asyncio
import threading

import pytest
from e2b import AsyncSandbox, TimeoutException

from conftest import wait_until

pytestmark = pytest.mark.cove_server

KILLED = "was killed or reached its end of life"


def wait_in_thread(handle):
    """`handle.wait()` in a thread of its own; returns the thread and where its outcome goes."""
    outcome = {}

    def wait():
        try:
            outcome["result"] = handle.wait()
        except BaseException as err:  # noqa: BLE001 - the test looks at whatever it raised
            outcome["error"] = err

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, outcome


def assert_names_the_end(outcome):
    error = outcome.get("error")
    assert isinstance(error, TimeoutException), f"expected a TimeoutException, got {outcome!r}"
    assert KILLED in str(error), str(error)


# Several times over: the stream's drop and the probe race the end.
@pytest.mark.parametrize("attempt", range(3))
def test_kill_while_a_command_streams_names_the_kill(new_sandbox, attempt):
    sandbox = new_sandbox()
    handle = sandbox.commands.run("sleep 60", background=True)
    thread, outcome = wait_in_thread(handle)

    assert sandbox.kill() is True

    thread.join(timeout=60)
    assert not thread.is_alive(), "wait() still blocks after the kill"
    assert_names_the_end(outcome)


def test_timeout_while_a_command_streams_names_the_end(new_sandbox):
    sandbox = new_sandbox()
    handle = sandbox.commands.run("sleep 60", background=True)
    thread, outcome = wait_in_thread(handle)

    sandbox.set_timeout(1)

    thread.join(timeout=60)
    assert not thread.is_alive(), "wait() still blocks after the timeout"
    assert_names_the_end(outcome)
    assert sandbox.is_running() is False


def test_foreground_run_killed_from_elsewhere_names_the_kill(new_sandbox):
    sandbox = new_sandbox()
    outcome = {}

    def run():
        try:
            outcome["result"] = sandbox.commands.run("sleep 60", timeout=0)
        except BaseException as err:  # noqa: BLE001
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # The command runs once the agent lists it; kill then, from another connection.
    wait_until(lambda: sandbox.commands.list(), "the command to start", 30)
    assert sandbox.kill() is True

    thread.join(timeout=60)
    assert not thread.is_alive()
    assert_names_the_end(outcome)


@pytest.mark.asyncio
@pytest.mark.parametrize("attempt", range(3))
async def test_async_kill_while_a_command_streams_names_the_kill(server_env, attempt):
    sandbox = await AsyncSandbox.create()
    try:
        handle = await sandbox.commands.run("sleep 60", background=True)
        waiting = asyncio.create_task(handle.wait())

        assert await sandbox.kill() is True

        with pytest.raises(TimeoutException, match=KILLED):
            await asyncio.wait_for(waiting, 60)
    finally:
        await sandbox.kill()


@pytest.mark.asyncio
async def test_async_timeout_while_a_command_streams_names_the_end(server_env):
    sandbox = await AsyncSandbox.create()
    try:
        handle = await sandbox.commands.run("sleep 60", background=True)
        waiting = asyncio.create_task(handle.wait())

        await sandbox.set_timeout(1)

        with pytest.raises(TimeoutException, match=KILLED):
            await asyncio.wait_for(waiting, 60)
    finally:
        await sandbox.kill()
