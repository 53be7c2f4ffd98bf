"""Shared fixtures and helpers for the official-SDK compatibility suites.

Suites marked `debug_agent` (the `test_agent_*.py` files) run the official E2B SDKs in debug
mode (`E2B_DEBUG=true`): with no control plane, the SDKs send all sandbox traffic to
http://localhost:49983, where one `cove agent` per test session listens, started as PID 1 of
fresh PID and mount namespaces by `tests/support/agent-in-namespace.sh`. Suites against the
full `cove serve` can live beside them under their own marker.

Run (as root, which the namespaces need), from the repository root:

    cargo build
    python -m venv /tmp/e2bvenv && /tmp/e2bvenv/bin/pip install -r tests/compat/requirements.txt
    npm ci --prefix tests/compat/js        # for the JS SDK check; skipped without it
    /tmp/e2bvenv/bin/python -m pytest tests/compat          # or: -m debug_agent

The agent binary is `$COVE_BIN`, by default `<repo>/target/debug/cove`.
Set `COVE_AGENT_LOG=/some/file` to keep the agent's log after the run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pytest
import pytest_asyncio
from e2b import AsyncSandbox, CommandHandle, Sandbox

REPO = Path(__file__).resolve().parents[2]
AGENT_SCRIPT = REPO / "tests" / "support" / "agent-in-namespace.sh"
AGENT_HOST, AGENT_PORT = "127.0.0.1", 49983
AGENT_URL = f"http://{AGENT_HOST}:{AGENT_PORT}"
USER_HOME = "/home/user"
AGENT_START_TIMEOUT = 20.0

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Waiting: always poll a condition with a deadline, never sleep a fixed time.


def wait_until(
    condition: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Polls `condition` until it returns a truthy value (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """`wait_until` for async tests: yields to the event loop between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# The agent, once per session.


@dataclass(frozen=True)
class Agent:
    """A running `cove agent` reachable where the SDKs' debug mode looks for it."""

    url: str
    pid: int
    log: Path


def _port_is_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _health_status(url: str) -> Optional[int]:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


@pytest.fixture(scope="session")
def debug_agent() -> Agent:
    """Starts `cove agent --listen 127.0.0.1:49983` in fresh namespaces; kills it at the end."""
    cove = Path(os.environ.get("COVE_BIN", REPO / "target" / "debug" / "cove"))
    if not os.access(cove, os.X_OK):
        pytest.fail(f"no agent binary at {cove}: run `cargo build` or set COVE_BIN")
    if _port_is_open(AGENT_HOST, AGENT_PORT):
        pytest.fail(f"{AGENT_HOST}:{AGENT_PORT} is already in use; stop whatever listens there")

    work = Path(tempfile.mkdtemp(prefix="cove-compat-agent-"))
    log_path = Path(os.environ.get("COVE_AGENT_LOG", work / "agent.log"))
    proc: Optional[subprocess.Popen] = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [AGENT_SCRIPT, cove, work, "--listen", f"{AGENT_HOST}:{AGENT_PORT}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the agent exited with {proc.returncode} before answering /health:\n"
                    + log_path.read_text(errors="replace")
                )
            return _health_status(AGENT_URL) == 204

        wait_until(healthy, "the agent to answer GET /health with 204", AGENT_START_TIMEOUT)
        yield Agent(url=AGENT_URL, pid=proc.pid, log=log_path)
    finally:
        try:
            # unshare ignores SIGTERM; SIGKILL to it takes the whole namespace down with it.
            if proc is not None:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        finally:
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def debug_env(debug_agent: Agent, monkeypatch: pytest.MonkeyPatch) -> Agent:
    """Points the SDKs at the agent: debug mode on, nothing that would override its URL."""
    monkeypatch.setenv("E2B_DEBUG", "true")
    for name in ("E2B_SANDBOX_URL", "E2B_API_URL", "E2B_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    return debug_agent


@pytest.fixture(autouse=True)
def _debug_agent_for_marked_tests(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("debug_agent") is not None:
        request.getfixturevalue("debug_env")


def _require_debug_agent(request: pytest.FixtureRequest) -> None:
    """The sandbox fixtures serve debug_agent tests only until a server suite exists."""
    if request.node.get_closest_marker("debug_agent") is None:
        raise pytest.UsageError(f"{request.fixturename} needs a test marked debug_agent")
    request.getfixturevalue("debug_env")


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """A sync SDK sandbox; in debug mode it is the agent itself (create and kill are no-ops)."""
    _require_debug_agent(request)
    with Sandbox.create() as sbx:
        yield sbx


@pytest_asyncio.fixture
async def async_sandbox(request: pytest.FixtureRequest) -> AsyncSandbox:
    """An async SDK sandbox on the same agent."""
    _require_debug_agent(request)
    sbx = await AsyncSandbox.create()
    yield sbx
    await sbx.kill()


@pytest.fixture
def workdir(request: pytest.FixtureRequest, sandbox: Sandbox) -> str:
    """A fresh directory under /home/user for one test, removed afterwards."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    path = f"{USER_HOME}/{name}-{uuid.uuid4().hex[:8]}"
    assert sandbox.files.make_dir(path)
    yield path
    sandbox.files.remove(path)


# --------------------------------------------------------------------------------------------
# Processes.


def live_pids(sandbox: Sandbox) -> set[int]:
    """Pids of the commands and PTYs the agent reports as running."""
    return {process.pid for process in sandbox.commands.list()}


def wait_until_gone(sandbox: Sandbox, pid: int, timeout: float = 10.0) -> None:
    """Waits until the agent no longer lists `pid` and no /proc entry is left for it."""
    wait_until(lambda: pid not in live_pids(sandbox), f"pid {pid} to leave the list", timeout)
    wait_until(
        lambda: sandbox.commands.run(f"test -e /proc/{pid} || echo gone").stdout == "gone\n",
        f"pid {pid} to be reaped",
        timeout,
    )


def ensure_killed(sandbox: Sandbox, pid: int) -> None:
    """Cleanup for tests that start long-running processes: kill if still there."""
    if pid in live_pids(sandbox):
        sandbox.commands.kill(pid)


class PtyReader:
    """Reads a PTY handle's output on a thread so a test can wait for text while it types."""

    def __init__(self, handle: CommandHandle):
        self.handle = handle
        self._output = bytearray()
        self._lock = threading.Lock()
        self.result = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self.result = self.handle.wait(on_pty=self._append)
        except BaseException as err:  # handed to the test through `finish`
            self.error = err

    def _append(self, chunk: bytes) -> None:
        with self._lock:
            self._output.extend(chunk)

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def wait_for(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        """Waits until the output matches the regex `pattern`; returns the whole output."""
        regex = re.compile(pattern)
        try:
            wait_until(lambda: regex.search(self.output), f"{pattern!r} on the PTY", timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}; the PTY printed {self.output!r}") from None
        return self.output

    def finish(self, timeout: float = 10.0):
        """Waits for the PTY process to end; returns its result or raises its error."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the PTY stream did not end"
        if self.error is not None:
            raise self.error
        return self.result

