"""A first `run_code` without waiting. By default a `cove serve` keeps, beside the warm
sandboxes for commands and files, a pool for creates of the code-interpreter template (as
`e2b-code-interpreter` 2.11.5 makes them) whose agents start the default Python kernel while
they wait to be handed out: such a create finds the kernel of its sandbox already running
(its process started before the create was sent, the sandbox's own log says the kernel was
ready, the warm-up counted no execution, and the variables the create set reach the kernel
all the same), while a sandbox created for commands runs no kernel. `--warm-kernels` alone
starts one in every warm sandbox, `--warm-kernels never` in none.
"""

import tempfile
from pathlib import Path

import pytest
import e2b
from e2b_code_interpreter import Sandbox

from conftest import point_sdks_at, running_cove_server, wait_until

# Checks about the kernel's own process, run in the sandbox: when it started (in seconds since
# the host booted, as /proc/uptime counts; sandboxes share the host's clock) and what it sees.
KERNEL_FACTS = """
import os
with open('/proc/self/stat') as stat:
    fields = stat.read().rsplit(')', 1)[1].split()
print(int(fields[19]) / os.sysconf('SC_CLK_TCK'), os.environ.get('COVE_HANDED_OVER'))
"""

WARM_LINE = "warm kernel ready"


@pytest.fixture
def work_dir():
    with tempfile.TemporaryDirectory(prefix="cove-compat-warm-kernel-") as work:
        yield Path(work)


def host_uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def sandboxes_with_warm_kernels(state_dir: Path) -> set[str]:
    """Sandboxes whose log says their kernel was started ahead of use and is ready."""
    return {
        log.parent.name
        for log in (state_dir / "sandboxes").glob("*/sandbox.log")
        if WARM_LINE in log.read_text(errors="replace")
    }


def kernels_running(sandbox) -> str:
    """The command lines of the sandbox's Jupyter kernels (the pattern does not match itself)."""
    return sandbox.commands.run("pgrep -af 'ipy[k]ernel' || true").stdout.strip()


def takes_a_running_kernel(warm: set[str]):
    before_create = host_uptime()
    with Sandbox.create(envs={"COVE_HANDED_OVER": "yes"}) as sandbox:
        assert sandbox.sandbox_id in warm, "the create took a warm sandbox"
        execution = sandbox.run_code(KERNEL_FACTS)
        assert execution.error is None, execution.error
        started, handed_over = "".join(execution.logs.stdout).split()
        assert float(started) < before_create, "the kernel started before the create"
        assert handed_over == "yes", "the create's variables reach a kernel started earlier"
        # The warm-up ran nothing the user can count.
        assert execution.execution_count == 1
        assert sandbox.run_code("1 + 1").text == "2"
        # New contexts still start kernels of their own.
        context = sandbox.create_code_context()
        assert sandbox.run_code("import os; os.getpid()", context=context).text != sandbox.run_code(
            "import os; os.getpid()"
        ).text


def test_code_interpreter_creates_take_sandboxes_whose_kernel_runs_already(work_dir, monkeypatch):
    with running_cove_server(work_dir / "state", work_dir / "server.log", extra_args=["--warm-pool", "1"]) as server:
        point_sdks_at(server, monkeypatch)
        # A sandbox for commands comes from the warm pool kept for them, with no kernel.
        with e2b.Sandbox.create() as plain:
            assert kernels_running(plain) == ""
            assert plain.sandbox_id not in sandboxes_with_warm_kernels(server.state_dir)
        # The first code-interpreter create starts the pool of its kind (with internet
        # access, as the SDK's default is); the next takes a sandbox from it.
        with Sandbox.create() as first:
            assert first.run_code("1 + 1").text == "2"
        warm = wait_until(
            lambda: sandboxes_with_warm_kernels(server.state_dir),
            "a warm sandbox's kernel to be ready",
            timeout=120,
        )
        takes_a_running_kernel(warm)
        # Commands' sandboxes still run none.
        with e2b.Sandbox.create() as plain:
            assert kernels_running(plain) == ""


def test_every_warm_sandbox_starts_its_kernel_with_the_flag_alone(work_dir, monkeypatch):
    with running_cove_server(
        work_dir / "state", work_dir / "server.log", extra_args=["--warm-pool", "1", "--warm-kernels"]
    ) as server:
        point_sdks_at(server, monkeypatch)
        # One warm sandbox of each kind (with and without internet access) for `base`, both
        # with their kernel ready before any create asked for one.
        warm = wait_until(
            lambda: (found := sandboxes_with_warm_kernels(server.state_dir)) and len(found) >= 2 and found,
            "the warm sandboxes' kernels to be ready",
            timeout=120,
        )
        takes_a_running_kernel(warm)


def test_no_warm_sandbox_starts_a_kernel_when_told_never(work_dir, monkeypatch):
    with running_cove_server(
        work_dir / "state", work_dir / "server.log", extra_args=["--warm-pool", "1", "--warm-kernels", "never"]
    ) as server:
        point_sdks_at(server, monkeypatch)
        for _ in range(2):
            with Sandbox.create() as sandbox:
                assert kernels_running(sandbox) == ""
                assert sandbox.run_code("1 + 1").text == "2"
        assert sandboxes_with_warm_kernels(server.state_dir) == set()


def test_a_sandbox_created_past_the_pool_starts_its_kernel_on_first_use(work_dir, monkeypatch):
    with running_cove_server(
        work_dir / "state", work_dir / "server.log", extra_args=["--warm-pool", "0"]
    ) as server:
        point_sdks_at(server, monkeypatch)
        before_create = host_uptime()
        with Sandbox.create(envs={"COVE_HANDED_OVER": "cold"}) as sandbox:
            execution = sandbox.run_code(KERNEL_FACTS)
            assert execution.error is None, execution.error
            started, handed_over = "".join(execution.logs.stdout).split()
            assert float(started) >= before_create - 0.01
            assert handed_over == "cold"
            assert execution.execution_count == 1
            assert sandboxes_with_warm_kernels(server.state_dir) == set()
