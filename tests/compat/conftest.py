"""Shared fixtures and helpers for the official-SDK compatibility suites.

Two kinds of suite live here, chosen by marker:

- `debug_agent` (the `test_agent_*.py` files) runs the official E2B SDKs in debug mode
  (`E2B_DEBUG=true`): with no control plane, the SDKs send all sandbox traffic to
  http://localhost:49983, where one `cove agent` per test session listens, started as PID 1 of
  fresh PID and mount namespaces by `tests/support/agent-in-namespace.sh`.
- `cove_server` (the `test_server_*.py` files) runs them as a user would against E2B: one
  `cove serve` per test session (free port, temporary state dir, random API key) and, per
  test, `E2B_API_URL` / `E2B_SANDBOX_URL` / `E2B_API_KEY` pointing at it. Every sandbox is
  real; the session ends by killing leftovers, stopping the server with SIGTERM and checking
  that no sandbox outlived it.

Run (as root, which the namespaces need), from the repository root:

    cargo build
    python -m venv /tmp/e2bvenv && /tmp/e2bvenv/bin/pip install -r tests/compat/requirements.txt
    npm ci --prefix tests/compat/js        # for the JS SDK checks; skipped without it
    /tmp/e2bvenv/bin/python -m pytest tests/compat   # or: -m debug_agent / -m cove_server

The binary is `$COVE_BIN`, by default `<repo>/target/debug/cove`.
Set `COVE_AGENT_LOG=/some/file` or `COVE_SERVER_LOG=/some/file` to keep the agent's or the
server's log after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

import pytest
import pytest_asyncio
from e2b import AsyncSandbox, CommandHandle, Sandbox

REPO = Path(__file__).resolve().parents[2]
AGENT_SCRIPT = REPO / "tests" / "support" / "agent-in-namespace.sh"
AGENT_HOST, AGENT_PORT = "127.0.0.1", 49983
AGENT_URL = f"http://{AGENT_HOST}:{AGENT_PORT}"
USER_HOME = "/home/user"
AGENT_START_TIMEOUT = 20.0
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 30.0
JS_DIR = Path(__file__).parent / "js"

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


def _cove_bin() -> Path:
    cove = Path(os.environ.get("COVE_BIN", REPO / "target" / "debug" / "cove"))
    if not os.access(cove, os.X_OK):
        pytest.fail(f"no cove binary at {cove}: run `cargo build` or set COVE_BIN")
    return cove


@pytest.fixture(scope="session")
def debug_agent() -> Agent:
    """Starts `cove agent --listen 127.0.0.1:49983` in fresh namespaces; kills it at the end."""
    cove = _cove_bin()
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


# --------------------------------------------------------------------------------------------
# The server, once per session.


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class CoveServer:
    """A running `cove serve`: its REST API and its sandbox proxy share `url`."""

    url: str
    port: int
    api_key: str
    state_dir: Path
    log: Path
    pid: int

    @property
    def domain(self) -> str:
        """The sandbox domain the server reports (its default, `localhost:<port>`)."""
        return f"localhost:{self.port}"

    def request(
        self,
        method: str,
        target: str,
        *,
        host: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
        body: Optional[bytes] = None,
        timeout: float = 30.0,
    ) -> Response:
        """One raw HTTP/1.1 request to the server, optionally with another Host header.

        `*.localhost` names do not resolve in Python, so a `get_host()` address is reached by
        connecting here and sending it as Host, as a resolver that knows *.localhost would.
        """
        address = urllib.parse.urlsplit(self.url).hostname
        conn = http.client.HTTPConnection(address, self.port, timeout=timeout)
        try:
            all_headers = dict(headers or {})
            if host is not None:
                all_headers["Host"] = host
            conn.request(method, target, body=body, headers=all_headers)
            response = conn.getresponse()
            return Response(
                status=response.status,
                headers={k.lower(): v for k, v in response.getheaders()},
                body=response.read(),
            )
        finally:
            conn.close()

    def api(self, method: str, path: str, api_key: Optional[str] = None) -> Response:
        """A REST control-plane call with this server's API key (or `api_key`)."""
        return self.request(method, path, headers={"X-API-KEY": api_key or self.api_key})

    def sandbox_ids(self) -> set[str]:
        """Every sandbox the server lists, running or paused, over all pages."""
        ids: set[str] = set()
        token = ""
        while True:
            response = self.api("GET", f"/v2/sandboxes?limit=100{token}")
            assert response.status == 200, response
            ids.update(item["sandboxID"] for item in response.json())
            next_token = response.headers.get("x-next-token")
            if not next_token:
                return ids
            token = f"&nextToken={urllib.parse.quote(next_token)}"

    def sandbox_pids(self) -> dict[str, int]:
        """Host pid of every sandbox the server started (id → pid), from its log (the
        namespace runtime's handle names its PID 1)."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))
        found = re.finditer(r'sandbox started sandbox_id=(\w+) handle=\{[^}]*"pid":(\d+)', text)
        return {match[1]: int(match[2]) for match in found}

    def kill_all(self) -> set[str]:
        """Kills every sandbox the server lists; returns their ids."""
        ids = self.sandbox_ids()
        for sandbox_id in ids:
            self.api("DELETE", f"/sandboxes/{sandbox_id}")
        return ids


def _free_port() -> int:
    """A TCP port nothing on this machine listens on now, for a server that must know its
    port before it starts (`cove serve` need not: see `_printed_port`). Drawn at random below
    the kernel's ephemeral range, where neither outgoing connections nor listeners on port 0
    get theirs, so only another test drawing the same port in the same moment could take it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = range(10000, low)
    for port in secrets.SystemRandom().sample(candidates, min(100, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_LISTENING = re.compile(r"^Cove (?:([a-z,]+) )?listening on https?://\S+:(\d+)\s*$", re.M)


def _printed_port(
    proc: subprocess.Popen, log_path: Path, offset: int = 0, gateway: bool = False
) -> int:
    """The port a `cove serve --listen ADDR:0` got, from the line it prints once it listens
    (`Cove listening on …`, or with `gateway` the api's or edge's `Cove edge listening on …`)
    in its log at `log_path`, read from `offset` (where its run began). Raises when the server
    exits first."""

    def printed() -> Optional[int]:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        for match in _LISTENING.finditer(text):
            if bool(match.group(1)) == gateway:
                return int(match.group(2))
        if proc.poll() is not None:
            raise RuntimeError(
                f"cove serve exited with {proc.returncode} before it listened:\n" + text[-4000:]
            )
        return None

    return wait_until(printed, "cove serve to say where it listens", SERVER_START_TIMEOUT)


def _is_alive(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def live_session_members(sid: int) -> set[int]:
    """Pids of live (not zombie) processes in session `sid`: the server's sandboxes stay in
    the session the server started, so after it exits any such process is a leak."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.add(int(entry.name))
    return members


def network_helpers(targets: Iterable[int]) -> dict[int, int]:
    """Live `slirp4netns` processes (pid → target pid) serving the sandboxes whose host pids are
    `targets`. Each sandbox with egress has one; it runs in a session of its own."""
    targets = set(targets)
    helpers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        argv = [arg.decode(errors="replace") for arg in argv if arg]
        alive = stat[stat.rindex(")") + 2] != "Z"
        # slirp4netns [options] PID tap0
        if alive and len(argv) >= 3 and argv[0].endswith("slirp4netns") and argv[-2].isdigit():
            if int(argv[-2]) in targets:
                helpers[int(entry.name)] = int(argv[-2])
    return helpers


# How long a network helper may take to exit after its sandbox's PID 1 is gone. A kill answers
# once PID 1 is reaped; the helper, SIGKILLed at the same time, is torn down in the background
# (see NamespaceRuntime::kill), which on a loaded machine can take a moment longer.
HELPER_EXIT_GRACE = 10.0


def end_leaked_helpers(server: CoveServer) -> list[int]:
    """Ends (SIGKILL) any network helper that outlived its sandbox of this server by more than
    HELPER_EXIT_GRACE, so that a leak fails one test instead of piling up; returns their pids."""
    gone = [pid for pid in server.sandbox_pids().values() if not _is_alive(pid)]
    deadline = time.monotonic() + HELPER_EXIT_GRACE
    while (leaked := sorted(network_helpers(gone))) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in leaked:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leaked


def _stop_server(server: CoveServer, proc: subprocess.Popen, kill_leftovers: bool) -> None:
    """Stops the server as an operator would and checks that nothing of its sandboxes
    (processes, network helpers, mounts, loop devices, files) outlived it.

    With `kill_leftovers`, sandboxes still listed are killed through the API first (and
    reported: every test should end its own); otherwise `--kill-on-exit` has to end them."""
    problems = []
    if proc.poll() is None:
        if kill_leftovers:
            try:
                killed = server.kill_all()
                if killed:
                    problems.append(f"sandboxes still running at the end: {killed}")
            except (OSError, AssertionError) as err:
                problems.append(f"could not list or kill the leftover sandboxes: {err!r}")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append(f"the server ignored SIGTERM for {SERVER_STOP_TIMEOUT}s: SIGKILL")
            proc.kill()
            proc.wait(timeout=10)
    if proc.returncode not in (0, -signal.SIGTERM):
        problems.append(f"the server exited with {proc.returncode}")

    # The server started its own session, so whatever is left in it is a leaked sandbox.
    try:
        wait_until(lambda: not live_session_members(proc.pid), "the sandboxes to die", 5)
    except AssertionError:
        leaked = live_session_members(proc.pid)
        problems.append(f"processes outlived the server (now killed): {sorted(leaked)}")
        for pid in leaked:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    leaked = end_leaked_helpers(server)
    if leaked:
        problems.append(f"network helpers outlived their sandboxes (now killed): {leaked}")
    state = str(server.state_dir.resolve())
    mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if state in m]
    if mounts:
        problems.append(f"host mounts of the state dir outlived the server: {mounts}")
    loops = [
        backing.parent.parent.name
        for backing in Path("/sys/block").glob("loop*/loop/backing_file")
        if _read_or_empty(backing).startswith(state)
    ]
    if loops:
        problems.append(f"loop devices on the state dir's files outlived the server: {loops}")
    sandboxes_dir = server.state_dir / "sandboxes"
    left = sorted(p.name for p in sandboxes_dir.iterdir()) if sandboxes_dir.is_dir() else []
    if left:
        problems.append(f"{sandboxes_dir} is not empty after the server stopped: {left}")
    if problems:
        raise AssertionError(
            "cove serve did not shut down cleanly:\n  "
            + "\n  ".join(problems)
            + f"\nserver log ({server.log}):\n"
            + server.log.read_text(errors="replace")[-4000:]
        )


def _read_or_empty(path: Path) -> str:
    """A sysfs file's text, or "" when its device went away meanwhile (a loop device another
    test's server detaches between the listing and the read answers ENODEV)."""
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test's report ends with the log of each server it used: the servers' state
    dirs are gone by the time anyone reads a CI run."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, CoveServer) and value.log.exists():
            tail = value.log.read_text(errors="replace")[-8000:]
            report.sections.append((f"log of the server {name} (its last 8000 characters)", tail))


def logs_say(server: "CoveServer", sandbox_id: str, text: str) -> bool:
    """Whether `GET /sandboxes/{id}/logs` has an entry whose message ends with `text`."""
    answer = server.api("GET", f"/sandboxes/{sandbox_id}/logs")
    return any(e["message"].endswith(text) for e in answer.json()["logEntries"])


class HostNetwork:
    """A network namespace of a test's own behind a veth pair, standing in for "the internet":
    the host's side has `host_side` (CIDR), the namespace `guests` (CIDRs). Processes started
    in it with `spawn` are killed at the end; then the namespace and the link go, by name."""

    def __init__(self, prefix: str, host_side: str, guests: Iterable[str]) -> None:
        tag = f"{os.getpid() % 100000}"
        self.netns, self.link, peer = f"cove-{prefix}-{tag}", f"{prefix}{tag}h", f"{prefix}{tag}n"
        self.children: list[subprocess.Popen] = []
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "add", self.link, "type", "veth", "peer", "name", peer, "netns", self.netns)
            _ip("addr", "add", host_side, "dev", self.link)
            for guest in guests:
                _ip("-n", self.netns, "addr", "add", guest, "dev", peer)
            _ip("link", "set", self.link, "up")
            _ip("-n", self.netns, "link", "set", peer, "up")
            _ip("-n", self.netns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def spawn(self, argv: list[str]) -> None:
        """Starts `argv` inside the namespace, its output dropped."""
        self.children.append(
            subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def close(self) -> None:
        for child in self.children:
            child.kill()
            child.wait()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)


class NameServer:
    """A UDP name server answering A questions for `names` (name → IPv4 address), NXDOMAIN
    otherwise, on `bind` (host, port; by default a free port of 127.0.0.1)."""

    def __init__(self, names: dict[str, str], bind: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.names = names
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(bind)
        self.socket.settimeout(0.2)
        self.address = f"{bind[0]}:{self.socket.getsockname()[1]}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopped.is_set():
            try:
                query, peer = self.socket.recvfrom(512)
            except OSError:
                continue
            reply = self.answer(query)
            if reply:
                self.socket.sendto(reply, peer)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident = query[:2]
        labels, at = [], 12
        while at < len(query) and query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]].decode(errors="replace"))
            at += 1 + query[at]
        question = query[12 : at + 5]
        qtype = struct.unpack("!H", query[at + 1 : at + 3])[0] if at + 3 <= len(query) else 0
        name = ".".join(labels).lower()
        addr = self.names.get(name)
        if addr is None:
            return ident + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question
        answers = b""
        count = 0
        if qtype == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(addr)
            count = 1
        return ident + struct.pack("!HHHHH", 0x8180, 1, count, 0, 0) + question + answers

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.socket.close()


def host_gets(url: str, text: str) -> bool:
    """Whether this process (on the host, unfiltered, no proxy) reads `text` at `url`: a test
    host is really there, so a sandbox that cannot reach it is refused."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as answer:
            return answer.read().decode() == text
    except OSError:
        return False


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def running_cove_server(
    state_dir: Path,
    log_path: Path,
    *,
    kill_leftovers: bool = True,
    extra_args: Iterable[str] = (),
    resolv_conf: Optional[Path] = None,
) -> Iterator[CoveServer]:
    """Runs `cove serve --kill-on-exit [extra_args]` on a free port with a fresh API key until
    the block ends, then stops it as an operator would (see `_stop_server`).

    With `resolv_conf`, the server runs in a mount namespace of its own where that file is
    `/etc/resolv.conf`: the host's name servers are then the test's own (the server, the
    sandboxes' network helpers and the `base` template it builds all read that file), and no
    DNS query leaves the machine."""
    api_key = "e2b_" + secrets.token_hex(20)
    argv = [_cove_bin(), "serve", "--listen", "127.0.0.1:0", "--state-dir", str(state_dir),
            "--kill-on-exit", *extra_args]
    if resolv_conf is not None:
        # `unshare` and `sh` exec what follows: the process started is the server itself.
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv_conf), *argv]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            # The key goes by environment so that it does not show in `ps`.
            env={**os.environ, "COVE_API_KEY": api_key},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C on pytest does not reach it (the teardown stops it),
            # and its sandboxes can be told apart from every other process on the machine.
            start_new_session=True,
        )
    # Port 0 until it says which it got.
    server = CoveServer(
        url="http://127.0.0.1:0",
        port=0,
        api_key=api_key,
        state_dir=state_dir,
        log=log_path,
        pid=proc.pid,
    )
    try:
        port = _printed_port(proc, log_path)
        server = dataclasses.replace(server, url=f"http://127.0.0.1:{port}", port=port)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"cove serve exited with {proc.returncode} before answering /health:\n"
                    + log_path.read_text(errors="replace")
                )
            try:
                response = server.request("GET", "/health", timeout=1)
            except OSError:
                return False
            return response.status == 200 and response.json() == {"status": "ok"}

        wait_until(healthy, "cove serve to answer GET /health", SERVER_START_TIMEOUT)
        yield server
    finally:
        _stop_server(server, proc, kill_leftovers)


@pytest.fixture(scope="session")
def cove_server() -> CoveServer:
    """One `cove serve` for the whole session, its state in a temporary directory."""
    work = Path(tempfile.mkdtemp(prefix="cove-compat-server-"))  # 0700, which Cove handles
    try:
        log_path = Path(os.environ.get("COVE_SERVER_LOG", work / "server.log"))
        with running_cove_server(work / "state", log_path) as server:
            yield server
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _helper_service(name: str, variable: str, scheme: str) -> Iterator[str]:
    """Runs the test helper `name` of crates/cove-test-util (the binary `variable` names, else
    the one beside cove): it prints the URL of the service it started, and stops it when its
    standard input closes. Yields that URL."""
    binary = Path(os.environ.get(variable, _cove_bin().parent / name))
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no {name} binary at {binary}: run `cargo build -p cove-test-util`")
    proc = subprocess.Popen(
        [binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        line = proc.stdout.readline().decode().strip()
        if not line.startswith(scheme):
            raise RuntimeError(f"{name} did not start (exit {proc.poll()})")
        yield line
    finally:
        # Closing its stdin is what stops it; it then stops its service by pid.
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# Template builds: a registry seeded as Docker Hub's mirror, and a server that pulls from it.


@pytest.fixture(scope="session")
def template_registry() -> str:
    """`cove-test-registry` (crates/cove-test-util): Debian's docker-registry seeded with the
    test image as python:3.12, debian:bookworm, node:20 … (see its MIRRORED). Yields its URL."""
    # The first run builds the Debian image (minutes); later ones reuse it.
    with _helper_service("cove-test-registry", "COVE_TEST_REGISTRY_BIN", "http://") as url:
        yield url


@pytest.fixture(scope="session")
def templates_server(template_registry: str) -> CoveServer:
    """A `cove serve` for template builds: docker.io is mirrored by `template_registry`."""
    work = Path(tempfile.mkdtemp(prefix="cove-compat-templates-"))
    try:
        log_path = Path(os.environ.get("COVE_TEMPLATES_SERVER_LOG", work / "server.log"))
        mirror = ["--registry-mirror", f"docker.io={template_registry}"]
        with running_cove_server(work / "state", log_path, extra_args=mirror) as server:
            yield server
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def templates_env(templates_server: CoveServer, monkeypatch: pytest.MonkeyPatch) -> CoveServer:
    """Points the SDKs at the template server; fails a test that leaves sandboxes."""
    point_sdks_at(templates_server, monkeypatch)
    yield templates_server
    leftovers = templates_server.kill_all()
    leaked = end_leaked_helpers(templates_server)
    assert not leftovers, f"the test left sandboxes running (now killed): {leftovers}"
    assert not leaked, f"network helpers outlived their sandboxes (now killed): {leaked}"


def point_sdks_at(server: CoveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment a user sets to use the official SDKs with a Cove server."""
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    for name in ("E2B_DEBUG", "E2B_DOMAIN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server_env(cove_server: CoveServer, monkeypatch: pytest.MonkeyPatch) -> CoveServer:
    """Points the SDKs at the server as a user would; fails a test that leaves sandboxes."""
    point_sdks_at(cove_server, monkeypatch)
    yield cove_server
    leftovers = cove_server.kill_all()
    leaked = end_leaked_helpers(cove_server)
    assert not leftovers, f"the test left sandboxes running (now killed): {leftovers}"
    assert not leaked, f"network helpers outlived their sandboxes (now killed): {leaked}"


@pytest.fixture(autouse=True)
def _environment_for_marked_tests(request: pytest.FixtureRequest) -> None:
    _suite_of(request)


def _suite_of(request: pytest.FixtureRequest) -> Optional[str]:
    """The suite marker of the requesting test ("debug_agent" / "cove_server"), with its
    environment set up; None for an unmarked test."""
    suites = [
        m
        for m in ("debug_agent", "cove_server", "templates")
        if request.node.get_closest_marker(m)
    ]
    if len(suites) > 1:
        raise pytest.UsageError(f"{request.node.nodeid} has several suite markers {suites}")
    if not suites:
        return None
    request.getfixturevalue(
        {"debug_agent": "debug_env", "cove_server": "server_env", "templates": "templates_env"}[
            suites[0]
        ]
    )
    return suites[0]


def _require_suite(request: pytest.FixtureRequest) -> str:
    suite = _suite_of(request)
    if suite is None:
        raise pytest.UsageError(
            f"{request.fixturename} needs a test marked debug_agent or cove_server"
        )
    return suite


@pytest.fixture
def new_sandbox(request: pytest.FixtureRequest) -> Callable[..., Sandbox]:
    """Creates real sandboxes on the server (`Sandbox.create(**opts)`); kills them at the end."""
    suite = _require_suite(request)
    if suite == "debug_agent":
        raise pytest.UsageError("new_sandbox needs a test marked cove_server or templates")
    created: list[Sandbox] = []

    def create(**opts: Any) -> Sandbox:
        sbx = Sandbox.create(**opts)
        created.append(sbx)
        return sbx

    yield create
    # Through a connection of our own: teardown does not depend on the SDK's state.
    server: CoveServer = request.getfixturevalue(
        "templates_server" if suite == "templates" else "cove_server"
    )
    for sbx in created:
        response = server.api("DELETE", f"/sandboxes/{sbx.sandbox_id}")
        assert response.status in (204, 404), response  # 404: the test ended it already


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """A sync SDK sandbox: the agent itself in debug mode (create and kill are no-ops), a
    fresh sandbox on the server otherwise."""
    if _require_suite(request) == "cove_server":
        yield request.getfixturevalue("new_sandbox")()
        return
    with Sandbox.create() as sbx:
        yield sbx


@pytest_asyncio.fixture
async def async_sandbox(request: pytest.FixtureRequest) -> AsyncSandbox:
    """An async SDK sandbox, in the same way as `sandbox`."""
    _require_suite(request)
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


@pytest.fixture
def node() -> str:
    """The `node` binary, with the JS SDK installed in js/ (skips the test otherwise)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (JS_DIR / "node_modules" / "e2b").is_dir():
        pytest.skip(f"JS SDK not installed: run `npm ci --prefix {JS_DIR}`")
    return node


# --------------------------------------------------------------------------------------------
# A cluster (docs/CLUSTER.md): a PostgreSQL of the tests' own, an edge, nodes that can die.

POSTGRES_VERSIONS = Path("/usr/lib/postgresql")


def postgres_installed() -> bool:
    """Whether Debian's PostgreSQL server is installed (what `cove-test-postgres` runs)."""
    return any(POSTGRES_VERSIONS.glob("*/bin/postgres"))


@pytest.fixture(scope="module")
def cluster_database() -> str:
    """`cove-test-postgres` (crates/cove-test-util): a fresh PostgreSQL cluster on a free port
    for one test module, stopped and removed at its end. Yields its URL."""
    if not postgres_installed():
        pytest.skip(
            f"PostgreSQL is not installed under {POSTGRES_VERSIONS} (Debian package postgresql)"
        )
    with _helper_service("cove-test-postgres", "COVE_TEST_POSTGRES_BIN", "postgres://") as url:
        yield url


@dataclass(frozen=True)
class CoveEdge:
    """A running `cove serve --role edge`: sandbox traffic only, no API key, no state."""

    url: str
    port: int
    log: Path
    pid: int

    @property
    def domain(self) -> str:
        """The domain of the sandbox hosts it routes (its default, `localhost:<port>`)."""
        return f"localhost:{self.port}"


@contextlib.contextmanager
def running_cove_edge(database: str, log_path: Path, role: str = "edge") -> Iterator[CoveEdge]:
    """Runs `cove serve --role edge --database DATABASE` (or another stateless role, `api`)
    on a free port until the block ends, then stops it with SIGTERM (by its pid) and checks
    that it exited cleanly."""
    argv = [_cove_bin(), "serve", "--role", role, "--database", database,
            "--listen", "127.0.0.1:0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        port = _printed_port(proc, log_path, gateway=True)
        edge = CoveEdge(url=f"http://127.0.0.1:{port}", port=port, log=log_path, pid=proc.pid)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the edge exited with {proc.returncode} before answering /health:\n"
                    + log_path.read_text(errors="replace")
                )
            return _health_status(edge.url) == 200

        wait_until(healthy, "the edge to answer GET /health", SERVER_START_TIMEOUT)
        yield edge
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                raise AssertionError(f"the edge ignored SIGTERM for {SERVER_STOP_TIMEOUT}s")
        if proc.returncode not in (0, -signal.SIGTERM):
            raise AssertionError(
                f"the edge exited with {proc.returncode}:\n" + log_path.read_text(errors="replace")
            )


class RestartableCoveServer:
    """A `cove serve --kill-on-exit [extra_args]` as `running_cove_server` runs one, which a
    test may kill with SIGKILL (`crash`: as a machine that dies would stop it, so its
    sandboxes run on) and start again on the same port, API key and state dir
    (`start_again`). Used as a context manager: started on entry; on exit stopped and checked
    as `running_cove_server` does, and the sandboxes of its earlier runs (in their sessions)
    must be gone too.

    With `netns`, it runs in that network namespace (`nsenter --net`, which execs it: its pid
    is the server's; it shares the host's mounts and cgroups, so the checks above still see
    what it leaves) and listens on `address`, one of the namespace's."""

    def __init__(
        self,
        state_dir: Path,
        log_path: Path,
        extra_args: Iterable[str] = (),
        *,
        netns: Optional[str] = None,
        address: str = "127.0.0.1",
    ) -> None:
        # On the host: chosen by the server at its first start, then given on every start
        # again. In a network namespace of the test's own nothing else listens, and the
        # port is known before the start (a node's --advertise names it).
        self.port = _free_port() if netns is not None else 0
        self.api_key = "e2b_" + secrets.token_hex(20)
        self.state_dir = state_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.netns = netns
        self.address = address
        self.proc: Optional[subprocess.Popen] = None
        # The pids of its earlier runs: each started a session its sandboxes stayed in.
        self.earlier: list[int] = []

    @property
    def server(self) -> CoveServer:
        """The server as its current (or last) run is."""
        return CoveServer(
            url=f"http://{self.address}:{self.port}",
            port=self.port,
            api_key=self.api_key,
            state_dir=self.state_dir,
            log=self.log_path,
            pid=self.proc.pid if self.proc is not None else 0,
        )

    def start_again(self) -> CoveServer:
        """Starts the server (again) and waits until it answers /health."""
        assert self.proc is None or self.proc.poll() is not None, "the server still runs"
        if self.proc is not None:
            self.earlier.append(self.proc.pid)
        argv = [_cove_bin(), "serve", "--listen", f"{self.address}:{self.port}",
                "--state-dir", str(self.state_dir), "--kill-on-exit", *self.extra_args]
        if self.netns is not None:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        # Appended to: the log of every run, in order.
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self.proc = subprocess.Popen(
                argv,
                env={**os.environ, "COVE_API_KEY": self.api_key},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        port = _printed_port(self.proc, self.log_path, offset)
        assert self.port in (0, port), f"cove serve started again on {port}, not {self.port}"
        self.port = port
        proc, server = self.proc, self.server

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"cove serve exited with {proc.returncode} before answering /health:\n"
                    + self.log_path.read_text(errors="replace")[-4000:]
                )
            try:
                response = server.request("GET", "/health", timeout=1)
            except OSError:
                return False
            return response.status == 200 and response.json() == {"status": "ok"}

        wait_until(healthy, "cove serve to answer GET /health", SERVER_START_TIMEOUT)
        return server

    def crash(self) -> None:
        """SIGKILLs the server by its pid and reaps it; its sandboxes keep running."""
        assert self.proc is not None and self.proc.poll() is None, "the server does not run"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def __enter__(self) -> "RestartableCoveServer":
        self.start_again()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            # Crashed and not started again: one last run takes its sandboxes over and,
            # stopped, ends them.
            self.start_again()
        _stop_server(self.server, self.proc, kill_leftovers=True)
        for pid in self.earlier:
            try:
                wait_until(lambda: not live_session_members(pid), "the sandboxes to die", 5)
            except AssertionError:
                leaked = live_session_members(pid)
                for member in leaked:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(member, signal.SIGKILL)
                raise AssertionError(
                    f"processes started by an earlier run (pid {pid}) outlived the server "
                    f"(now killed): {sorted(leaked)}"
                ) from None


def point_sdks_at_cluster(
    node: CoveServer, edge: CoveEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment a user of a cluster sets: the REST API is a node's, the sandbox
    traffic goes to the edge."""
    monkeypatch.setenv("E2B_API_URL", node.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", edge.url)
    monkeypatch.setenv("E2B_API_KEY", node.api_key)
    for name in ("E2B_DEBUG", "E2B_DOMAIN"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------
# Processes.


def command_error(sandbox: Sandbox) -> Optional[str]:
    """The error (class and text) a command in `sandbox` fails with; None if it runs."""
    try:
        sandbox.commands.run("true")
    except Exception as err:  # whichever class the SDK picks, its text is what is checked
        return f"{type(err).__name__}: {err}"
    return None


def fails_saying_lost(sandbox: Sandbox) -> Optional[str]:
    """The error of a command in `sandbox` if it carries the edge's "lost" answer (the SDK's
    own text for any unreachable sandbox says "the connection to it was lost": not that)."""
    error = command_error(sandbox)
    return error if error is not None and "The sandbox is lost: its node" in error else None


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



# --------------------------------------------------------------------------------------------
# Relaying a loopback service to another address of this machine.


class TcpRelay:
    """Accepts TCP connections on `listen` (host, port; port 0 for a free one) and relays
    each, both ways, to `target`: what makes a service that listens on the loopback only (a
    test's PostgreSQL) reachable from a network namespace, at the host side of its veth. A
    connection that ends on either side is ended on the other, so the service sees a client
    that dies as gone at once. `close` stops accepting and ends every connection."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(listen)
        self.host, self.port = self.listener.getsockname()[:2]
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            sockets, self.sockets = self.sockets, []
        # shutdown wakes the accept and the pipes' recv; close frees the descriptors.
        for sock in [self.listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
