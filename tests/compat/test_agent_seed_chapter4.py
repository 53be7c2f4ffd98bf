"""The filesystem and process examples of the user story (seeds/e2b-chapter4-...), run as
written except for what this environment cannot do:

- The examples that need `run_code` (the code interpreter on port 49999) are left out.
- Paths live in a per-test directory instead of /home/user itself, so tests do not collide.
- The host (whose /usr the sandbox sees) has `python3` but no `python`, so commands say python3.
- `EntryInfo` of SDK 2.63.0 has no `is_dir`; the listing example compares `type` instead.
- `pip install pytest` cannot run here, so the pytest step runs only if the host has pytest.
"""

import json
import time

import pytest
from e2b import CommandExitException, FileType
from e2b_code_interpreter import Sandbox

from conftest import ensure_killed, wait_until, wait_until_gone
from seed_project import CALCULATOR, TEST_CALCULATOR

pytestmark = pytest.mark.debug_agent


@pytest.fixture
def sandbox(debug_env):
    """The chapter uses the code-interpreter flavour of the SDK's Sandbox."""
    with Sandbox.create() as sbx:
        yield sbx


def test_write_text_script_and_json(sandbox, workdir):
    sandbox.files.write(f"{workdir}/hello.txt", "Hello from E2B!")
    sandbox.files.write(
        f"{workdir}/script.py",
        """
import sys
print(f"Arguments: {sys.argv[1:]}")
print("Script executed successfully")
""",
    )
    config = {"model": "gpt-4", "temperature": 0.7}
    sandbox.files.write(f"{workdir}/config.json", json.dumps(config, indent=2))

    assert sandbox.files.read(f"{workdir}/hello.txt") == "Hello from E2B!"
    assert json.loads(sandbox.files.read(f"{workdir}/config.json")) == config
    result = sandbox.commands.run(f"python3 {workdir}/script.py one two")
    assert result.stdout == "Arguments: ['one', 'two']\nScript executed successfully\n"


def test_write_binary_from_local_file(sandbox, workdir, tmp_path):
    local = tmp_path / "local_data.csv"
    local.write_bytes(b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(99)))

    with open(local, "rb") as f:
        sandbox.files.write(f"{workdir}/data.csv", f)

    result = sandbox.commands.run(f"wc -l {workdir}/data.csv")
    assert result.stdout.strip() == f"100 {workdir}/data.csv"
    assert sandbox.files.read(f"{workdir}/data.csv", format="bytes") == local.read_bytes()


def test_read_text(sandbox, workdir):
    sandbox.files.write(f"{workdir}/test.txt", "line 1\nline 2\nline 3")

    assert sandbox.files.read(f"{workdir}/test.txt") == "line 1\nline 2\nline 3"


def test_list_directories(sandbox, workdir):
    project = f"{workdir}/project"
    sandbox.files.write(f"{project}/src/main.py", "print('main')")
    sandbox.files.write(f"{project}/src/utils.py", "# utils")
    sandbox.files.write(f"{project}/README.md", "# Project")

    entries = sandbox.files.list(project)
    assert {(e.name, e.type) for e in entries} == {
        ("README.md", FileType.FILE),
        ("src", FileType.DIR),
    }

    entries = sandbox.files.list(f"{project}/src")
    assert {(e.name, e.size) for e in entries} == {("main.py", 13), ("utils.py", 7)}


def test_run_commands(sandbox, workdir):
    sandbox.files.write(f"{workdir}/listed.txt", "x")
    result = sandbox.commands.run(f"ls -la {workdir}")
    assert result.exit_code == 0
    assert "listed.txt" in result.stdout

    result = sandbox.commands.run("echo $MY_VAR", envs={"MY_VAR": "hello"})
    assert result.stdout == "hello\n"

    sandbox.files.write(f"{workdir}/project/test.py", "print('test')")
    result = sandbox.commands.run("python3 test.py", cwd=f"{workdir}/project")
    assert result.stdout == "test\n"


def test_background_web_server(sandbox, workdir):
    sandbox.files.write(f"{workdir}/index.html", "<h1>served from the sandbox</h1>")
    sandbox.files.write(
        f"{workdir}/server.py",
        f"""
from http.server import HTTPServer, SimpleHTTPRequestHandler
import os
os.chdir("{workdir}")
server = HTTPServer(("0.0.0.0", 8080), SimpleHTTPRequestHandler)
print("Server running on port 8080")
server.serve_forever()
""",
    )
    proc = sandbox.commands.run(f"python3 {workdir}/server.py", background=True)
    try:

        def fetch():
            try:
                return sandbox.commands.run("curl -s http://localhost:8080")
            except CommandExitException:
                return None  # not listening yet

        result = wait_until(fetch, "the server to answer on port 8080")
        assert result.stdout == "<h1>served from the sandbox</h1>"

        assert proc.kill() is True
        with pytest.raises(CommandExitException) as exited:
            proc.wait()
        assert exited.value.exit_code == -1
        wait_until_gone(sandbox, proc.pid)
    finally:
        ensure_killed(sandbox, proc.pid)


def test_streaming_output_callbacks(sandbox, workdir):
    sandbox.files.write(
        f"{workdir}/worker.py",
        """
import time
import sys
for i in range(5):
    print(f"Processing step {i+1}/5")
    sys.stdout.flush()
    print(f"warning {i+1}", file=sys.stderr)
    time.sleep(0.5)
print("Done!")
""",
    )
    stdout, stderr = [], []

    result = sandbox.commands.run(
        f"python3 {workdir}/worker.py",
        on_stdout=lambda data: stdout.append((time.monotonic(), data)),
        on_stderr=lambda data: stderr.append((time.monotonic(), data)),
    )
    ended = time.monotonic()

    assert result.exit_code == 0
    expected = "".join(f"Processing step {i}/5\n" for i in range(1, 6)) + "Done!\n"
    assert "".join(data for _, data in stdout) == expected == result.stdout
    assert "".join(data for _, data in stderr) == "".join(f"warning {i}\n" for i in range(1, 6))
    # Output is streamed while the worker runs (2.5 s), not delivered at its end.
    assert len(stdout) >= 5 and len(stderr) >= 5
    assert stdout[0][0] < ended - 1.5
    assert stderr[0][0] < ended - 1.5


@pytest.fixture
def calculator_project(sandbox, workdir):
    project = f"{workdir}/project"
    sandbox.files.write(f"{project}/calculator.py", CALCULATOR)
    sandbox.files.write(f"{project}/test_calculator.py", TEST_CALCULATOR)
    return project


def test_workflow_project_structure(sandbox, calculator_project):
    assert {e.name for e in sandbox.files.list(calculator_project)} == {
        "calculator.py",
        "test_calculator.py",
    }
    result = sandbox.commands.run(
        "python3 -c 'from calculator import *; print(add(2, 3), multiply(3, 4), divide(10, 2))'",
        cwd=calculator_project,
    )
    assert result.stdout == "5 12 5.0\n"


def test_workflow_runs_pytest(sandbox, calculator_project):
    try:
        sandbox.commands.run("python3 -m pytest --version")
    except CommandExitException:
        pytest.skip(
            "the host's python3 has no pytest and `pip install pytest` inside the "
            "sandbox is not possible in this environment"
        )

    result = sandbox.commands.run(
        "python3 -m pytest test_calculator.py -v", cwd=calculator_project
    )
    assert result.exit_code == 0
    assert "3 passed" in result.stdout
