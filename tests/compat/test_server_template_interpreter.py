"""The code interpreter in templates other than `base`, with the official `e2b` and
`e2b-code-interpreter` SDKs (pinned in requirements.txt) against `cove serve`:

- a template built from the plain Python image (the test registry's Debian image served as
  docker.io's python:3.12) with `pip_install(["ipykernel"])` runs `run_code`, state kept
  across calls, on the kernel pip put into the template (not the host's);
- the `code-interpreter` template definition shipped in `templates/code-interpreter`, built
  by `cove template build` from the mirrored `debian:bookworm` with packages from the Debian
  mirror and PyPI, runs pandas and a matplotlib plot.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid

import pytest
from e2b import Template
from e2b_code_interpreter import Sandbox

from conftest import REPO, CoveServer, _cove_bin

pytestmark = pytest.mark.templates


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def delete_after(templates_server: CoveServer):
    """Names of templates to delete when the test ends (built ones take disk)."""
    names: list[str] = []
    yield names
    for name in names:
        templates_server.api("DELETE", f"/templates/{name}")


def test_a_python_image_with_pip_installed_ipykernel_runs_code(templates_server, delete_after):
    name = unique("pykernel")
    delete_after.append(name)
    template = Template().from_python_image("3.12").pip_install(["ipykernel"])
    Template.build(template, name)

    with Sandbox.create(name) as sandbox:
        first = sandbox.run_code("import sys, ipykernel\ncounter = 41")
        assert first.error is None, first.error
        second = sandbox.run_code("counter += 1\ncounter")
        assert second.error is None, second.error
        assert second.text == "42"
        assert second.execution_count == first.execution_count + 1
        # The kernel is the one pip installed into the template, on the image's Python.
        where = sandbox.run_code("print(sys.executable, ipykernel.__file__)")
        executable, module = where.logs.stdout[0].split()
        assert executable == "/usr/bin/python3", where.logs.stdout
        assert module.startswith("/usr/local/lib/python3"), where.logs.stdout
        spec = sandbox.files.read("/usr/local/share/jupyter/kernels/python3/kernel.json")
        assert '"python"' in spec, spec  # ipykernel's own spec: a `python` this image lacks
        assert not sandbox.files.exists("/usr/bin/python")


def test_the_shipped_code_interpreter_template_runs_pandas_and_matplotlib(
    templates_server, delete_after
):
    name = unique("code-interpreter")
    delete_after.append(name)
    built = subprocess.run(
        [_cove_bin(), "template", "build", REPO / "templates" / "code-interpreter", "--name", name],
        env={
            **os.environ,
            "COVE_API_URL": templates_server.url,
            "COVE_API_KEY": templates_server.api_key,
            "COVE_LOG": "warn",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"{name} is ready" in built.stdout, built.stdout

    with Sandbox.create(name) as sandbox:
        frame = sandbox.run_code(
            "import pandas as pd\n"
            "df = pd.DataFrame({'city': ['a', 'b', 'c'], 'rain': [3, 1, 2]})\n"
            "df.sort_values('rain')"
        )
        assert frame.error is None, frame.error
        assert frame.results[0].html and "<table" in frame.results[0].html
        total = sandbox.run_code("int(df['rain'].sum())")
        assert total.text == "6"
        plot = sandbox.run_code(
            "import matplotlib.pyplot as plt\n"
            "plt.bar(df['city'], df['rain'])\n"
            "plt.title('rain')\n"
            "plt.show()"
        )
        assert plot.error is None, plot.error
        pngs = [r.png for r in plot.results if r.png]
        assert len(pngs) == 1, plot.results
        assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"
        who = sandbox.run_code("import getpass, os\nprint(getpass.getuser(), os.getcwd())")
        assert who.logs.stdout == ["user /home/user\n"], who.logs
