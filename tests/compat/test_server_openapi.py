"""Property tests of the control plane against its own OpenAPI document, with schemathesis.

A `cove serve` of this module's own (free port, temporary state, `--kill-on-exit`, no warm
pool, at most 3 sandboxes) is called on every operation of its `GET /openapi.json` with
inputs generated from the document, valid and invalid ones. Every answer must be one the
document describes: never a 5xx, a documented status, content type and headers, a body of the
documented schema. Calls that name a sandbox use a running one half of the time (the other
half a random id), so the 200 paths are exercised as well as the 404s.

Sandboxes are real: each one a create made is killed as soon as the create answered, the one
kept for the calls that name a sandbox is killed at the end, and stopping the server checks
that none outlived it (see conftest.py).
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import CoveServer, running_cove_server

pytestmark = pytest.mark.cove_server

# Examples per operation and generation mode: enough for the boundaries of every field,
# few enough that the whole module takes about a minute.
MAX_EXAMPLES = 30
MAX_SANDBOXES = 3
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def openapi_server() -> CoveServer:
    work = Path(tempfile.mkdtemp(prefix="cove-compat-openapi-"))
    try:
        args = ["--warm-pool", "0", "--max-sandboxes", str(MAX_SANDBOXES)]
        with running_cove_server(work / "state", work / "server.log", extra_args=args) as server:
            yield server
    finally:
        shutil.rmtree(work, ignore_errors=True)


class KeptSandbox:
    """A running sandbox for the operations that name one; started again when a generated
    call killed it (or set its timeout to 0)."""

    def __init__(self, server: CoveServer):
        self.server = server
        self.id: str | None = None

    def current(self) -> str:
        if self.id is not None and self.server.api("GET", f"/sandboxes/{self.id}").status == 200:
            return self.id
        response = self.server.request(
            "POST",
            "/v2/sandboxes",
            headers={"X-API-KEY": self.server.api_key, "Content-Type": "application/json"},
            body=b'{"timeout": 600}',
        )
        assert response.status == 201, response
        self.id = response.json()["sandboxID"]
        return self.id

    def kill(self) -> None:
        if self.id is not None:
            response = self.server.api("DELETE", f"/sandboxes/{self.id}")
            assert response.status in (204, 404), response


@pytest.fixture(scope="module")
def kept_sandbox(openapi_server: CoveServer) -> KeptSandbox:
    kept = KeptSandbox(openapi_server)
    yield kept
    kept.kill()


def _check(case, server: CoveServer, kept: KeptSandbox, seen: Counter) -> None:
    """One generated call: made with the server's key, its answer checked, a sandbox it
    created killed at once."""
    parameters = case.path_parameters or {}
    if "sandboxID" in parameters:
        generated = str(parameters["sandboxID"])
        if zlib.crc32(generated.encode()) % 2 == 0:
            parameters["sandboxID"] = kept.current()
    response = case.call(headers={"X-API-KEY": server.api_key}, timeout=60)
    seen[f"{case.method.upper()} {case.path} {response.status_code}"] += 1
    try:
        case.validate_response(response, checks=CHECKS)
    finally:
        if case.method.upper() == "POST" and response.status_code == 201:
            _end_what_was_made(server, response.json())


def _end_what_was_made(server: CoveServer, made) -> None:
    """Kills the sandboxes a 201 made (a create's sandbox, a fork's list of them) and deletes
    a snapshot it took."""
    if isinstance(made, list):  # a fork: `{sandbox}` or `{error}` per fork
        for entry in made:
            if "sandbox" in entry:
                _end_what_was_made(server, entry["sandbox"])
    elif "sandboxID" in made:
        # A generated create may ask for a timeout of 0 or 1 s: its sandbox may have ended by
        # itself before this kill (404). Stopping the server checks that none outlived it.
        killed = server.api("DELETE", f"/sandboxes/{made['sandboxID']}")
        assert killed.status in (204, 404), killed
    elif "snapshotID" in made:
        # A named snapshot's id holds `/` and `:` (`team/name:tag`, as E2B's).
        deleted = server.api("DELETE", f"/templates/{quote(made['snapshotID'], safe='')}")
        assert deleted.status == 204, deleted
    else:
        raise AssertionError(f"a 201 this test does not know how to undo: {made}")


def _describe(err: BaseException, indent: str = "") -> str:
    """An error with what it groups (Hypothesis reports a flaky failure as a group whose own
    message does not say what failed)."""
    text = f"{indent}{type(err).__name__}: {err}"
    for inner in getattr(err, "exceptions", ()):
        text += "\n" + _describe(inner, indent + "    ")
    return text


def test_every_operation_answers_as_documented(
    openapi_server: CoveServer, kept_sandbox: KeptSandbox
) -> None:
    # Hypothesis is driven here rather than through schemathesis' pytest plugin, whose lazy
    # loading does not work with pytest 9 (it sets `Node._nodeid`).
    schema = schemathesis.openapi.from_url(f"{openapi_server.url}/openapi.json")
    failures = []
    operations = 0
    seen: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,  # nothing written into the repository
                derandomize=True,  # the same inputs on every run
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                _check(case, openapi_server, kept_sandbox, seen)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to make invalid (`GET /health` takes no input at all).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as err:  # all failures are reported
                failures.append(f"{operation.label} ({mode.value}): {_describe(err)}")
    # What was called and answered (shown with `pytest -s`, or when the test fails).
    print("\n".join(f"{count:5} {call}" for call, count in sorted(seen.items())))
    assert operations >= 12, f"the document lists only {operations} operations"
    assert not failures, "\n\n".join(failures)
