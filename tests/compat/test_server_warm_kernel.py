"""A first `run_code` without waiting: a `cove serve` of this module's own (`--warm-pool 1
--warm-kernels`) keeps warm sandboxes whose agents start the default Python kernel while they wait to be
handed out. `e2b-code-interpreter` 2.11.5 then finds the kernel of the sandbox it created
already running: its process started before the create was sent, the sandbox's own log says
the kernel was ready, the warm-up counted no execution, and the variables the create set
reach the kernel all the same.
"""

import tempfile
from pathlib import Path

import pytest
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


def test_a_sandbox_from_the_warm_pool_has_its_kernel_running_already(work_dir, monkeypatch):
    with running_cove_server(
        work_dir / "state", work_dir / "server.log", extra_args=["--warm-pool", "1", "--warm-kernels"]
    ) as server:
        point_sdks_at(server, monkeypatch)
        # One warm sandbox of each kind (with and without internet access) for `base`.
        warm = wait_until(
            lambda: (found := sandboxes_with_warm_kernels(server.state_dir)) and len(found) >= 2 and found,
            "the warm sandboxes' kernels to be ready",
            timeout=120,
        )
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
