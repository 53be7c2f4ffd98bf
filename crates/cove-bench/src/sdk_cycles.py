"""Times create → `echo ready` → kill cycles, then `true` on one live sandbox, through the
official E2B Python SDK; prints the samples (seconds) as JSON. cove-bench runs it with
E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY pointing at a `cove serve`."""

import json
import sys
import time

from e2b import Sandbox

cycles, commands, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
WARM_UP = 3

cycle_samples = []
for i in range(WARM_UP + cycles):
    time.sleep(pause)
    started = time.perf_counter()
    sandbox = Sandbox.create()
    out = sandbox.commands.run("echo ready")
    sandbox.kill()
    took = time.perf_counter() - started
    assert out.stdout == "ready\n", out.stdout
    if i >= WARM_UP:
        cycle_samples.append(took)

command_samples = []
sandbox = Sandbox.create()
try:
    for i in range(WARM_UP + commands):
        started = time.perf_counter()
        sandbox.commands.run("true")
        took = time.perf_counter() - started
        if i >= WARM_UP:
            command_samples.append(took)
finally:
    sandbox.kill()

json.dump({"cycles": cycle_samples, "commands": command_samples}, sys.stdout)
