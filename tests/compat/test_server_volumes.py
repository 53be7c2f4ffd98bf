"""Volumes with the official Python SDK against `cove serve`, on real sandboxes: `Volume`
(create, list, info, connect, destroy; read, write, list, make_dir, remove, metadata through
the content API at `E2B_VOLUME_API_URL`), `volume_mounts` at sandbox create, two sandboxes
sharing one volume with the right owners, data surviving its sandboxes and a server restart,
and the quota (ENOSPC inside, 507 on upload).
"""

import os
import shutil
import secrets
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from e2b import AsyncSandbox, AsyncVolume, Sandbox, Volume
from e2b.exceptions import (
    SandboxException,
    VolumeException,
    VolumeNotFoundException,
    VolumePathNotFoundException,
)

from conftest import (
    _cove_bin,
    _free_port,
    live_session_members,
    point_sdks_at,
    running_cove_server,
    wait_until,
)

pytestmark = pytest.mark.cove_server


@pytest.fixture
def volumes_env(server_env, monkeypatch):
    """The SDKs pointed at the server, the volume content API too."""
    monkeypatch.setenv("E2B_VOLUME_API_URL", server_env.url)
    made: list[str] = []
    yield made
    for volume_id in made:
        Volume.destroy(volume_id)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_volume(made: list[str], server, name: str, size_mb: int | None = None) -> Volume:
    """`Volume.create`, or a raw create with Cove's `sizeMB` when a size is asked for."""
    if size_mb is None:
        volume = Volume.create(name)
    else:
        response = server.request(
            "POST",
            "/volumes",
            headers={"X-API-KEY": server.api_key, "Content-Type": "application/json"},
            body=f'{{"name": "{name}", "sizeMB": {size_mb}}}'.encode(),
        )
        assert response.status == 201, response.body
        volume = Volume.connect(response.json()["volumeID"])
    made.append(volume.volume_id)
    return volume


def test_volumes_are_created_listed_and_destroyed(volumes_env, server_env):
    name = unique("data")
    volume = create_volume(volumes_env, server_env, name)
    assert volume.name == name and volume.volume_id and volume.token
    assert any(v.volume_id == volume.volume_id and v.name == name for v in Volume.list())
    info = Volume.get_info(volume.volume_id)
    assert (info.name, info.token) == (name, volume.token)
    again = Volume.connect(volume.volume_id)
    assert again.name == name
    with pytest.raises(VolumeException, match="exists already"):
        Volume.create(name)
    with pytest.raises(Exception, match="invalid volume name"):
        Volume.create("no/slashes")

    assert Volume.destroy(volume.volume_id) is True
    volumes_env.remove(volume.volume_id)
    assert Volume.destroy(volume.volume_id) is False
    with pytest.raises(VolumeNotFoundException):
        Volume.get_info(volume.volume_id)
    assert all(v.volume_id != volume.volume_id for v in Volume.list())


def test_the_content_api_reads_writes_lists_and_removes(volumes_env, server_env):
    volume = create_volume(volumes_env, server_env, unique("content"))
    written = volume.write_file("/notes/a.txt", "hello", force=True)
    assert (written.name, written.path, written.size) == ("a.txt", "/notes/a.txt", 5)
    assert written.type.value == "file" and written.uid == 1000 and written.gid == 1000
    assert volume.read_file("/notes/a.txt") == "hello"
    assert volume.read_file("notes/a.txt", format="bytes") == b"hello"
    assert b"".join(volume.read_file("/notes/a.txt", format="stream")) == b"hello"
    volume.write_file("/notes/a.txt", b"\x00\x01 replaced")
    assert volume.read_file("/notes/a.txt", format="bytes") == b"\x00\x01 replaced"
    with pytest.raises(VolumePathNotFoundException):
        volume.write_file("/missing/b.txt", "x")

    made = volume.make_dir("/deep/er/dir", force=True, mode=0o750)
    assert made.type.value == "directory" and made.mode == 0o750
    with pytest.raises(VolumePathNotFoundException):
        volume.make_dir("/nowhere/dir")
    listed = volume.list("/")
    assert sorted(e.name for e in listed) == ["deep", "notes"]
    deep = volume.list("/", depth=3)
    assert "/deep/er/dir" in {e.path for e in deep}

    stat = volume.get_info("/notes/a.txt")
    assert stat.size == len(b"\x00\x01 replaced") and stat.mtime.tzinfo is not None
    changed = volume.update_metadata("/notes/a.txt", uid=0, gid=0, mode=0o600)
    assert (changed.uid, changed.gid, changed.mode) == (0, 0, 0o600)
    assert volume.exists("/notes/a.txt") and not volume.exists("/notes/b.txt")
    with pytest.raises(VolumePathNotFoundException):
        volume.read_file("/notes/b.txt")

    volume.remove("/deep")
    volume.remove("/notes/a.txt")
    assert [e.name for e in volume.list("/")] == ["notes"]
    with pytest.raises(VolumePathNotFoundException):
        volume.remove("/deep")


def test_two_sandboxes_share_a_volume_with_the_right_owners(volumes_env, server_env, new_sandbox):
    name = unique("shared")
    volume = create_volume(volumes_env, server_env, name)
    volume.write_file("/from-api.txt", "api")
    first = new_sandbox(volume_mounts={"/mnt/shared": volume})
    second = new_sandbox(volume_mounts={"/home/user/data": name})

    first.commands.run("echo one > /mnt/shared/one.txt")
    first.commands.run("echo root > /mnt/shared/root.txt", user="root")
    assert second.files.read("/home/user/data/one.txt") == "one\n"
    second.commands.run("echo two > /home/user/data/two.txt")
    assert first.files.read("/mnt/shared/two.txt") == "two\n"
    owners = "stat -c '%n %U %u' one.txt two.txt root.txt from-api.txt"
    expected = "one.txt user 1000\ntwo.txt user 1000\nroot.txt root 0\nfrom-api.txt user 1000\n"
    assert first.commands.run(owners, cwd="/mnt/shared").stdout == expected
    assert second.commands.run(owners, cwd="/home/user/data").stdout == expected
    # The sandbox's user may change what the host wrote for it.
    second.commands.run("echo changed >> /home/user/data/from-api.txt")
    assert volume.read_file("/from-api.txt") == "apichanged\n"
    assert volume.get_info("/root.txt").uid == 0

    # Mounted: not deleted, with a message that says why.
    with pytest.raises(VolumeException, match="409.*kill them before deleting it"):
        Volume.destroy(volume.volume_id)
    first.kill()
    second.kill()
    # The files outlive both sandboxes, for the host and for the next sandbox.
    assert volume.read_file("/two.txt") == "two\n"
    third = new_sandbox(volume_mounts={"/v": name})
    assert third.files.read("/v/one.txt") == "one\n"
    third.kill()


def test_a_volume_stays_mounted_across_pause_and_resume(volumes_env, server_env, new_sandbox):
    volume = create_volume(volumes_env, server_env, unique("paused"))
    sandbox = new_sandbox(volume_mounts={"/data": volume})
    sandbox.commands.run("echo before > /data/f.txt")
    for keep_memory in (True, False):
        sandbox.pause(keep_memory=keep_memory)
        # Paused is still mounted: not deleted.
        with pytest.raises(VolumeException, match="409"):
            Volume.destroy(volume.volume_id)
        sandbox = Sandbox.connect(sandbox.sandbox_id)
        sandbox.commands.run(f"echo {keep_memory} >> /data/f.txt")
    assert volume.read_file("/f.txt") == "before\nTrue\nFalse\n"
    # A fork mounts the same volume.
    [fork] = sandbox.fork(count=1, timeout=120)
    assert isinstance(fork, Sandbox), fork
    try:
        fork.commands.run("echo fork >> /data/f.txt")
        assert sandbox.files.read("/data/f.txt") == "before\nTrue\nFalse\nfork\n"
    finally:
        fork.kill()


@pytest.mark.asyncio
async def test_async_volumes(volumes_env, server_env):
    name = unique("async")
    volume = await AsyncVolume.create(name)
    volumes_env.append(volume.volume_id)
    await volume.write_file("/a/b.txt", "async", force=True)
    assert await volume.read_file("/a/b.txt") == "async"
    assert [e.name for e in await volume.list("/a")] == ["b.txt"]
    sandbox = await AsyncSandbox.create(volume_mounts={"/av": volume})
    try:
        assert (await sandbox.commands.run("cat /av/a/b.txt")).stdout == "async"
    finally:
        await sandbox.kill()
    await volume.remove("/a")
    assert name in [v.name for v in await AsyncVolume.list()]
    assert await AsyncVolume.destroy(volume.volume_id) is True
    volumes_env.remove(volume.volume_id)


def test_an_unknown_volume_in_volume_mounts_is_refused(volumes_env, server_env):
    with pytest.raises(SandboxException, match="400.*volume nope-.* not found"):
        Sandbox.create(volume_mounts={"/data": unique("nope")})


def test_a_full_volume_gives_enospc_inside_and_507_on_upload(volumes_env, server_env, new_sandbox):
    volume = create_volume(volumes_env, server_env, unique("small"), size_mb=16)
    sandbox = new_sandbox(volume_mounts={"/small": volume})
    filled = sandbox.commands.run(
        "dd if=/dev/zero of=/small/big bs=1M count=64 2>&1; echo exit=$?", timeout=60
    ).stdout
    assert "No space left on device" in filled and "exit=1" in filled, filled
    # The sandbox's own disk is not what filled up.
    assert sandbox.commands.run("echo fine > /home/user/ok && cat /home/user/ok").stdout == "fine\n"
    sandbox.commands.run("rm /small/big")
    with pytest.raises(VolumeException, match="507"):
        volume.write_file("/upload.bin", b"\x00" * (32 << 20))
    # The part that did not fit is not left behind.
    assert not volume.exists("/upload.bin")
    volume.write_file("/upload.bin", b"\x01" * (1 << 20))
    assert sandbox.commands.run("stat -c %s /small/upload.bin").stdout == f"{1 << 20}\n"


def test_a_volume_survives_a_server_restart_and_a_crash(monkeypatch):
    """A server stopped as an operator does leaves no mount behind; one killed with SIGKILL
    leaves a sandbox using the volume, which the next server takes over (the volume is still
    refused deletion while it runs, and both see each other's writes)."""
    with tempfile.TemporaryDirectory(prefix="cove-compat-volumes-") as work:
        work = Path(work)
        state = work / "state"
        with running_cove_server(state, work / "first.log") as server:
            point_sdks_at(server, monkeypatch)
            monkeypatch.setenv("E2B_VOLUME_API_URL", server.url)
            volume = Volume.create("kept")
            sandbox = Sandbox.create(volume_mounts={"/kept": volume})
            sandbox.commands.run("echo before > /kept/f.txt")
            sandbox.kill()

        port, key = _free_port(), "e2b_" + secrets.token_hex(20)
        with open(work / "second.log", "wb") as log:
            second = subprocess.Popen(
                [_cove_bin(), "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", state],
                env={**os.environ, "COVE_API_KEY": key},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            for name in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_VOLUME_API_URL"):
                monkeypatch.setenv(name, url)
            monkeypatch.setenv("E2B_API_KEY", key)

            def up():
                try:
                    Volume.list()
                    return True
                except Exception:  # not listening yet
                    return False

            wait_until(up, "the second server", timeout=30, interval=0.1)
            assert Volume.connect(volume.volume_id).read_file("/f.txt") == "before\n"
            running = Sandbox.create(volume_mounts={"/kept": "kept"})
            assert running.files.read("/kept/f.txt") == "before\n"
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait(timeout=10)

        # The next server takes over the sandbox and the host mount the killed one left, and
        # stops with no mount or loop device left under the state (it never used the volume
        # itself).
        with running_cove_server(state, work / "third.log") as server:
            point_sdks_at(server, monkeypatch)
            assert [v.name for v in Volume.list()] == ["kept"]
            with pytest.raises(VolumeException, match="409"):
                Volume.destroy(volume.volume_id)
            again = Sandbox.connect(running.sandbox_id)
            again.commands.run("echo after > /kept/g.txt")
            again.kill()
        assert not live_session_members(second.pid), "sandboxes of the killed server outlived it"
        with running_cove_server(state, work / "fourth.log") as server:
            point_sdks_at(server, monkeypatch)
            monkeypatch.setenv("E2B_VOLUME_API_URL", server.url)
            assert Volume.connect(volume.volume_id).read_file("/g.txt") == "after\n"
            assert Volume.destroy(volume.volume_id) is True


def test_a_gvisor_sandbox_shares_a_volume_through_pause_and_fork(
    volumes_env, server_env, new_sandbox
):
    """A gVisor sandbox (runsc's gofer serves the volume like its root) and a namespace one
    share a volume with the same owners; a pause with memory and a fork with memory keep it
    mounted."""
    if shutil.which("runsc") is None:
        pytest.fail("runsc is not installed (scripts/setup installs it)")
    name = unique("gvisor")
    volume = create_volume(volumes_env, server_env, name)
    gvisor = new_sandbox(
        volume_mounts={"/data": volume},
        metadata={"cove.runtime": "gvisor"},
        allow_internet_access=False,
    )
    plain = new_sandbox(volume_mounts={"/shared": name}, allow_internet_access=False)
    gvisor.commands.run("echo from-gvisor > /data/g.txt")
    gvisor.commands.run("echo root > /data/root.txt", user="root")
    plain.commands.run("echo from-namespace > /shared/n.txt")
    assert gvisor.files.read("/data/n.txt") == "from-namespace\n"
    assert plain.files.read("/shared/g.txt") == "from-gvisor\n"
    # GNU stat fails on this runsc: owners through Python in gVisor, stat in the other.
    owners = "import os\nfor n in ('g.txt', 'n.txt', 'root.txt'):\n    print(n, os.stat(f'/data/{n}').st_uid)"
    assert gvisor.commands.run(f'python3 -c "{owners}"').stdout == "g.txt 1000\nn.txt 1000\nroot.txt 0\n"
    assert (
        plain.commands.run("stat -c '%n %u' g.txt n.txt root.txt", cwd="/shared").stdout
        == "g.txt 1000\nn.txt 1000\nroot.txt 0\n"
    )
    assert volume.read_file("/g.txt") == "from-gvisor\n"

    # A process holding the file open writes on through a pause with memory.
    gvisor.commands.run(
        "python3 -c \"import time\nf = open('/data/log.txt', 'a', buffering=1)\n"
        "while True:\n    f.write('tick\\n')\n    time.sleep(0.1)\"",
        background=True,
    )

    def ticks() -> int:
        try:
            return volume.read_file("/log.txt").count("tick")
        except VolumePathNotFoundException:
            return 0

    wait_until(lambda: ticks() > 2, "ticks")
    assert gvisor.pause() is True
    resumed = Sandbox.connect(gvisor.sandbox_id, timeout=120)
    at_resume = ticks()
    wait_until(lambda: ticks() > at_resume + 2, "ticks after resume")
    [fork] = resumed.fork(count=1, timeout=120)
    assert isinstance(fork, Sandbox), fork
    try:
        fork.commands.run("echo fork >> /data/f.txt")
        assert plain.files.read("/shared/f.txt") == "fork\n"
    finally:
        fork.kill()
