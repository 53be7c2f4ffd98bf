"""`run_code` through `e2b-code-interpreter` 2.11.5 against a real `cove serve`: the code
interpreter on sandbox port 49999, served by the agent and backed by real Jupyter kernels
(ipykernel from the `base` template). State survives between calls, results come back in
every format the kernel renders, output streams while the code runs, a timeout interrupts
the kernel without losing the context, and contexts are independent of each other.
"""

import base64
import os
import re
import time

import httpx
import pytest
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import Sandbox

from conftest import wait_until

pytestmark = pytest.mark.cove_server


@pytest.fixture
def sbx():
    with Sandbox.create() as sandbox:
        yield sandbox


def test_state_survives_between_calls(sbx):
    first = sbx.run_code("import math\nx = 41\ndef grow(v):\n    return v + 1")
    assert first.error is None
    second = sbx.run_code("grow(x)")
    assert second.text == "42"
    assert second.results[0].is_main_result
    assert second.execution_count == first.execution_count + 1
    assert sbx.run_code("math.sqrt(16)").text == "4.0"


def test_runs_in_home_as_the_sandbox_user(sbx):
    execution = sbx.run_code("import os, getpass\nprint(os.getcwd(), getpass.getuser())")
    assert execution.logs.stdout == ["/home/user user\n"]
    # A file the code writes is the sandbox's file (the chapter's JSON example).
    sbx.run_code("open('from_kernel.txt', 'w').write('written by the kernel')")
    assert sbx.files.read("/home/user/from_kernel.txt") == "written by the kernel"


def test_string_results_lose_their_quotes_and_print_is_not_a_result(sbx):
    execution = sbx.run_code("print('out')\n'a string'")
    assert execution.logs.stdout == ["out\n"]
    assert execution.text == "a string"
    assert [r.is_main_result for r in execution.results] == [True]


def test_an_exception_comes_back_with_its_traceback(sbx):
    execution = sbx.run_code("def f():\n    raise ValueError('bad value')\nf()")
    assert execution.error is not None
    assert execution.error.name == "ValueError"
    assert execution.error.value == "bad value"
    assert "Traceback" in execution.error.traceback or "ValueError" in execution.error.traceback
    assert "f()" in execution.error.traceback
    # The kernel's pieces joined with nothing between them, as E2B's interpreter joins them.
    assert re.search(r"-{20}ValueError", execution.error.traceback), execution.error.traceback
    # No colour codes: the traceback reads as plain text.
    assert "\x1b[" not in execution.error.traceback
    assert execution.results == []
    # The context is still usable.
    assert sbx.run_code("1 + 1").text == "2"


def test_stderr_and_warnings(sbx):
    execution = sbx.run_code("import sys\nsys.stderr.write('to stderr\\n')\nprint('to stdout')")
    assert execution.logs.stderr == ["to stderr\n"]
    assert execution.logs.stdout == ["to stdout\n"]


def test_output_streams_while_the_code_runs(sbx):
    seen = []

    def on_stdout(message):
        seen.append((message.line, time.monotonic()))

    started = time.monotonic()
    sbx.run_code(
        "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.4)",
        on_stdout=on_stdout,
    )
    ended = time.monotonic()
    assert [line for line, _ in seen] == ["line 0\n", "line 1\n", "line 2\n"]
    # The first line arrived well before the code finished (0.8 s of sleeping after it).
    assert ended - seen[0][1] > 0.5, (started, seen, ended)
    # Each message carries the kernel's timestamp.


def test_callbacks_receive_results_and_errors(sbx):
    results, errors, stderr = [], [], []
    sbx.run_code(
        "import sys\nprint('x', file=sys.stderr)\ndisplay('shown')\n1/0",
        on_result=results.append,
        on_error=errors.append,
        on_stderr=stderr.append,
    )
    assert [r.text for r in results] == ["shown"]
    assert not results[0].is_main_result
    assert [e.name for e in errors] == ["ZeroDivisionError"]
    assert [m.line for m in stderr] == ["x\n"]
    assert stderr[0].error


def test_matplotlib_chart_comes_back_as_png(sbx):
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.title('squares')\n"
        "plt.show()"
    )
    assert execution.error is None, execution.error
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_pandas_dataframe_comes_back_as_html(sbx):
    execution = sbx.run_code(
        "import pandas as pd\npd.DataFrame({'name': ['a', 'b'], 'value': [1, 2]})"
    )
    assert execution.error is None, execution.error
    result = execution.results[0]
    assert result.is_main_result
    assert "<table" in result.html and "<td>a</td>" in result.html
    assert "name" in result.text


def test_rich_formats_from_display(sbx):
    execution = sbx.run_code(
        "from IPython.display import display, HTML, Markdown, JSON, SVG, Latex\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(Markdown('# title'))\n"
        "display(Latex(r'$x^2$'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'))\n"
        "display({'application/vnd.cove+json': {'k': 1}, 'text/plain': 'custom'}, raw=True)\n"
        "display(JSON({'a': [1, 2]}))"
    )
    assert execution.error is None, execution.error
    formats = [set(r.formats()) for r in execution.results]
    assert {"html"} <= formats[0]
    assert {"markdown"} <= formats[1]
    assert {"latex"} <= formats[2]
    assert {"svg"} <= formats[3]
    assert execution.results[4].extra == {"application/vnd.cove+json": {"k": 1}}
    assert execution.results[5].json == {"a": [1, 2]}


def test_env_vars_apply_to_one_execution_only(sbx):
    execution = sbx.run_code("import os\nos.environ.get('ONLY_NOW')", envs={"ONLY_NOW": "yes"})
    assert execution.text == "yes"
    assert sbx.run_code("import os\nos.environ.get('ONLY_NOW', 'gone')").text == "gone"
    # The sandbox's own variables are in the kernel, and come back after an override.
    assert sbx.run_code("os.environ['E2B_SANDBOX']").text == "true"
    assert sbx.run_code("os.environ['E2B_SANDBOX']", envs={"E2B_SANDBOX": "x"}).text == "x"
    assert sbx.run_code("os.environ['E2B_SANDBOX']").text == "true"


def test_sandbox_env_vars_reach_the_kernel():
    with Sandbox.create(envs={"FROM_CREATE": "hello"}) as sandbox:
        assert sandbox.run_code("import os; os.environ['FROM_CREATE']").text == "hello"


def test_timeout_interrupts_the_kernel_and_the_context_survives(sbx):
    sbx.run_code("counter = 1")
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.run_code("import time\nwhile True:\n    time.sleep(0.1)", timeout=2)
    assert time.monotonic() - started < 10
    # The interrupted loop let the kernel go; its state is intact.
    execution = sbx.run_code("counter + 1", timeout=30)
    assert execution.error is None, execution.error
    assert execution.text == "2"


def test_a_dead_kernel_is_reported_as_e2b_does_and_restarted(sbx):
    sbx.run_code("before = 1")
    execution = sbx.run_code("import os\nos._exit(3)")
    assert execution.error is not None
    # E2B's Jupyter restarts a dead kernel and its interpreter reports it restarting.
    error = execution.error
    assert (error.name, error.value, error.traceback) == (
        "ContextRestarting",
        "Context was restarted",
        "",
    )
    # The next run gets a fresh kernel.
    execution = sbx.run_code("'before' in dir()")
    assert execution.error is None, execution.error
    assert execution.text == "False"


def test_a_kernel_that_dies_while_idle_is_replaced_before_the_next_run(sbx):
    sbx.run_code("before = 1")
    pid = sbx.run_code("import os; os.getpid()").text
    sbx.run_code("import os, threading; threading.Timer(0.2, os._exit, (3,)).start()")
    wait_until(
        lambda: sbx.commands.run(f"test -e /proc/{pid} && echo alive || echo gone").stdout == "gone\n",
        "the kernel to die",
        30,
        0.2,
    )

    # As on E2B, whose Jupyter restarted it at once: the code runs, on a fresh kernel.
    execution = sbx.run_code("'before' in dir()")

    assert execution.error is None, execution.error
    assert execution.text == "False"


def interpreter_request(sbx, method: str, path: str) -> httpx.Response:
    """A raw request to the sandbox's code interpreter (port 49999) through cove serve."""
    return httpx.request(
        method,
        os.environ["E2B_SANDBOX_URL"] + path,
        headers={
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "E2b-Sandbox-Port": "49999",
            "X-Access-Token": sbx._envd_access_token,
        },
        timeout=60,
    )


def test_restart_and_remove_answer_200_null_as_e2b(sbx):
    context = sbx.create_code_context()

    restarted = interpreter_request(sbx, "POST", f"/contexts/{context.id}/restart")
    removed = interpreter_request(sbx, "DELETE", f"/contexts/{context.id}")

    for response in (restarted, removed):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.content == b"null"
    assert context.id not in {c.id for c in sbx.list_code_contexts()}


def test_contexts_are_isolated_from_each_other(sbx):
    one = sbx.create_code_context()
    two = sbx.create_code_context(cwd="/tmp")
    assert one.language == "python" and one.cwd == "/home/user"
    assert two.cwd == "/tmp"
    sbx.run_code("shared = 'one'", context=one)
    assert sbx.run_code("shared", context=one).text == "one"
    assert sbx.run_code("'shared' in dir()", context=two).text == "False"
    assert sbx.run_code("import os; os.getcwd()", context=two).text == "/tmp"
    ids = {c.id for c in sbx.list_code_contexts()}
    assert {one.id, two.id} <= ids
    sbx.remove_code_context(two)
    assert two.id not in {c.id for c in sbx.list_code_contexts()}
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=two)


def test_restart_clears_the_state(sbx):
    context = sbx.create_code_context()
    sbx.run_code("kept = 5", context=context)
    sbx.restart_code_context(context)
    execution = sbx.run_code("'kept' in dir()", context=context)
    assert execution.text == "False"
    with pytest.raises(NotFoundException):
        sbx.restart_code_context("no-such-context")


def test_bash_context(sbx):
    execution = sbx.run_code("echo hello from $SHELL_NAME; X=7", language="bash", envs={"SHELL_NAME": "bash"})
    assert execution.error is None, execution.error
    assert "".join(execution.logs.stdout) == "hello from bash\n"
    assert "".join(sbx.run_code("echo $X", language="bash").logs.stdout) == "7\n"
    context = sbx.create_code_context(language="bash")
    assert context.language == "bash"
    assert "".join(sbx.run_code("pwd", context=context).logs.stdout) == "/home/user\n"


def test_a_language_without_a_kernel_says_so(sbx):
    with pytest.raises(SandboxException, match="no Jupyter kernel for r"):
        sbx.run_code("1", language="r")
    with pytest.raises(SandboxException, match="no Jupyter kernel for r"):
        sbx.create_code_context(language="r")


def test_bad_requests_are_refused_clearly(sbx):
    with pytest.raises(SandboxException, match="is not an existing directory"):
        sbx.create_code_context(cwd="/no/such/dir")
    with pytest.raises(NotFoundException, match="not found"):
        sbx.remove_code_context("no-such-context")
    with pytest.raises(SandboxException, match="environment variable name"):
        sbx.run_code("1", envs={"NOT VALID": "x"})
