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
from pathlib import Path

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


@pytest.fixture
def openapi_schema(openapi_server: CoveServer):
    schema = schemathesis.openapi.from_url(f"{openapi_server.url}/openapi.json")
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=MAX_EXAMPLES,
        # Repeatable runs, and no example database written into the repository.
        deterministic=True,
        database="none",
    )
    return schema


schema = schemathesis.pytest.from_fixture("openapi_schema")


@schema.parametrize()
def test_every_operation_answers_as_documented(
    case, openapi_server: CoveServer, kept_sandbox: KeptSandbox
) -> None:
    parameters = case.path_parameters or {}
    if "sandboxID" in parameters:
        generated = str(parameters["sandboxID"])
        if zlib.crc32(generated.encode()) % 2 == 0:
            parameters["sandboxID"] = kept_sandbox.current()
    response = case.call(headers={"X-API-KEY": openapi_server.api_key}, timeout=60)
    try:
        case.validate_response(response, checks=CHECKS)
    finally:
        if case.method.upper() == "POST" and response.status_code == 201:
            killed = openapi_server.api("DELETE", f"/sandboxes/{response.json()['sandboxID']}")
            assert killed.status == 204, killed
