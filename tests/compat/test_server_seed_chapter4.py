"""The filesystem and process examples of the user story (seeds/e2b-chapter4-...) against a
real `cove serve`, each in its own sandbox, with the chapter's code kept as written and its
printed output checked. Departures, all forced by SDK 2.63 or by this environment:

- `Sandbox()` is `Sandbox.create()`: in SDK 2.x the bare constructor is deprecated and needs
  arguments only `create` / `connect` supply (`test_bare_constructor_is_not_the_sdk_2_way`).
- `entry.is_dir` is `entry.type == FileType.DIR`: SDK 2.63's `EntryInfo` has no `is_dir`.
- The background-server example polls the server with a deadline instead of `time.sleep(1)`.
- The examples that need `run_code` (code interpreter, port 49999: reading a file it wrote,
  the pandas download, the watcher fed by it) are left out until Cove serves it.
- `pip install pytest` needs egress (sandboxes have it by default, as on E2B), so the
  complete workflow needs this machine to reach PyPI.
"""

import json
import time

import pytest
from e2b import FileType
from e2b_code_interpreter import Sandbox

from conftest import wait_until
from seed_project import CALCULATOR, TEST_CALCULATOR

pytestmark = pytest.mark.cove_server


def test_bare_constructor_is_not_the_sdk_2_way(cove_server):
    # The chapter's `with Sandbox() as sandbox:` predates SDK 2.x; it fails in the SDK itself,
    # before any request, on E2B as on Cove.
    with pytest.raises(TypeError, match="missing 5 required positional arguments"):
        with Sandbox():
            pass
    assert cove_server.sandbox_ids() == set()


def test_write_text_files():
    with Sandbox.create() as sandbox:
        # Write a text file
        sandbox.files.write("/home/user/hello.txt", "Hello from E2B!")

        # Write a Python script
        sandbox.files.write("/home/user/script.py", """
import sys
print(f"Arguments: {sys.argv[1:]}")
print("Script executed successfully")
""")

        # Write a JSON config
        import json
        config = {"model": "gpt-4", "temperature": 0.7}
        sandbox.files.write(
            "/home/user/config.json",
            json.dumps(config, indent=2),
        )

        assert sandbox.files.read("/home/user/hello.txt") == "Hello from E2B!"
        assert json.loads(sandbox.files.read("/home/user/config.json")) == config
        assert sandbox.files.read("/home/user/config.json") == json.dumps(config, indent=2)
        result = sandbox.commands.run("python /home/user/script.py a b")
        assert result.stdout == "Arguments: ['a', 'b']\nScript executed successfully\n"
        owners = sandbox.commands.run("stat -c '%U %s %n' hello.txt script.py config.json")
        assert owners.stdout == (
            "user 15 hello.txt\n"
            f"user {len(sandbox.files.read('/home/user/script.py'))} script.py\n"
            f"user {len(json.dumps(config, indent=2))} config.json\n"
        )


def test_write_binary_files(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = b"".join(b"%d,%d,\xff\x00\n" % (i, i * i) for i in range(41))
    (tmp_path / "local_data.csv").write_bytes(b"id,square,raw\n" + rows)

    with Sandbox.create() as sandbox:
        # Upload a local file to the sandbox
        with open("local_data.csv", "rb") as f:
            sandbox.files.write("/home/user/data.csv", f)

        # Verify it arrived
        result = sandbox.commands.run("wc -l /home/user/data.csv")
        print(f"Lines: {result.stdout.strip()}")

        assert sandbox.files.read("/home/user/data.csv", format="bytes") == (
            tmp_path / "local_data.csv"
        ).read_bytes()

    assert capsys.readouterr().out == "Lines: 42 /home/user/data.csv\n"


def test_reading_files(capsys):
    with Sandbox.create() as sandbox:
        # Write then read
        sandbox.files.write("/home/user/test.txt", "line 1\nline 2\nline 3")

        # Read text content
        content = sandbox.files.read("/home/user/test.txt")
        print(content)  # "line 1\nline 2\nline 3"

        # (The chapter goes on to read a file written by `run_code`: not served yet.)

    assert capsys.readouterr().out == "line 1\nline 2\nline 3\n"


def test_listing_directories(capsys):
    with Sandbox.create() as sandbox:
        # Create some files
        sandbox.files.write("/home/user/project/src/main.py", "print('main')")
        sandbox.files.write("/home/user/project/src/utils.py", "# utils")
        sandbox.files.write("/home/user/project/README.md", "# Project")

        # List directory contents
        entries = sandbox.files.list("/home/user/project")
        for entry in entries:
            print(f"{'DIR ' if entry.type == FileType.DIR else 'FILE'} {entry.name}")

        # List with subdirectories
        entries = sandbox.files.list("/home/user/project/src")
        for entry in entries:
            print(f" {entry.name} ({entry.size} bytes)")

    lines = capsys.readouterr().out.splitlines()
    # The order of a listing is the directory's own; compare as sets per section.
    assert sorted(lines[:2]) == ["DIR  src", "FILE README.md"]
    assert sorted(lines[2:]) == [" main.py (13 bytes)", " utils.py (7 bytes)"]


def test_running_commands(capsys):
    with Sandbox.create() as sandbox:
        # Blocking command
        result = sandbox.commands.run("ls -la /home/user")
        print(result.stdout)
        print(f"Exit code: {result.exit_code}")

        # Command with environment variables
        result = sandbox.commands.run(
            "echo $MY_VAR",
            envs={"MY_VAR": "hello"},
        )
        print(result.stdout)  # "hello\n"

        # Command in a specific directory
        sandbox.files.write("/home/user/project/test.py", "print('test')")
        result = sandbox.commands.run(
            "python test.py",
            cwd="/home/user/project",
        )
        print(result.stdout)  # "test\n"

    out = capsys.readouterr().out
    listing, rest = out.split("\nExit code: ", 1)
    assert listing.startswith("total ")
    names = {line.split()[-1] for line in listing.splitlines()[1:] if line}
    assert {".", ".."} <= names
    assert rest == "0\nhello\n\ntest\n\n"


def test_background_processes(capsys):
    with Sandbox.create() as sandbox:
        # Start a web server in the background
        sandbox.files.write("/home/user/server.py", """
from http.server import HTTPServer, SimpleHTTPRequestHandler
import os
os.chdir("/home/user")
server = HTTPServer(("0.0.0.0", 8080), SimpleHTTPRequestHandler)
print("Server running on port 8080")
server.serve_forever()
""")

        proc = sandbox.commands.run(
            "python /home/user/server.py",
            background=True,
        )

        # Give server a moment to start (polled, not slept)
        def answered():
            probe = sandbox.commands.run(
                "curl -s -o /dev/null -w '%{http_code}' http://localhost:8080 || true"
            )
            return probe.stdout == "200"

        wait_until(answered, "the server in the sandbox to answer on port 8080")

        # Test the server
        result = sandbox.commands.run("curl -s http://localhost:8080")
        print(f"Server response length: {len(result.stdout)}")

        # Kill the background process
        proc.kill()

        assert "server.py" in result.stdout  # the directory listing of /home/user
        wait_until(
            lambda: proc.pid not in {p.pid for p in sandbox.commands.list()},
            "the killed server to leave the process list",
        )
        gone = sandbox.commands.run(
            "curl -s -o /dev/null -w '%{http_code}' http://localhost:8080 || true"
        )
        assert gone.stdout == "000"  # nothing listens any more

    out = capsys.readouterr().out
    assert out == f"Server response length: {len(result.stdout)}\n"
    assert len(result.stdout) > 0


def test_process_with_streaming_output(capsys):
    arrivals = []  # when each callback ran, to show that output streams in while it runs

    with Sandbox.create() as sandbox:
        sandbox.files.write("/home/user/worker.py", """
import time
import sys
for i in range(5):
    print(f"Processing step {i+1}/5")
    sys.stdout.flush()
    time.sleep(1)
print("Done!")
""")

        # Run with output callback
        result = sandbox.commands.run(
            "python /home/user/worker.py",
            on_stdout=lambda data: (arrivals.append(time.monotonic()), print(f"[STDOUT] {data}")),
            on_stderr=lambda data: print(f"[STDERR] {data}"),
        )
        ended = time.monotonic()
        print(f"Exit code: {result.exit_code}")

    out = capsys.readouterr().out
    steps = "".join(f"[STDOUT] Processing step {i}/5\n\n" for i in range(1, 6))
    assert out == steps + "[STDOUT] Done!\n\nExit code: 0\n"
    assert result.stdout == "".join(f"Processing step {i}/5\n" for i in range(1, 6)) + "Done!\n"
    # One chunk per step, the first ~4 s before the end, not all at once when it exits.
    assert len(arrivals) == 6
    assert arrivals[0] < ended - 3
    assert all(b - a > 0.5 for a, b in zip(arrivals, arrivals[1:]))


def test_complete_workflow_project_structure():
    # The workflow's first step and its code, without the pip step (see the next test).
    with Sandbox.create() as sandbox:
        sandbox.files.write("/home/user/project/calculator.py", CALCULATOR)
        sandbox.files.write("/home/user/project/test_calculator.py", TEST_CALCULATOR)

        names = {e.name for e in sandbox.files.list("/home/user/project")}
        result = sandbox.commands.run(
            "python -c 'from calculator import *; print(add(2, 3), multiply(3, 4), divide(10, 2))'",
            cwd="/home/user/project",
        )

    assert names == {"calculator.py", "test_calculator.py"}
    assert result.stdout == "5 12 5.0\n"


def test_complete_workflow(capsys):
    with Sandbox.create() as sandbox:
        # 1. Create project structure
        sandbox.files.write("/home/user/project/calculator.py", CALCULATOR)
        sandbox.files.write("/home/user/project/test_calculator.py", TEST_CALCULATOR)

        # 2. Install dependencies
        sandbox.commands.run("pip install pytest")

        # 3. Run tests
        result = sandbox.commands.run(
            "python -m pytest test_calculator.py -v",
            cwd="/home/user/project",
        )
        print(result.stdout)
        print(f"Tests passed: {result.exit_code == 0}")

    out = capsys.readouterr().out
    for name in ("test_add", "test_multiply", "test_divide"):
        assert f"test_calculator.py::{name} PASSED" in out
    assert "3 passed" in out
    assert out.endswith("Tests passed: True\n")
