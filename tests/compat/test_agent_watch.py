"""Directory watching with the official Python SDK against the agent: the sync SDK polls
(CreateWatcher / GetWatcherEvents / RemoveWatcher), the async SDK streams (WatchDir)."""

import pytest
from e2b import FilesystemEventType, NotFoundException, SandboxException

from conftest import async_wait_until, wait_until

pytestmark = pytest.mark.debug_agent

CREATE, WRITE, REMOVE, RENAME = (
    FilesystemEventType.CREATE,
    FilesystemEventType.WRITE,
    FilesystemEventType.REMOVE,
    FilesystemEventType.RENAME,
)

# What `change_tree` does, as (type, name relative to the watched directory) pairs that
# must show up in this order. Other events (CHMOD from the upload's chown, repeated
# WRITEs) may come in between.
EXPECTED = [
    (CREATE, "top.txt"),
    (WRITE, "top.txt"),
    (CREATE, "sub/nested.txt"),
    (WRITE, "sub/nested.txt"),
    (RENAME, "top.txt"),
    (CREATE, "renamed.txt"),
    (REMOVE, "sub/nested.txt"),
]


def change_tree(sandbox, root):
    """Writes, renames and removes files at both levels of a watched tree."""
    sandbox.files.write(f"{root}/top.txt", "top")
    sandbox.files.write(f"{root}/sub/nested.txt", "nested")
    sandbox.files.rename(f"{root}/top.txt", f"{root}/renamed.txt")
    sandbox.files.remove(f"{root}/sub/nested.txt")


async def async_change_tree(async_sandbox, root):
    """`change_tree` with the async SDK, so the event loop delivers events meanwhile."""
    await async_sandbox.files.write(f"{root}/top.txt", "top")
    await async_sandbox.files.write(f"{root}/sub/nested.txt", "nested")
    await async_sandbox.files.rename(f"{root}/top.txt", f"{root}/renamed.txt")
    await async_sandbox.files.remove(f"{root}/sub/nested.txt")


def in_order(expected, seen):
    """True if `expected` is a subsequence of `seen`."""
    remaining = iter(seen)
    return all(item in remaining for item in expected)


class PolledEvents:
    """Accumulates the (type, name) events of a sync watch handle across polls."""

    def __init__(self, handle):
        self.handle = handle
        self.seen = []
        self.stopped = False

    def stop(self):
        self.handle.stop()
        self.stopped = True

    def wait_for(self, expected):
        def arrived():
            self.seen.extend((e.type, e.name) for e in self.handle.get_new_events())
            return in_order(expected, self.seen)

        try:
            wait_until(arrived, f"events {expected}")
        except AssertionError as err:
            raise AssertionError(f"{err}; seen {self.seen}") from None


@pytest.fixture
def sync_watch(sandbox):
    """Opens sync watches and stops the ones a test leaves running."""
    watches = []

    def watch(path, **kwargs):
        watches.append(PolledEvents(sandbox.files.watch_dir(path, **kwargs)))
        return watches[-1]

    yield watch
    for events in watches:
        if not events.stopped:
            events.stop()


def test_sync_watch_recursive(sandbox, workdir, sync_watch):
    sandbox.files.make_dir(f"{workdir}/sub")
    events = sync_watch(workdir, recursive=True)

    change_tree(sandbox, workdir)

    events.wait_for(EXPECTED)
    events.stop()
    with pytest.raises(SandboxException, match="already stopped"):
        events.handle.get_new_events()


def test_sync_watch_non_recursive_ignores_subdirectories(sandbox, workdir, sync_watch):
    sandbox.files.make_dir(f"{workdir}/sub")
    events = sync_watch(workdir)

    sandbox.files.write(f"{workdir}/sub/hidden.txt", "not watched")
    sandbox.files.write(f"{workdir}/visible.txt", "watched")

    events.wait_for([(CREATE, "visible.txt")])
    # The nested write came first, so its events would have arrived by now.
    assert [name for _, name in events.seen if name.startswith("sub/")] == []


def test_sync_watch_sees_directories_created_after_start(sandbox, workdir, sync_watch):
    events = sync_watch(workdir, recursive=True)

    sandbox.files.make_dir(f"{workdir}/later")
    events.wait_for([(CREATE, "later")])
    sandbox.files.write(f"{workdir}/later/inside.txt", "x")

    events.wait_for([(CREATE, "later"), (CREATE, "later/inside.txt")])


def test_sync_watch_sees_a_commands_writes(sandbox, workdir, sync_watch):
    # The chapter's watch example, with a command in place of run_code.
    output = f"{workdir}/output"
    sandbox.files.make_dir(output)
    events = sync_watch(output)

    sandbox.commands.run(
        "python3 -c 'for i in range(3): open(f\"file_{i}.txt\", \"w\").write(f\"Content {i}\")'",
        cwd=output,
    )

    events.wait_for([(t, f"file_{i}.txt") for i in range(3) for t in (CREATE, WRITE)])


def test_sync_watch_of_missing_directory_raises_not_found(sandbox, workdir):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir(f"{workdir}/missing")


@pytest.mark.asyncio
async def test_async_watch_recursive(async_sandbox, workdir):
    await async_sandbox.files.make_dir(f"{workdir}/sub")
    seen, exits = [], []
    handle = await async_sandbox.files.watch_dir(
        workdir,
        on_event=lambda e: seen.append((e.type, e.name)),
        on_exit=exits.append,
        recursive=True,
    )

    await async_change_tree(async_sandbox, workdir)

    await async_wait_until(lambda: in_order(EXPECTED, seen), f"events {EXPECTED}")
    await handle.stop()
    assert exits == [None]


@pytest.mark.asyncio
async def test_async_watch_stop_ends_delivery(async_sandbox, workdir):
    seen, probe = [], []
    handle = await async_sandbox.files.watch_dir(workdir, on_event=lambda e: seen.append(e.name))
    await async_sandbox.files.write(f"{workdir}/before.txt", "x")
    await async_wait_until(lambda: "before.txt" in seen, "the event before stop()")

    await handle.stop()
    await async_sandbox.files.write(f"{workdir}/after.txt", "x")

    # Once a second watch has seen a later write, the first would have seen after.txt.
    probe_handle = await async_sandbox.files.watch_dir(
        workdir, on_event=lambda e: probe.append(e.name)
    )
    await async_sandbox.files.write(f"{workdir}/probe.txt", "x")
    await async_wait_until(lambda: "probe.txt" in probe, "the probe event")
    await probe_handle.stop()
    assert "after.txt" not in seen
