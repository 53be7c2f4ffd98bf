"""Running `cove serve` itself: each test here starts a server of its own (beside the
session's) to stop it or to give it an unusual state directory."""

import os
import signal
import tempfile
from pathlib import Path

import pytest
from e2b import Sandbox

from conftest import (
    end_leaked_helpers,
    live_session_members,
    network_helpers,
    point_sdks_at,
    running_cove_server,
    wait_until,
)

pytestmark = pytest.mark.cove_server


@pytest.fixture
def work_dir():
    """A temporary directory for a server's state and log."""
    with tempfile.TemporaryDirectory(prefix="cove-compat-operation-") as work:
        yield Path(work)


def test_sigterm_with_kill_on_exit_ends_every_sandbox(work_dir, monkeypatch):
    with running_cove_server(
        work_dir / "state", work_dir / "server.log", kill_leftovers=False
    ) as server:
        point_sdks_at(server, monkeypatch)
        sandboxes = [Sandbox.create() for _ in range(3)]
        sandboxes[0].commands.run("sleep 600", background=True)
        assert len(live_session_members(server.pid)) >= 3  # the sandboxes' PID 1s
        on_disk = {p.name for p in (server.state_dir / "sandboxes").iterdir()}
        # Theirs, beside the warm sandboxes the server keeps ready.
        assert {s.sandbox_id for s in sandboxes} <= on_disk
    # Leaving the block sent SIGTERM and raised if any sandbox process or file was left.
    assert not any((work_dir / "state" / "sandboxes").iterdir())


def test_sigterm_during_a_reap_leaves_nothing_behind(work_dir, monkeypatch):
    log = work_dir / "server.log"
    with running_cove_server(work_dir / "state", log, kill_leftovers=False) as server:
        point_sdks_at(server, monkeypatch)
        sandboxes = [Sandbox.create(timeout=300) for _ in range(4)]
        for sandbox in sandboxes:
            sandbox.set_timeout(1)  # the reaper ends them one after the other

        wait_until(
            lambda: "reaping sandbox" in log.read_text(errors="replace"),
            "the reaper to start on the expired sandboxes",
            timeout=10,
            interval=0.005,
        )
        os.kill(server.pid, signal.SIGTERM)
    # Leaving the block waited for the server and raised if anything was left behind.


def test_state_dir_under_a_private_directory(monkeypatch):
    # What mktemp -d / mkdtemp make (the session's server runs under one too).
    with tempfile.TemporaryDirectory(prefix="cove-compat-private-") as private:
        assert Path(private).stat().st_mode & 0o777 == 0o700
        with running_cove_server(Path(private) / "state", Path(private) / "server.log") as server:
            point_sdks_at(server, monkeypatch)
            with Sandbox.create() as sandbox:
                assert sandbox.commands.run("echo up").stdout == "up\n"


def test_ending_a_sandbox_ends_its_network_helper(cove_server, new_sandbox):
    sandbox = new_sandbox()  # internet access is the default
    pid = cove_server.sandbox_pids()[sandbox.sandbox_id]
    if not network_helpers([pid]):
        pytest.fail("the sandbox has no network helper (is slirp4netns installed?)")

    assert sandbox.kill()

    try:
        wait_until(lambda: not network_helpers([pid]), "the sandbox's network helper to exit", 10)
    finally:
        end_leaked_helpers(cove_server)  # a leak fails this test only
