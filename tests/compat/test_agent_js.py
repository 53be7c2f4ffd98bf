"""The official JavaScript SDK (npm `e2b`, pinned in js/package.json) against the agent.

Needs `node` and the locked packages: `npm ci --prefix tests/compat/js`.
"""

import json
import subprocess
import uuid

import pytest

from conftest import JS_DIR

pytestmark = pytest.mark.debug_agent


def test_js_sdk_writes_reads_and_runs(node, sandbox, workdir):
    path = f"{workdir}/from-js-{uuid.uuid4().hex[:6]}.txt"
    content = "written by the JS SDK ✓"

    completed = subprocess.run(
        [node, "debug-roundtrip.mjs", path, content],
        cwd=JS_DIR,  # the environment carries E2B_DEBUG=true from the debug_env fixture
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert report == {
        "written": {"name": path.rsplit("/", 1)[1], "path": path, "type": "file"},
        "readBack": content,
        "stdout": f"{len(content.encode())}\nuser\n",
        "exitCode": 0,
    }
    assert sandbox.files.read(path) == content
