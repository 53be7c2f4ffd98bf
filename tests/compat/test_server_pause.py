"""Pause, resume, snapshots and fork with the official Python SDK (sync and async) against
`cove serve`, on real sandboxes.

On Cove's default backend a pause that keeps memory freezes the sandbox (its processes go on
where they stopped); a pause without memory ends its processes and keeps its files (a resume
starts it again on them); snapshots and forks copy the files, not the processes.
"""

import os
import secrets
import signal
import subprocess
import tempfile
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from e2b import AsyncSandbox, Sandbox, SandboxQuery, SandboxState

from conftest import (
    _cove_bin,
    _free_port,
    live_session_members,
    point_sdks_at,
    running_cove_server,
    wait_until,
)

pytestmark = pytest.mark.cove_server

# Each value is written beside the file and renamed over it, so a reader (or a pause) never
# meets the file truncated and still empty.
COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; "
    "sleep 0.05; done"
)


def count(sandbox) -> int:
    return int(sandbox.commands.run("cat /tmp/count 2>/dev/null || echo 0").stdout)


def start_counter(sandbox) -> int:
    """Starts a background counter in `sandbox`; returns its pid once it counts."""
    handle = sandbox.commands.run(COUNTER, background=True)
    wait_until(lambda: count(sandbox) > 2, "the counter to count")
    return handle.pid


def pause_mode(server, sandbox_id: str):
    return server.api("GET", f"/sandboxes/{sandbox_id}").json().get("pauseMode")


def test_pause_keeps_processes_and_connect_resumes_them(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/kept.txt", "still here")
    pid = start_counter(sandbox)

    at_pause = count(sandbox)
    assert sandbox.pause() is True
    info = Sandbox.get_info(sandbox.sandbox_id)
    assert info.state == SandboxState.PAUSED
    assert pause_mode(cove_server, sandbox.sandbox_id) == "full"
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    assert sandbox.sandbox_id in [s.sandbox_id for s in paused]
    running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
    assert sandbox.sandbox_id not in [s.sandbox_id for s in running]
    assert sandbox.pause() is False, "already paused"
    assert sandbox.is_running() is False

    resumed = Sandbox.connect(sandbox.sandbox_id, timeout=120)
    assert resumed.files.read("/home/user/kept.txt") == "still here"
    # The same process counts on from where it stood (a new one would start from 1).
    assert pid in [p.pid for p in resumed.commands.list()]
    wait_until(lambda: count(resumed) > at_pause + 2, "the counter to go on")
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    assert sandbox.is_running() is True


def test_a_command_running_through_a_pause_finishes_after_the_resume(new_sandbox):
    sandbox = new_sandbox()
    handle = sandbox.commands.run(
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo finished", background=True
    )
    assert sandbox.pause() is True
    resumed = Sandbox.connect(sandbox.sandbox_id)
    resumed.files.write("/tmp/go", "")
    # The stream opened before the pause carries the output of after the resume.
    result = handle.wait()
    assert (result.exit_code, result.stdout) == (0, "finished\n")


def test_a_pause_without_memory_ends_a_running_command_and_leaves_the_sandbox_paused(new_sandbox):
    sandbox = new_sandbox()
    handle = sandbox.commands.run("sleep 600", background=True)
    assert sandbox.pause(keep_memory=False) is True
    with pytest.raises(Exception):
        handle.wait()
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED


def test_pause_without_memory_restarts_the_processes_on_the_same_files(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/kept.txt", "on disk")
    start_counter(sandbox)

    assert sandbox.pause(keep_memory=False) is True
    assert pause_mode(cove_server, sandbox.sandbox_id) == "filesystem"
    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.files.read("/home/user/kept.txt") == "on disk"
    assert resumed.commands.run("stat -c %U /home/user/kept.txt").stdout == "user\n"
    # Its processes started again: the counter is not among them ([w] keeps grep out).
    assert resumed.commands.run("ps -eo args | grep -c '[w]hile :' || true").stdout == "0\n"
    assert resumed.commands.run("echo works").stdout == "works\n"


def test_auto_pause_on_timeout_and_auto_resume_by_a_request(new_sandbox, cove_server):
    sandbox = new_sandbox(lifecycle={"on_timeout": "pause", "auto_resume": True}, timeout=300)
    sandbox.files.write("/home/user/site/hello.txt", "hello")
    sandbox.commands.run(
        "python3 -m http.server 8080 --directory /home/user/site", background=True
    )
    host = sandbox.get_host(8080)
    wait_until(
        lambda: cove_server.request("GET", "/hello.txt", host=host).status == 200,
        "the server in the sandbox",
    )
    info = Sandbox.get_info(sandbox.sandbox_id)
    assert info.lifecycle == {"on_timeout": "pause", "auto_resume": True}

    sandbox.set_timeout(1)
    wait_until(
        lambda: Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED,
        "the timeout to pause it",
        timeout=20,
    )
    # A request to its port resumes it, and the same server answers.
    page = cove_server.request("GET", "/hello.txt", host=host)
    assert (page.status, page.body) == (200, b"hello")
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING


def test_a_paused_sandbox_without_auto_resume_is_not_woken_by_requests(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox.pause()
    response = cove_server.request("GET", "/", host=sandbox.get_host(8080))
    assert response.status == 502
    assert response.json()["message"] == "The sandbox is paused"
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED


def test_a_snapshot_starts_three_sandboxes(new_sandbox, cove_server):
    source = new_sandbox()
    source.files.write("/home/user/prepared.txt", "prepared once")
    source.commands.run("sudo sh -c 'echo system > /etc/prepared'")
    snapshot = source.create_snapshot()
    assert snapshot.snapshot_id.endswith(":default")
    assert snapshot.snapshot_id in [s.snapshot_id for s in source.list_snapshots().next_items()]
    copies = [new_sandbox(template=snapshot.snapshot_id) for _ in range(3)]
    for n, copy in enumerate(copies):
        assert copy.files.read("/home/user/prepared.txt") == "prepared once"
        assert copy.commands.run("cat /etc/prepared").stdout == "system\n"
        copy.files.write("/home/user/own.txt", f"copy {n}")
    # Each writes its own layer: none sees another's, the source sees none.
    assert [c.files.read("/home/user/own.txt") for c in copies] == ["copy 0", "copy 1", "copy 2"]
    assert not source.files.exists("/home/user/own.txt")
    assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
    assert Sandbox.delete_snapshot(snapshot.snapshot_id) is False
    # The copies run on without the snapshot's template.
    assert copies[0].files.read("/home/user/prepared.txt") == "prepared once"


def test_a_named_snapshot_is_listed_by_name(new_sandbox):
    source = new_sandbox()
    name = f"snap-{uuid.uuid4().hex[:8]}"
    snapshot = source.create_snapshot(name=name)
    assert snapshot.snapshot_id == f"default/{name}:default"
    assert snapshot.names == [f"default/{name}:default"]
    listed = Sandbox.list_snapshots(name=name).next_items()
    assert [s.snapshot_id for s in listed] == [snapshot.snapshot_id]
    assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True


def test_fork_makes_sandboxes_that_diverge(new_sandbox, cove_server):
    source = new_sandbox()
    source.files.write("/home/user/state.txt", "before the fork")
    forks = source.fork(count=2, timeout=120)
    try:
        assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks)
        ids = {source.sandbox_id, *(f.sandbox_id for f in forks)}
        assert len(ids) == 3
        for fork in forks:
            assert fork.files.read("/home/user/state.txt") == "before the fork"
        for n, sandbox in enumerate([source, *forks]):
            sandbox.files.write("/home/user/state.txt", f"path {n}")
        assert [s.files.read("/home/user/state.txt") for s in [source, *forks]] == [
            "path 0",
            "path 1",
            "path 2",
        ]
        assert Sandbox.get_info(source.sandbox_id).state == SandboxState.RUNNING
    finally:
        for fork in forks:
            if isinstance(fork, Sandbox):
                fork.kill()


def test_listing_filters_by_state_start_and_template_in_order(new_sandbox):
    suite = uuid.uuid4().hex
    sandboxes = []
    for n in range(3):
        sandboxes.append(new_sandbox(metadata={"suite": suite, "n": str(n)}))
    sandboxes[1].pause()
    ids = [s.sandbox_id for s in sandboxes]

    def listed(**query):
        order = query.pop("order", None)
        paginator = Sandbox.list(
            query=SandboxQuery(metadata={"suite": suite}, **query), order=order, limit=2
        )
        found = []
        while paginator.has_next:
            found.extend(s.sandbox_id for s in paginator.next_items())
        return found

    assert listed(order="asc") == ids
    assert listed(order="desc") == ids[::-1]
    assert listed(state=[SandboxState.PAUSED]) == [ids[1]]
    assert listed(state=[SandboxState.RUNNING], order="asc") == [ids[0], ids[2]]
    second = Sandbox.get_info(ids[1]).started_at
    assert listed(started_after=second, order="asc") == ids[1:]
    assert listed(template="base", order="asc") == ids
    assert listed(template="no-such-template") == []


def test_metrics_history_with_a_time_range(new_sandbox):
    sandbox = new_sandbox()
    first = sandbox.get_metrics()
    assert first and first[0].mem_total > 0 and first[0].disk_total > 0
    # Each look samples anew once the last sample is a second old.
    samples = wait_until(
        lambda: (lambda m: m if len(m) >= 3 else None)(sandbox.get_metrics()),
        "three samples",
        timeout=10,
        interval=0.3,
    )
    times = [s.timestamp for s in samples]
    assert times == sorted(times)
    start = times[0]
    within = sandbox.get_metrics(start=start, end=start)
    assert within and all(int(s.timestamp.timestamp()) == int(start.timestamp()) for s in within)
    assert len(within) < len(samples)
    assert sandbox.get_metrics(start=datetime.now(timezone.utc) + timedelta(hours=1)) == []


def test_paused_sandboxes_survive_a_server_restart(monkeypatch):
    """A `cove serve` killed with SIGKILL; the next one on the same state directory takes
    over its paused sandboxes (and its running one), which resume as they were."""
    with tempfile.TemporaryDirectory(prefix="cove-compat-restart-") as work:
        work = Path(work)
        state = work / "state"
        port, key = _free_port(), "e2b_" + secrets.token_hex(20)
        with open(work / "first.log", "wb") as log:
            first_done = False
            first = subprocess.Popen(
                [_cove_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", state],
                env={**os.environ, "COVE_API_KEY": key},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            monkeypatch.setenv("E2B_API_URL", f"http://127.0.0.1:{port}")
            monkeypatch.setenv("E2B_SANDBOX_URL", f"http://127.0.0.1:{port}")
            monkeypatch.setenv("E2B_API_KEY", key)

            def up():
                try:
                    Sandbox.list().next_items()
                    return True
                except Exception:  # not listening yet
                    return False

            wait_until(up, "the first server", timeout=30, interval=0.1)
            frozen = Sandbox.create()
            frozen.files.write("/home/user/f.txt", "frozen")
            start_counter(frozen)
            frozen.pause()
            stopped = Sandbox.create()
            stopped.files.write("/home/user/s.txt", "stopped")
            stopped.pause(keep_memory=False)
            running = Sandbox.create()
            first_done = True
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            if not first_done:
                # What the killed server left, a server on its state takes over and, run
                # with --kill-on-exit, ends when it stops (as the one below does).
                with running_cove_server(state, work / "cleanup.log"):
                    pass

        with running_cove_server(state, work / "second.log") as server:
            point_sdks_at(server, monkeypatch)
            assert Sandbox.get_info(frozen.sandbox_id).state == SandboxState.PAUSED
            assert Sandbox.get_info(stopped.sandbox_id).state == SandboxState.PAUSED
            assert Sandbox.get_info(running.sandbox_id).state == SandboxState.RUNNING
            again = Sandbox.connect(frozen.sandbox_id)
            assert again.files.read("/home/user/f.txt") == "frozen"
            before = count(again)
            wait_until(lambda: count(again) > before, "the counter to go on after the restart")
            assert Sandbox.connect(stopped.sandbox_id).files.read("/home/user/s.txt") == "stopped"
            for sandbox in (frozen, stopped, running):
                assert Sandbox.kill(sandbox.sandbox_id) is True
        assert not live_session_members(first.pid), "sandboxes of the first server outlived both"


@pytest.mark.asyncio
async def test_async_pause_connect_and_fork(cove_server):
    sandbox = await AsyncSandbox.create()
    forks = []
    try:
        await sandbox.files.write("/home/user/a.txt", "async")
        assert await sandbox.pause() is True
        info = await AsyncSandbox.get_info(sandbox.sandbox_id)
        assert info.state == SandboxState.PAUSED
        resumed = await AsyncSandbox.connect(sandbox.sandbox_id)
        assert await resumed.files.read("/home/user/a.txt") == "async"
        forks = await resumed.fork(count=2, timeout=60)
        assert len(forks) == 2
        for n, fork in enumerate(forks):
            assert await fork.files.read("/home/user/a.txt") == "async"
            await fork.files.write("/home/user/a.txt", f"fork {n}")
        assert await resumed.files.read("/home/user/a.txt") == "async"
        snapshot = await resumed.create_snapshot()
        from_snapshot = await AsyncSandbox.create(template=snapshot.snapshot_id)
        forks.append(from_snapshot)
        assert await from_snapshot.files.read("/home/user/a.txt") == "async"
        assert await AsyncSandbox.delete_snapshot(snapshot.snapshot_id) is True
    finally:
        for fork in forks:
            if isinstance(fork, AsyncSandbox):
                await fork.kill()
        await sandbox.kill()
