"""E2B's own command-line tool (npm `@e2b/cli`, pinned in js/package.json) against `cove serve`:
pause, resume, listing by state, snapshots, and the sandbox log it reads line by line as JSON.

Needs `node` and the locked packages: `npm ci --prefix tests/compat/js`.
"""

import json
import os
import re
import subprocess

import pytest
from e2b import Sandbox, SandboxState

from conftest import JS_DIR

pytestmark = pytest.mark.cove_server

CLI = JS_DIR / "node_modules" / "@e2b" / "cli" / "dist" / "index.js"


@pytest.fixture
def e2b(node):
    """Runs `e2b ARGS…` with the environment the server fixture set (E2B_API_URL, …)."""
    if not CLI.exists():
        pytest.skip(f"@e2b/cli not installed: run `npm ci --prefix {JS_DIR}`")

    def run(*args: str) -> str:
        done = subprocess.run(
            [node, CLI, *args],
            env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"e2b {' '.join(args)}: {done.stdout}{done.stderr}"
        return re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)

    return run


def test_e2b_cli_pauses_resumes_and_lists_by_state(e2b, new_sandbox):
    sandbox = new_sandbox()
    sandbox.files.write("/home/user/cli.txt", "kept")
    assert "has been paused" in e2b("sandbox", "pause", sandbox.sandbox_id)
    assert "already paused" in e2b("sandbox", "pause", sandbox.sandbox_id)
    paused = json.loads(e2b("sandbox", "list", "--state", "paused", "--format", "json"))
    assert sandbox.sandbox_id in [s["sandboxId"] for s in paused]
    running = json.loads(e2b("sandbox", "list", "--format", "json"))
    assert sandbox.sandbox_id not in [s["sandboxId"] for s in running]

    assert "has been resumed" in e2b("sandbox", "resume", sandbox.sandbox_id)
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING
    assert sandbox.files.read("/home/user/cli.txt") == "kept"


def test_e2b_cli_reads_the_sandbox_log(e2b, new_sandbox):
    sandbox = new_sandbox()
    lines = e2b("sandbox", "logs", sandbox.sandbox_id, "--format", "json", "--level", "DEBUG")
    entries = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    assert entries, lines
    assert all({"timestamp", "level", "message"} <= set(e) for e in entries), entries
    assert any("agent listening" in e["message"] for e in entries), entries
    pretty = e2b("sandbox", "logs", sandbox.sandbox_id)
    assert "agent listening" in pretty and "INFO" in pretty, pretty


def test_e2b_cli_snapshots(e2b, new_sandbox):
    sandbox = new_sandbox()
    created = e2b("sandbox", "snapshot", "create", sandbox.sandbox_id)
    snapshot_id = re.search(r"Created snapshot (\S+) from sandbox", created)[1]
    listed = json.loads(e2b("sandbox", "snapshot", "list", sandbox.sandbox_id, "--format", "json"))
    assert [s["snapshotId"] for s in listed] == [snapshot_id]
    assert "has been deleted" in e2b("sandbox", "snapshot", "delete", snapshot_id)
    left = json.loads(e2b("sandbox", "snapshot", "list", "--format", "json"))
    assert snapshot_id not in [s["snapshotId"] for s in left]
