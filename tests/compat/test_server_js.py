"""The official JavaScript SDK (npm `e2b`, pinned in js/package.json) against `cove serve`.

Needs `node` and the locked packages: `npm ci --prefix tests/compat/js`.
"""

import json
import subprocess

import pytest
from e2b import Sandbox

from conftest import JS_DIR

pytestmark = pytest.mark.cove_server


def test_js_sdk_creates_writes_reads_runs_and_kills(node, cove_server):
    path = "/home/user/from-js.txt"
    content = "written by the JS SDK ✓"

    completed = subprocess.run(
        [node, "server-roundtrip.mjs", path, content],
        cwd=JS_DIR,  # the environment carries E2B_API_URL etc. from the server_env fixture
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    sandbox_id = report.pop("sandboxId")
    assert report == {
        "written": {"name": "from-js.txt", "path": path, "type": "file"},
        "readBack": content,
        "stdout": f"{len(content.encode())}\nuser\nyes\n",
        "exitCode": 0,
        "info": {
            "sandboxId": sandbox_id,
            "templateId": "base",
            "metadata": {"from": "js"},
            "state": "running",
        },
        "listed": [sandbox_id],
        "runningBefore": True,
        "killed": True,
        "runningAfter": False,
        "killedAgain": False,
    }
    # The Python SDK sees the same server: the sandbox is gone for it too.
    assert sandbox_id not in cove_server.sandbox_ids()
    assert Sandbox.kill(sandbox_id) is False


def test_js_sdk_pauses_resumes_and_forks(node, cove_server):
    completed = subprocess.run(
        [node, "server-pause-fork.mjs"],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    source = report.pop("sandboxId")
    forks = report.pop("forkIds")
    assert len(set(forks) | {source}) == 3
    assert report == {
        "paused": True,
        "pausedAgain": False,
        "whilePaused": "paused",
        "listedPaused": True,
        "readAfterResume": "from js",
        "afterResume": "running",
        "forkErrors": [],
        "forkReads": ["from js", "from js"],
        "afterWrites": ["from js", "fork 0", "fork 1"],
    }
    assert not {source, *forks} & cove_server.sandbox_ids()
