"""Custom templates with the official SDKs (Python `e2b`, pinned in requirements.txt; the JS SDK
and E2B's own CLI for one build each) against `cove serve`: `Template.build` from an image
pulled through the server's registry mirror, with packages from the Debian mirror and PyPI,
files, variables, a working directory, a user and a start command; the sandboxes made from it;
failed builds; tags, names and deletion.

The image is the test image `cove-test-registry` pushes as docker.io's python:3.12 (Debian
bookworm with python3, pip and Node.js): `from_python_image("3.12")` pulls it from there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from e2b import Sandbox, Template, wait_for_port
from e2b.exceptions import BuildException, SandboxException

from conftest import JS_DIR, CoveServer, _cove_bin, wait_until

pytestmark = pytest.mark.templates

CLI = JS_DIR / "node_modules" / "@e2b" / "cli" / "dist" / "index.js"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A build context: a directory `app` with a file, a symbolic link to it and a subdir."""
    app = tmp_path / "app"
    (app / "static").mkdir(parents=True)
    (app / "main.py").write_text("print('hello from the template')\n")
    (app / "static" / "index.html").write_text("<h1>served from the template</h1>\n")
    os.symlink("main.py", app / "link.py")
    return tmp_path


@pytest.fixture
def delete_after(templates_server: CoveServer):
    """Names of templates to delete when the test ends (built ones take disk)."""
    names: list[str] = []
    yield names
    for name in names:
        templates_server.api("DELETE", f"/templates/{name}")


def test_a_template_has_its_packages_files_settings_and_running_server(
    context, templates_server, new_sandbox, delete_after
):
    name = unique("app")
    delete_after.append(name)
    template = (
        Template(file_context_path=str(context))
        .from_python_image("3.12")
        .apt_install(["iproute2", "sudo"])
        .pip_install(["six==1.16.0"])
        .copy("app", "/app/")
        .set_envs({"GREETING": "hello from ENV"})
        .set_workdir("/app")
        .set_user("user")
        .set_start_cmd("python3 -m http.server 8000", wait_for_port(8000))
    )
    logs = []
    info = Template.build(template, name, on_build_logs=logs.append)
    assert info.name == name and info.tags == ["default"]
    messages = [entry.message for entry in logs]
    assert any("apt-get install" in m for m in messages), messages
    assert any("Successfully installed six" in m for m in messages), messages
    assert Template.exists(name)

    sandbox = new_sandbox(template=name)
    result = sandbox.commands.run(
        "whoami; pwd; echo $GREETING; python3 -c 'import six; print(six.__version__)'; "
        "readlink /app/link.py; python3 /app/link.py; sudo -n whoami; ls -ld /home/user"
    )
    lines = result.stdout.splitlines()
    assert lines[:7] == [
        "user",
        "/app",
        "hello from ENV",
        "1.16.0",
        "main.py",
        "hello from the template",
        "root",
    ], result.stdout
    assert " user user " in lines[7], lines[7]
    # The start command serves, and was ready before create returned.
    answer = templates_server.request("GET", "/static/index.html", host=sandbox.get_host(8000))
    assert answer.status == 200, answer
    assert answer.body == b"<h1>served from the template</h1>\n"
    # Files written in the sandbox are its own; the template does not change.
    sandbox.files.write("/app/new.txt", "mine")
    other = new_sandbox(template=name)
    assert not other.files.exists("/app/new.txt")
    assert other.commands.run("cat /app/main.py").stdout == "print('hello from the template')\n"

    # An unchanged rebuild comes from the cache: no step runs again.
    logs.clear()
    Template.build(template, name, on_build_logs=logs.append)
    steps = [e.message for e in logs if re.match(r"\[\d+/\d+\]", e.message)]
    assert steps and all("CACHED" in s or " ENV " in s or " USER " in s for s in steps), steps


def test_a_failing_step_raises_build_exception_naming_it(templates_server, delete_after):
    name = unique("broken")
    delete_after.append(name)
    template = (
        Template()
        .from_python_image("3.12")
        .run_cmd("echo fine")
        .run_cmd("echo 'about to fail' >&2; exit 3")
    )
    logs = []
    with pytest.raises(BuildException) as raised:
        Template.build(template, name, on_build_logs=logs.append)
    message = str(raised.value)
    assert "step 2" in message and "exit status 3" in message, message
    assert any(e.message == "about to fail" for e in logs), [e.message for e in logs]
    assert not Template.exists(name) or Template.get_tags(name) == []


def test_tags_name_builds_and_deletion_keeps_running_sandboxes(
    templates_server, new_sandbox, delete_after
):
    name = unique("tagged")
    delete_after.append(name)

    def version(v: str) -> Template:
        return Template().from_python_image("3.12").run_cmd(f"echo {v} > /version", user="root")

    Template.build(version("one"), f"{name}:v1")
    Template.build(version("two"), name, tags=["v2", "default"])
    assigned = Template.assign_tags(f"{name}:v1", ["stable"])
    assert assigned.tags == ["stable"]
    tags = {t.tag: t.build_id for t in Template.get_tags(name)}
    assert set(tags) == {"v1", "v2", "default", "stable"}
    assert tags["v1"] == tags["stable"] == assigned.build_id
    assert tags["v2"] == tags["default"] != tags["v1"]

    def read(reference: str) -> str:
        return new_sandbox(template=reference).files.read("/version")

    assert read(f"{name}:v1") == "one\n"
    assert read(f"{name}:stable") == "one\n"
    assert read(name) == "two\n"
    Template.remove_tags(name, "stable")
    assert {t.tag for t in Template.get_tags(name)} == {"v1", "v2", "default"}
    with pytest.raises(SandboxException, match="no build tagged \"stable\""):
        Sandbox.create(f"{name}:stable")

    kept = new_sandbox(template=f"{name}:v1")
    assert templates_server.api("DELETE", f"/templates/{name}").status == 204
    assert not Template.exists(name)
    with pytest.raises(SandboxException, match="not found"):
        Sandbox.create(name)
    # The sandbox made before the deletion keeps its files (its layers are kept for it).
    assert kept.commands.run("cat /version && ls /usr/bin/python3").stdout == (
        "one\n/usr/bin/python3\n"
    )


def test_bad_requests_are_clear_4xx(templates_server, template_registry):
    with pytest.raises(BuildException, match="name"):
        Template.build(Template().from_python_image("3.12"), ":v1")
    # Asked of the local registry itself: no test traffic leaves this machine.
    registry = template_registry.removeprefix("http://")
    with pytest.raises(BuildException, match="not found"):
        Template.build(Template().from_image(f"{registry}/library/nothing:1"), unique("missing"))

    # A COPY whose files were never uploaded: refused before the build starts.
    api = templates_server
    headers = {"X-API-KEY": api.api_key, "Content-Type": "application/json"}
    created = api.request(
        "POST", "/v3/templates", headers=headers, body=json.dumps({"name": unique("nofiles")}).encode()
    )
    assert created.status == 202, created
    body = created.json()
    start = api.request(
        "POST",
        f"/v2/templates/{body['templateID']}/builds/{body['buildID']}",
        headers=headers,
        body=json.dumps(
            {
                "fromImage": "python:3.12",
                "steps": [
                    {"type": "RUN", "args": ["true"]},
                    {"type": "COPY", "args": ["a", "/a"], "filesHash": "0" * 64},
                ],
            }
        ).encode(),
    )
    assert start.status == 400, start
    assert "step 2 (COPY a /a)" in start.json()["message"], start.json()
    assert api.api("DELETE", f"/templates/{body['templateID']}").status == 204

    # A name another team holds.
    other_key = subprocess.run(
        [_cove_bin(), "keys", "create", "--team", "other-team", "--state-dir", api.state_dir],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    other_key = re.search(r"(cove_[0-9a-f]+)", other_key)[1]
    name = unique("owned")
    requested = api.request(
        "POST", "/v3/templates", headers=headers, body=json.dumps({"name": name}).encode()
    )
    assert requested.status == 202
    taken = api.request(
        "POST",
        "/v3/templates",
        headers={**headers, "X-API-KEY": other_key},
        body=json.dumps({"name": name}).encode(),
    )
    assert taken.status == 409 and "another team" in taken.json()["message"], taken
    assert Template.exists(name, api_key=other_key)  # E2B's answer: it exists, not yours
    assert api.api("DELETE", f"/templates/{name}").status == 204


def test_js_sdk_builds_a_template(node, templates_server, new_sandbox, delete_after):
    name = unique("js")
    delete_after.append(name)
    completed = subprocess.run(
        [node, "server-template.mjs", name],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr + completed.stdout
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"name": name, "stdout": "built by js\nuser\n", "exists": True}


def test_e2b_cli_builds_a_dockerfile(node, templates_server, new_sandbox, delete_after, tmp_path):
    if not CLI.exists():
        pytest.skip(f"@e2b/cli not installed: run `npm ci --prefix {JS_DIR}`")
    name = unique("cli")
    delete_after.append(name)
    (tmp_path / "hello.txt").write_text("copied by the CLI\n")
    (tmp_path / "e2b.Dockerfile").write_text(
        "FROM python:3.12\n"
        "ENV FROM_DOCKERFILE=yes\n"
        "RUN echo run-by-dockerfile > /ran.txt\n"
        "COPY hello.txt /home/user/hello.txt\n"
        "WORKDIR /home/user\n"
    )
    done = subprocess.run(
        [node, CLI, "template", "create", name, "--path", str(tmp_path)],
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sandbox = new_sandbox(template=name)
    result = sandbox.commands.run("cat /ran.txt hello.txt; echo $FROM_DOCKERFILE; pwd")
    assert result.stdout == "run-by-dockerfile\ncopied by the CLI\nyes\n/home/user\n"
