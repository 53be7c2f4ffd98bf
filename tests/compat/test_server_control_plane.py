"""The E2B control plane of `cove serve` through the official Python SDK: create, list
(metadata filter, pagination), info, timeouts, connect, kill, auth, metrics, and what the SDK
sees of a sandbox that does not exist (see notes/control-plane.md for the wire contract)."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from e2b import (
    AuthenticationException,
    ConnectionConfig,
    Sandbox,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
)
from e2b_code_interpreter import Sandbox as CodeInterpreterSandbox
from packaging.version import Version

from conftest import wait_until

pytestmark = pytest.mark.cove_server

WRONG_KEY = "e2b_" + "0" * 40


def listed_ids(query=None, **opts) -> set[str]:
    """Ids of every sandbox `Sandbox.list` yields, over all pages."""
    paginator = Sandbox.list(query=query, **opts)
    ids: set[str] = set()
    while paginator.has_next:
        ids.update(info.sandbox_id for info in paginator.next_items())
    return ids


def close_to(actual: datetime, expected: datetime, slack: float = 5.0) -> bool:
    return abs((actual - expected).total_seconds()) <= slack


# --------------------------------------------------------------------------------------------
# Lifetime: create, kill, context manager, timeouts, connect.


def test_context_manager_kills_the_sandbox_on_exit(cove_server):
    with CodeInterpreterSandbox.create() as sandbox:
        sandbox_id = sandbox.sandbox_id
        assert sandbox.is_running()
        assert sandbox_id in listed_ids()

    assert sandbox_id not in listed_ids()
    assert sandbox_id not in cove_server.sandbox_ids()
    assert Sandbox.kill(sandbox_id) is False  # already gone: 404 → False, no raise
    assert not sandbox.is_running()


def test_context_manager_kills_the_sandbox_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with Sandbox.create() as sandbox:
            raise RuntimeError("boom")

    assert sandbox.sandbox_id not in listed_ids()
    assert Sandbox.kill(sandbox.sandbox_id) is False


def test_kill_by_id_and_by_instance(new_sandbox):
    first, second = new_sandbox(), new_sandbox()

    assert Sandbox.kill(first.sandbox_id) is True
    assert second.kill() is True

    assert not first.is_running() and not second.is_running()
    assert Sandbox.kill(first.sandbox_id) is False
    assert second.kill() is False


def test_create_answers_what_the_sdk_needs(new_sandbox, cove_server):
    sandbox = new_sandbox()

    assert sandbox.sandbox_id.isalnum() and sandbox.sandbox_id == sandbox.sandbox_id.lower()
    assert sandbox.sandbox_domain == cove_server.domain
    assert Version(str(sandbox._envd_version)) >= Version("0.6.4")
    assert sandbox.get_host(8080) == f"8080-{sandbox.sandbox_id}.{cove_server.domain}"


def test_get_info_fields(new_sandbox, cove_server):
    before = datetime.now(timezone.utc)
    sandbox = new_sandbox(timeout=120, metadata={"owner": "compat", "run": "info"})

    info = sandbox.get_info()

    assert info.sandbox_id == sandbox.sandbox_id
    assert info.template_id == "base"
    assert info.metadata == {"owner": "compat", "run": "info"}
    assert info.state == SandboxState.RUNNING
    assert info.sandbox_domain == cove_server.domain
    assert close_to(info.started_at, before)
    assert close_to(info.end_at, before + timedelta(seconds=120))
    assert info.cpu_count > 0 and info.memory_mb > 0
    assert Version(info.envd_version) >= Version("0.6.4")
    assert Sandbox.get_info(sandbox.sandbox_id).sandbox_id == sandbox.sandbox_id


def test_set_timeout_moves_the_end(new_sandbox):
    sandbox = new_sandbox(timeout=60)

    sandbox.set_timeout(600)

    assert close_to(sandbox.get_info().end_at, datetime.now(timezone.utc) + timedelta(seconds=600))


def test_set_timeout_ends_the_sandbox(new_sandbox, cove_server):
    sandbox = new_sandbox()
    sandbox_id = sandbox.sandbox_id

    sandbox.set_timeout(2)

    wait_until(lambda: not sandbox.is_running(), "the sandbox to reach its timeout", 20, 0.2)
    with pytest.raises(SandboxNotRunningException):
        sandbox.commands.run("true")
    assert sandbox_id not in listed_ids()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sandbox_id)
    assert Sandbox.kill(sandbox_id) is False
    sandbox_dir = cove_server.state_dir / "sandboxes" / sandbox_id
    wait_until(lambda: not sandbox_dir.exists(), "the sandbox's files to be removed")


def test_connect_by_id(new_sandbox):
    sandbox = new_sandbox(timeout=60)
    sandbox.files.write("/home/user/mark.txt", "left by the first client")

    again = Sandbox.connect(sandbox.sandbox_id)

    assert again.sandbox_id == sandbox.sandbox_id
    assert again.files.read("/home/user/mark.txt") == "left by the first client"
    assert again.commands.run("cat mark.txt").stdout == "left by the first client"
    # Connecting to a running sandbox only ever extends its life (default 300 s).
    assert close_to(again.get_info().end_at, datetime.now(timezone.utc) + timedelta(seconds=300))


def test_connect_to_unknown_sandbox_raises_not_found():
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("nosuchsandbox0000000")


# --------------------------------------------------------------------------------------------
# Listing.


def test_list_filters_by_metadata(new_sandbox):
    suite = uuid.uuid4().hex
    a = new_sandbox(metadata={"suite": suite, "role": "a", "user id": "x&y=z"})
    b = new_sandbox(metadata={"suite": suite, "role": "b"})

    assert listed_ids(SandboxQuery(metadata={"suite": suite})) == {a.sandbox_id, b.sandbox_id}
    assert listed_ids(SandboxQuery(metadata={"suite": suite, "role": "b"})) == {b.sandbox_id}
    # Keys and values that need escaping travel double-encoded (see the notes).
    assert listed_ids(SandboxQuery(metadata={"user id": "x&y=z", "suite": suite})) == {
        a.sandbox_id
    }
    assert listed_ids(SandboxQuery(metadata={"suite": suite, "role": "c"})) == set()

    [info] = Sandbox.list(query=SandboxQuery(metadata={"role": "a", "suite": suite})).next_items()
    assert info.metadata == {"suite": suite, "role": "a", "user id": "x&y=z"}
    assert info.state == SandboxState.RUNNING
    assert info.template_id == "base"


def test_list_pagination(new_sandbox):
    suite = uuid.uuid4().hex
    created = {new_sandbox(metadata={"suite": suite}).sandbox_id for _ in range(3)}

    paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": suite}), limit=2)
    assert paginator.has_next
    first = paginator.next_items()
    assert len(first) == 2
    assert paginator.has_next
    second = paginator.next_items()
    assert len(second) == 1
    assert not paginator.has_next

    assert {info.sandbox_id for info in first + second} == created
    with pytest.raises(Exception, match="No more items to fetch"):
        paginator.next_items()


def test_list_by_state(new_sandbox):
    sandbox = new_sandbox()

    assert sandbox.sandbox_id in listed_ids(SandboxQuery(state=[SandboxState.RUNNING]))
    assert sandbox.sandbox_id not in listed_ids(SandboxQuery(state=[SandboxState.PAUSED]))


# --------------------------------------------------------------------------------------------
# Authentication.


def test_wrong_api_key_is_refused_on_create(cove_server):
    with pytest.raises(AuthenticationException, match="401"):
        Sandbox.create(api_key=WRONG_KEY)

    assert cove_server.sandbox_ids() == set()


def test_wrong_api_key_is_refused_on_list(new_sandbox):
    new_sandbox()

    with pytest.raises(AuthenticationException, match="401"):
        Sandbox.list(api_key=WRONG_KEY).next_items()


def test_wrong_api_key_from_the_environment(monkeypatch, new_sandbox):
    sandbox = new_sandbox()
    monkeypatch.setenv("E2B_API_KEY", WRONG_KEY)

    with pytest.raises(AuthenticationException):
        Sandbox.create()
    with pytest.raises(AuthenticationException):
        Sandbox.kill(sandbox.sandbox_id)
    with pytest.raises(AuthenticationException):
        Sandbox.get_info(sandbox.sandbox_id)


def test_auth_errors_are_json(cove_server):
    wrong = cove_server.api("GET", "/v2/sandboxes", api_key=WRONG_KEY)
    missing = cove_server.request("GET", "/v2/sandboxes")  # no X-API-KEY at all

    for response in (wrong, missing):
        assert response.status == 401, response
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["code"] == 401 and isinstance(body["message"], str)


# --------------------------------------------------------------------------------------------
# A sandbox that is not there, seen through the proxy.


def ghost(cove_server, sandbox_id="nosuchsandbox0000000") -> Sandbox:
    """An SDK handle on a sandbox id the server never made, built as `Sandbox.connect` builds
    one from a connect answer (the routing headers live in its connection config)."""
    token = "not-a-real-token"
    return Sandbox(
        sandbox_id=sandbox_id,
        envd_version=Version("0.6.5"),
        envd_access_token=token,
        sandbox_domain=cove_server.domain,
        connection_config=ConnectionConfig(
            extra_sandbox_headers={
                "E2b-Sandbox-Id": sandbox_id,
                "E2b-Sandbox-Port": str(ConnectionConfig.envd_port),
                "X-Access-Token": token,
            }
        ),
    )


def test_unknown_sandbox_is_not_running(cove_server):
    sandbox = ghost(cove_server)

    assert sandbox.is_running() is False
    # Refused before their bodies are read: the connection must stay fit for the next call.
    with pytest.raises(SandboxNotRunningException, match="was not found"):
        sandbox.commands.run("echo hi")
    with pytest.raises(SandboxNotRunningException, match="was not found"):
        sandbox.files.write("/home/user/anything", "x")
    with pytest.raises(SandboxNotRunningException, match="was not found"):
        sandbox.files.read("/home/user/anything")
    assert sandbox.is_running() is False


def test_unknown_sandbox_proxy_answer(cove_server):
    response = cove_server.request(
        "GET",
        "/health",
        headers={"E2b-Sandbox-Id": "nosuchsandbox0000000", "E2b-Sandbox-Port": "49983"},
    )

    assert response.status == 502
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "sandboxId": "nosuchsandbox0000000",
        "message": "The sandbox was not found",
        "code": 502,
    }


def test_killed_sandbox_is_not_running(new_sandbox):
    sandbox = new_sandbox()
    assert sandbox.commands.run("echo alive").stdout == "alive\n"

    sandbox.kill()

    assert sandbox.is_running() is False
    with pytest.raises(SandboxNotRunningException):
        sandbox.commands.run("echo hi")
    with pytest.raises(SandboxNotFoundException):
        sandbox.get_info()
    with pytest.raises(SandboxNotFoundException):
        sandbox.set_timeout(30)


# --------------------------------------------------------------------------------------------
# Metrics and environment.


def test_get_metrics(new_sandbox):
    sandbox = new_sandbox()

    metrics = sandbox.get_metrics()

    assert metrics, "get_metrics returned no sample"
    latest = metrics[-1]
    assert latest.mem_total > 0
    assert 0 < latest.mem_used <= latest.mem_total
    assert latest.cpu_count > 0
    assert latest.cpu_used_pct >= 0
    assert latest.disk_total > 0
    assert close_to(latest.timestamp, datetime.now(timezone.utc), 60)
    assert Sandbox.get_metrics(sandbox.sandbox_id)


def test_envs_given_at_create_reach_commands(new_sandbox):
    sandbox = new_sandbox(envs={"A": "1", "GREETING": "hello world"})

    assert sandbox.commands.run("echo $A").stdout == "1\n"
    assert sandbox.commands.run('echo "$GREETING"').stdout == "hello world\n"
    # A command's own envs win over the sandbox's, for that command only.
    assert sandbox.commands.run("echo $A", envs={"A": "2"}).stdout == "2\n"
    assert sandbox.commands.run("echo $A").stdout == "1\n"
    # Background commands and other users see them too.
    handle = sandbox.commands.run("echo $A", background=True)
    assert handle.wait().stdout == "1\n"
    assert sandbox.commands.run("echo $A", user="root").stdout == "1\n"
