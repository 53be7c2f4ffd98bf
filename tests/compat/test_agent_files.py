"""`sandbox.files` of the official Python SDK against the agent (envd Filesystem service
and the /files endpoint)."""

import hashlib
import io
import os
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from e2b import (
    AuthenticationException,
    FileNotFoundException,
    FileType,
    InvalidArgumentException,
    NotFoundException,
)

from conftest import USER_HOME

pytestmark = pytest.mark.debug_agent

ALL_BYTES = bytes(range(256)) * 64  # 16 KiB with every byte value, in every position mod 256


def sandbox_sha256(sandbox, path):
    """The file's digest as computed inside the sandbox, independent of the SDK's read path."""
    return sandbox.commands.run(f"sha256sum '{path}'").stdout.split()[0]


def owner_of(sandbox, path):
    return sandbox.commands.run(f"stat -c %U:%G '{path}'").stdout.strip()


def test_exists(sandbox, workdir):
    sandbox.files.write(f"{workdir}/here.txt", "x")

    assert sandbox.files.exists(f"{workdir}/here.txt") is True
    assert sandbox.files.exists(workdir) is True
    assert sandbox.files.exists(f"{workdir}/missing.txt") is False


def test_rename(sandbox, workdir):
    sandbox.files.write(f"{workdir}/old.txt", "moving content")

    info = sandbox.files.rename(f"{workdir}/old.txt", f"{workdir}/new/place/new.txt")

    assert (info.name, info.path, info.type) == (
        "new.txt",
        f"{workdir}/new/place/new.txt",
        FileType.FILE,
    )
    assert sandbox.files.exists(f"{workdir}/old.txt") is False
    assert sandbox.files.read(f"{workdir}/new/place/new.txt") == "moving content"
    assert owner_of(sandbox, f"{workdir}/new/place") == "user:user"


def test_rename_missing_source_raises_not_found(sandbox, workdir):
    with pytest.raises(FileNotFoundException):
        sandbox.files.rename(f"{workdir}/missing", f"{workdir}/other")


def test_remove_file_and_directory_tree(sandbox, workdir):
    sandbox.files.write(f"{workdir}/file.txt", "x")
    sandbox.files.write(f"{workdir}/tree/a/b/deep.txt", "x")

    sandbox.files.remove(f"{workdir}/file.txt")
    sandbox.files.remove(f"{workdir}/tree")

    assert sandbox.files.exists(f"{workdir}/file.txt") is False
    assert sandbox.files.exists(f"{workdir}/tree") is False
    sandbox.files.remove(f"{workdir}/never-existed")  # envd: removing nothing succeeds


def test_make_dir(sandbox, workdir):
    path = f"{workdir}/a/b/c"

    assert sandbox.files.make_dir(path) is True
    assert sandbox.files.make_dir(path) is False

    info = sandbox.files.get_info(path)
    assert (info.type, info.permissions, info.mode) == (FileType.DIR, "drwxr-xr-x", 0o755)
    assert owner_of(sandbox, f"{workdir}/a") == "user:user"
    assert owner_of(sandbox, path) == "user:user"


def test_make_dir_over_a_file_is_invalid(sandbox, workdir):
    sandbox.files.write(f"{workdir}/file", "x")

    with pytest.raises(InvalidArgumentException):
        sandbox.files.make_dir(f"{workdir}/file")


def test_get_info_of_file(sandbox, workdir):
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    sandbox.files.write(f"{workdir}/info.txt", "12345")

    info = sandbox.files.get_info(f"{workdir}/info.txt")

    assert info.name == "info.txt"
    assert info.path == f"{workdir}/info.txt"
    assert info.type == FileType.FILE
    assert info.size == 5
    assert info.mode == 0o644
    assert info.permissions == "-rw-r--r--"
    assert (info.owner, info.group) == ("user", "user")
    assert before <= info.modified_time <= datetime.now(timezone.utc) + timedelta(seconds=5)
    assert info.symlink_target is None
    assert info.metadata is None


def test_get_info_of_missing_path_raises_not_found(sandbox, workdir):
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info(f"{workdir}/missing")


def test_list_with_depth(sandbox, workdir):
    sandbox.files.write(f"{workdir}/a/x.txt", "xx")
    sandbox.files.write(f"{workdir}/a/b/too-deep.txt", "x")
    sandbox.files.write(f"{workdir}/b.txt", "b")

    shallow = sandbox.files.list(workdir)
    deep = sandbox.files.list(workdir, depth=2)

    assert [e.path for e in shallow] == [f"{workdir}/a", f"{workdir}/b.txt"]
    # envd walks depth-first in lexical order, the directory before its children.
    assert [(e.path, e.type) for e in deep] == [
        (f"{workdir}/a", FileType.DIR),
        (f"{workdir}/a/b", FileType.DIR),
        (f"{workdir}/a/x.txt", FileType.FILE),
        (f"{workdir}/b.txt", FileType.FILE),
    ]
    assert {e.name: e.size for e in deep if e.type == FileType.FILE} == {"x.txt": 2, "b.txt": 1}


def test_list_of_a_file_is_invalid(sandbox, workdir):
    sandbox.files.write(f"{workdir}/file", "x")

    with pytest.raises(InvalidArgumentException):
        sandbox.files.list(f"{workdir}/file")


def test_list_of_missing_directory_raises_not_found(sandbox, workdir):
    with pytest.raises(FileNotFoundException):
        sandbox.files.list(f"{workdir}/missing")


def test_write_files(sandbox, workdir):
    infos = sandbox.files.write_files(
        [
            {"path": f"{workdir}/one.txt", "data": "first"},
            {"path": f"{workdir}/sub/two.bin", "data": b"\x00\x01\x02"},
            {"path": f"{workdir}/three.txt", "data": io.BytesIO(b"third")},
        ]
    )

    assert [(i.name, i.path, i.type) for i in infos] == [
        ("one.txt", f"{workdir}/one.txt", FileType.FILE),
        ("two.bin", f"{workdir}/sub/two.bin", FileType.FILE),
        ("three.txt", f"{workdir}/three.txt", FileType.FILE),
    ]
    assert sandbox.files.read(f"{workdir}/one.txt") == "first"
    assert sandbox.files.read(f"{workdir}/sub/two.bin", format="bytes") == b"\x00\x01\x02"
    assert sandbox.files.read(f"{workdir}/three.txt") == "third"


@pytest.mark.parametrize(
    "upload",
    [
        pytest.param(lambda data: data, id="multipart-bytes"),
        pytest.param(lambda data: io.BytesIO(data), id="octet-stream-file"),
        pytest.param(lambda data: iter([data[:1000], data[1000:]]), id="octet-stream-chunks"),
    ],
)
def test_binary_upload_keeps_every_byte_value(sandbox, workdir, upload):
    path = f"{workdir}/all-bytes.bin"

    sandbox.files.write(path, upload(ALL_BYTES))

    assert sandbox_sha256(sandbox, path) == hashlib.sha256(ALL_BYTES).hexdigest()
    assert sandbox.files.read(path, format="bytes") == ALL_BYTES


def test_gzip_upload_and_download(sandbox, workdir):
    path = f"{workdir}/gzipped.bin"

    sandbox.files.write(path, ALL_BYTES, gzip=True)

    assert sandbox_sha256(sandbox, path) == hashlib.sha256(ALL_BYTES).hexdigest()
    assert sandbox.files.read(path, format="bytes", gzip=True) == ALL_BYTES


def test_read_as_bytes_and_stream(sandbox, workdir):
    path = f"{workdir}/random.bin"
    data = os.urandom(3 * 1024 * 1024)
    sandbox.files.write(path, data)

    as_bytes = sandbox.files.read(path, format="bytes")
    with sandbox.files.read(path, format="stream") as stream:
        chunks = list(stream)

    assert isinstance(as_bytes, bytearray) and as_bytes == data
    assert len(chunks) > 1 and b"".join(chunks) == data


def test_metadata(sandbox, workdir):
    path = f"{workdir}/tagged.txt"

    written = sandbox.files.write(path, "x", metadata={"Owner": "alice", "kind": "report"})

    expected = {"owner": "alice", "kind": "report"}  # keys are lowercased by the sandbox
    assert written.metadata == expected
    assert sandbox.files.get_info(path).metadata == expected
    assert {e.name: e.metadata for e in sandbox.files.list(workdir)} == {"tagged.txt": expected}

    sandbox.files.write(path, "y", metadata={"kind": "draft"})
    assert sandbox.files.get_info(path).metadata == {"kind": "draft"}

    sandbox.files.write(path, "z")  # an upload without metadata clears it
    assert sandbox.files.get_info(path).metadata is None


def test_symlink(sandbox, workdir):
    sandbox.files.write(f"{workdir}/target.txt", "pointed at")
    sandbox.commands.run(f"ln -s target.txt {workdir}/link && ln -s nowhere {workdir}/broken")

    info = sandbox.files.get_info(f"{workdir}/link")

    assert info.type == FileType.SYMLINK
    assert info.symlink_target == f"{workdir}/target.txt"
    assert info.permissions == "Lrwxrwxrwx"
    assert sandbox.files.read(f"{workdir}/link") == "pointed at"
    listed = {e.name: e.type for e in sandbox.files.list(workdir)}
    assert listed["link"] == FileType.SYMLINK
    assert listed["target.txt"] == FileType.FILE


def test_read_missing_file_raises_file_not_found(sandbox, workdir):
    with pytest.raises(FileNotFoundException) as raised:
        sandbox.files.read(f"{workdir}/missing.txt")

    assert isinstance(raised.value, NotFoundException)
    assert f"{workdir}/missing.txt" in str(raised.value)


def test_read_directory_is_invalid(sandbox, workdir):
    with pytest.raises(InvalidArgumentException) as raised:
        sandbox.files.read(workdir)

    assert "is a directory" in str(raised.value)


def test_relative_paths_resolve_against_home(sandbox):
    name = f"relative-{uuid.uuid4().hex[:8]}.txt"
    try:
        written = sandbox.files.write(name, "relative")

        assert written.path == f"{USER_HOME}/{name}"
        assert sandbox.files.get_info(name).path == f"{USER_HOME}/{name}"
        assert sandbox.files.exists(name) is True
        assert sandbox.commands.run(f"cat {USER_HOME}/{name}").stdout == "relative"
        assert sandbox.files.read(name) == "relative"
    finally:
        sandbox.files.remove(name)
    assert sandbox.files.exists(f"{USER_HOME}/{name}") is False


def test_written_files_belong_to_the_user(sandbox, workdir):
    sandbox.files.write(f"{workdir}/made/by/upload.txt", "x")
    sandbox.files.write(f"{workdir}/by-root.txt", "x", user="root")

    listing = sandbox.commands.run(f"ls -l {workdir}/made/by/upload.txt").stdout.split()
    assert listing[2:4] == ["user", "user"]
    assert owner_of(sandbox, f"{workdir}/made") == "user:user"
    assert owner_of(sandbox, f"{workdir}/made/by") == "user:user"
    assert owner_of(sandbox, f"{workdir}/by-root.txt") == "root:root"
    assert sandbox.files.get_info(f"{workdir}/by-root.txt").owner == "root"


def test_overwrite_replaces_content(sandbox, workdir):
    path = f"{workdir}/overwritten.txt"
    sandbox.files.write(path, "a much longer first version")

    sandbox.files.write(path, "short")

    assert sandbox.files.read(path) == "short"
    assert sandbox.files.get_info(path).size == 5


def test_tilde_expands_to_home(sandbox, workdir):
    relative = workdir.removeprefix(f"{USER_HOME}/")
    sandbox.files.write(f"~/{relative}/tilde.txt", "home")

    assert sandbox.files.get_info(f"~/{relative}/tilde.txt").path == f"{workdir}/tilde.txt"
    assert sandbox.files.read(f"{workdir}/tilde.txt") == "home"


def test_names_with_spaces_and_non_ascii(sandbox, workdir):
    path = f"{workdir}/dir with space/ü ñ €.txt"

    written = sandbox.files.write(path, "unicode")

    assert (written.name, written.path) == ("ü ñ €.txt", path)
    assert [(e.name, e.path) for e in sandbox.files.list(f"{workdir}/dir with space")] == [
        ("ü ñ €.txt", path)
    ]
    assert sandbox.files.read(path) == "unicode"


def test_download_and_upload_urls(sandbox, workdir):
    sandbox.files.write(f"{workdir}/down.txt", "fetched by url")

    downloaded = httpx.get(sandbox.download_url(f"{workdir}/down.txt"))
    uploaded = httpx.post(
        sandbox.upload_url(f"{workdir}/up.txt"), files={"file": ("up.txt", b"posted by url")}
    )

    assert (downloaded.status_code, downloaded.text) == (200, "fetched by url")
    assert uploaded.status_code == 200
    assert uploaded.json() == [{"name": "up.txt", "path": f"{workdir}/up.txt", "type": "file"}]
    assert sandbox.files.read(f"{workdir}/up.txt") == "posted by url"


def test_unknown_user_is_rejected(sandbox, workdir):
    sandbox.files.write(f"{workdir}/x.txt", "x")

    with pytest.raises(AuthenticationException):
        sandbox.files.read(f"{workdir}/x.txt", user="no-such-user")
    with pytest.raises(AuthenticationException):
        sandbox.files.list(workdir, user="no-such-user")
