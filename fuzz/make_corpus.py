#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from the official
clients' wire captures and from hand-made edge cases (`..`, NUL, very long and non-UTF-8
paths, truncated envelopes, huge length prefixes, …). Each target's input format is described
at the top of its file in fuzz_targets/.

    python3 fuzz/make_corpus.py [path/to/wire-captures]

Run it again after changing a format; it replaces the seeds it wrote (files named `seed-*`)
and leaves others (inputs the fuzzer found and someone chose to keep) alone.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import re
import struct
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"
DEFAULT_CAPTURES = FUZZ.parent.parent / "shared" / "wire-captures"


# ---------------------------------------------------------------------------------------------
# Captures.


def captured_requests(captures: Path) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, target, headers, body) of every request in the capture logs."""
    found = []
    for log in sorted(captures.glob("*.log")):
        text = log.read_text(encoding="utf-8", errors="replace")
        for block in text.split("=== ")[1:]:
            lines = block.split("\n")
            method, _, target = lines[0].removesuffix(" HTTP/1.1").partition(" ")
            headers = {}
            body = b""
            for line in lines[1:]:
                if line.startswith("BODY("):
                    raw = line.split(": ", 1)[1] if ": " in line else ""
                    if raw[:2] in ("b'", 'b"'):
                        body = ast.literal_eval(raw)
                    else:
                        body = raw.encode()
                    break
                if ": " in line:
                    name, value = line.split(": ", 1)
                    headers[name.lower()] = value
            found.append((method, target, headers, body))
    return found


# ---------------------------------------------------------------------------------------------
# A little protobuf, enough to write binary seeds.


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def envelope(flags: int, payload: bytes) -> bytes:
    return bytes([flags]) + struct.pack(">I", len(payload)) + payload


# ---------------------------------------------------------------------------------------------
# Seeds per target.

LONG_NAME = "n" * 300
LONG_PATH = "/" + "/".join(["d" * 200] * 25)
NON_UTF8 = b"/home/user/\xff\xfe\xc3(\xa0\xa1.txt"


def connect_envelope(reqs) -> dict[str, bytes]:
    seeds = {}
    for i, (_, target, headers, body) in enumerate(reqs):
        if headers.get("content-type", "").startswith("application/connect+"):
            seeds[f"capture-{i}"] = b"\x00\x00\x00\x00\x00" + body + envelope(2, b"{}")
    seeds.update(
        {
            "empty-stream": b"\x00\x00\x00\x00\x00",
            "end-with-error": b"\x00\x00\x00\x00\x00"
            + envelope(2, b'{"error":{"code":"not_found","message":"no such process"}}'),
            "end-bad-json": b"\x00\x00\x00\x00\x00" + envelope(2, b'{"error":'),
            "truncated-header": b"\x00\x00\x00\x00\x00\x00\x00\x00",
            "truncated-payload": b"\x00\x00\x00\x00\x00" + envelope(0, b'{"a":1}')[:-3],
            "huge-length": b"\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff{}",
            "over-tiny-limit": b"\x07\x01\x02\x03\x04" + envelope(0, b"0123456789"),
            "compressed": b"\x00\x00\x00\x00\x00" + envelope(1, b"\x1f\x8b"),
            "chunked-1-byte": b"\x00\x00\x00\x00\x00" + envelope(0, b"{}") * 3 + envelope(2, b"{}"),
        }
    )
    return seeds


def connect_json(reqs) -> dict[str, bytes]:
    names = {
        "Start": "StartRequest",
        "Connect": "ConnectRequest",
        "List": "ListRequest",
        "SendInput": "SendInputRequest",
        "SendSignal": "SendSignalRequest",
        "CloseStdin": "CloseStdinRequest",
        "Update": "UpdateRequest",
        "Stat": "StatRequest",
        "MakeDir": "MakeDirRequest",
        "Move": "MoveRequest",
        "ListDir": "ListDirRequest",
        "Remove": "RemoveRequest",
        "WatchDir": "WatchDirRequest",
        "CreateWatcher": "CreateWatcherRequest",
        "GetWatcherEvents": "GetWatcherEventsRequest",
        "RemoveWatcher": "RemoveWatcherRequest",
    }
    seeds = {}
    for i, (_, target, headers, body) in enumerate(reqs):
        match = re.match(r"/(?:process\.Process|filesystem\.Filesystem)/(\w+)", target)
        if not match:
            continue
        if headers.get("content-type", "").startswith("application/connect+"):
            body = body[5:]
        seeds[f"capture-{i}-{match[1]}"] = names[match[1]].encode() + b"\n" + body
    seeds.update(
        {
            "start-response-data": b'StartResponse\n{"event":{"data":{"stdout":"aGkK"}}}',
            "start-response-end": b'StartResponse\n{"event":{"end":{"exitCode":-1,"exited":true,"status":"signal: killed","error":"x"}}}',
            "stat-response-time": b'StatResponse\n{"entry":{"name":"a","type":"FILE_TYPE_FILE","path":"/a","size":"12","mode":420,"modifiedTime":"2024-01-01T00:00:00.123456789Z","metadata":{"k":"v"}}}',
            "leap-second": b'StatResponse\n{"entry":{"modifiedTime":"2016-12-31T23:59:60Z"}}',
            "enum-by-number": b'SendSignalRequest\n{"process":{"tag":"t"},"signal":15}',
            "unknown-enum": b'SendSignalRequest\n{"signal":"SIGNAL_SIGHUP"}',
            "int64-as-string": b'ListDirResponse\n{"entries":[{"size":"-9223372036854775808"}]}',
            "nul-path": b'StatRequest\n{"path":"/home/user/a\\u0000b"}',
            "dotdot-path": b'StatRequest\n{"path":"../../../../etc/shadow"}',
            "error-body": b'application/connect+json\n{"code":"not_found","message":"x"}',
            "error-unknown-code": b'application/json; charset=utf-8\n{"code":"teapot"}',
            "whitespace": b"ListRequest\n  \n",
            "duplicate-oneof": b'ConnectRequest\n{"process":{"pid":1,"tag":"x"}}',
        }
    )
    return seeds


def connect_proto(_reqs) -> dict[str, bytes]:
    config = (
        field_bytes(1, "/bin/bash")
        + field_bytes(2, "-l")
        + field_bytes(2, "-c")
        + field_bytes(2, "echo $MY_VAR")
        + field_bytes(3, field_bytes(1, "MY_VAR") + field_bytes(2, "hello"))
        + field_bytes(4, "/home/user")
    )
    pty = field_bytes(1, field_varint(1, 80) + field_varint(2, 24))
    selector_pid = field_varint(1, 42)
    selector_tag = field_bytes(2, "fuzz")
    timestamp = field_varint(1, 1_700_000_000) + field_varint(2, 123)
    entry = (
        field_bytes(1, "a.txt")
        + field_varint(2, 1)
        + field_bytes(3, "/home/user/a.txt")
        + field_varint(4, 12)
        + field_varint(5, 0o644)
        + field_bytes(9, timestamp)
        + field_bytes(11, field_bytes(1, "k") + field_bytes(2, "v"))
    )
    return {
        "start": b"StartRequest\n" + field_bytes(1, config) + field_bytes(2, pty) + field_bytes(3, "t") + field_varint(4, 1),
        "connect-pid": b"ConnectRequest\n" + field_bytes(1, selector_pid),
        "connect-tag": b"ConnectRequest\n" + field_bytes(1, selector_tag),
        "signal": b"SendSignalRequest\n" + field_bytes(1, selector_pid) + field_varint(2, 9),
        "signal-unknown-enum": b"SendSignalRequest\n" + field_varint(2, 99),
        "input": b"SendInputRequest\n" + field_bytes(1, selector_pid) + field_bytes(2, field_bytes(1, b"ping\n")),
        "stream-input": b"StreamInputRequest\n" + field_bytes(1, field_bytes(1, selector_tag)),
        "stat-response": b"StatResponse\n" + field_bytes(1, entry),
        "stat-time-out-of-range": b"StatResponse\n" + field_bytes(1, field_bytes(9, field_varint(1, 1 << 62))),
        "stat-negative-nanos": b"StatResponse\n" + field_bytes(1, field_bytes(9, field_varint(2, -5))),
        "list-dir": b"ListDirRequest\n" + field_bytes(1, "/home/user") + field_varint(2, 2),
        "end-event": b"StartResponse\n" + field_bytes(1, field_bytes(3, varint(0x08) + varint(3) + field_varint(2, 1) + field_bytes(3, "exit status 2"))),
        "invalid-utf8": b"StatRequest\n" + field_bytes(1, b"\xff\xfe"),
        "truncated": b"StatRequest\n" + field_bytes(1, "/home/user/abc")[:-4],
        "huge-length": b"StatRequest\n\x0a\xff\xff\xff\xff\x0f",
    }


def connect_rpc(reqs) -> dict[str, bytes]:
    seeds = {}
    for i, (_, target, headers, body) in enumerate(reqs):
        match = re.match(r"/process\.Process/(\w+)", target)
        if not match or match[1] == "Start":
            continue
        body = body.replace(b'"pid":42', b'"pid":{pid}')
        lines = [match[1]]
        for name in ("content-type", "connect-timeout-ms", "connect-protocol-version", "authorization"):
            if name in headers:
                lines.append(f"{name}: {headers[name]}")
        seeds[f"capture-{i}-{match[1]}"] = ("\n".join(lines) + "\n\n").encode() + body
    stream = "application/connect+json"
    seeds.update(
        {
            "connect-tag": f"Connect\ncontent-type: {stream}\n\n".encode()
            + envelope(0, b'{"process":{"tag":"fuzz"}}'),
            "connect-huge-timeout": f"Connect\ncontent-type: {stream}\nconnect-timeout-ms: 18446744073709551615\n\n".encode()
            + envelope(0, b'{"process":{"tag":"fuzz"}}'),
            "connect-huge-keepalive": f"Connect\ncontent-type: {stream}\nkeepalive-ping-interval: 18446744073709551615\n\n".encode()
            + envelope(0, b'{"process":{"tag":"fuzz"}}'),
            "connect-two-messages": f"Connect\ncontent-type: {stream}\n\n".encode()
            + envelope(0, b"{}") * 2,
            "connect-proto": b"Connect\ncontent-type: application/connect+proto\n\n"
            + envelope(0, field_bytes(1, field_bytes(2, "fuzz"))),
            "stream-input": f"StreamInput\ncontent-type: {stream}\n\n".encode()
            + envelope(0, b'{"start":{"process":{"tag":"fuzz"}}}')
            + envelope(0, b'{"data":{"input":{"stdin":"aGVsbG8K"}}}')
            + envelope(2, b"{}"),
            "stream-input-truncated": f"StreamInput\ncontent-type: {stream}\n\n".encode()
            + envelope(0, b'{"start":{"process":{"tag":"fuzz"}}}')[:-2],
            "stream-input-compressed": f"StreamInput\ncontent-type: {stream}\nconnect-content-encoding: gzip\n\n".encode(),
            "stdin-to-tag": b'SendInput\ncontent-type: application/json\n\n{"process":{"tag":"fuzz"},"input":{"stdin":"aGkK"}}',
            "pty-to-pipe": b'SendInput\ncontent-type: application/json\n\n{"process":{"tag":"fuzz"},"input":{"pty":"aGkK"}}',
            "resize-no-pty": b'Update\ncontent-type: application/json\n\n{"process":{"tag":"fuzz"},"pty":{"size":{"cols":100,"rows":30}}}',
            "term": b'SendSignal\ncontent-type: application/json\n\n{"process":{"tag":"fuzz"},"signal":"SIGNAL_SIGTERM"}',
            "close-stdin": b'CloseStdin\ncontent-type: application/json\n\n{"process":{"tag":"fuzz"}}',
            "list-proto": b"List\ncontent-type: application/proto\n\n",
            "list-wrong-type": b"List\ncontent-type: text/plain\n\n{}",
            "list-compressed": b"List\ncontent-type: application/json\ncontent-encoding: br\n\n{}",
            "list-bad-timeout": b"List\ncontent-type: application/json\nconnect-timeout-ms: soon\n\n{}",
            "list-zero-timeout": b"List\ncontent-type: application/json\nconnect-timeout-ms: 0\n\n{}",
            "bad-basic-auth": b"List\ncontent-type: application/json\nauthorization: Basic !!!\n\n{}",
            "unknown-user": b"List\ncontent-type: application/json\nauthorization: Basic bm9ib2R5Og==\n\n{}",
        }
    )
    return seeds


def rest_bodies(reqs) -> dict[str, bytes]:
    seeds = {}
    for i, (method, target, headers, body) in enumerate(reqs):
        path = re.sub(r"/sbx\w+|/missing", "/{id}", target.split("?")[0])
        if method != "POST" or path not in (
            "/v2/sandboxes",
            "/sandboxes",
            "/v2/sandboxes/{id}/connect",
            "/sandboxes/{id}/connect",
            "/sandboxes/{id}/timeout",
        ):
            continue
        seeds[f"capture-{i}"] = f"POST {path}\n\n".encode() + body
    seeds.update(
        {
            "create-limits": b'POST /v2/sandboxes\n\n{"cpuCount":2,"memoryMB":1024,"timeout":60}',
            "create-too-big": b'POST /v2/sandboxes\n\n{"cpuCount":64,"memoryMB":262144}',
            "create-negative": b'POST /v2/sandboxes\n\n{"timeout":-1,"cpuCount":-1}',
            "create-huge-timeout": b'POST /v2/sandboxes\n\n{"timeout":9223372036854775807}',
            "create-float": b'POST /v2/sandboxes\n\n{"timeout":1e400,"memoryMB":1.5}',
            "create-unknown-template": b'POST /sandboxes\n\n{"templateID":"../../etc"}',
            "create-env-nul": b'POST /v2/sandboxes\n\n{"envVars":{"A\\u0000B":"x","":"y","C=D":"z"}}',
            "create-network": b'POST /v2/sandboxes\n\n{"network":{"allowPublicTraffic":false},"allow_internet_access":false}',
            "create-metadata": b'POST /v2/sandboxes\n\n{"metadata":{"user id":"a&b","\\u00e9":"\\ud83d\\ude00"}}',
            "create-wrong-types": b'POST /v2/sandboxes\n\n{"metadata":[],"envVars":1,"secure":"yes"}',
            "create-not-json": b"POST /v2/sandboxes\ncontent-type: text/plain\n\nhello",
            "create-deep": b"POST /v2/sandboxes\n\n" + b'{"x":' * 200 + b"1" + b"}" * 200,
            "connect-empty": b"POST /v2/sandboxes/{id}/connect\n\n",
            "connect-timeout": b'POST /sandboxes/{id}/connect\n\n{"timeout":86400}',
            "timeout-zero": b'POST /sandboxes/{id}/timeout\n\n{"timeout":0}',
            "timeout-missing": b"POST /sandboxes/{id}/timeout\n\n{}",
            "timeout-huge": b'POST /sandboxes/{id}/timeout\n\n{"timeout":-9223372036854775808}',
        }
    )
    return seeds


def list_query(reqs) -> dict[str, bytes]:
    seeds = {}
    for i, (method, target, _, _) in enumerate(reqs):
        path, _, query = target.partition("?")
        if method == "GET" and path in ("/v2/sandboxes", "/sandboxes"):
            seeds[f"capture-{i}"] = f"GET {path}\n{query}".encode()
    seeds.update(
        {
            "page-of-one": b"GET /v2/sandboxes\nlimit=1",
            "page-of-two-running": b"GET /v2/sandboxes\nlimit=2&state=running",
            "metadata-double-encoded": b"GET /v2/sandboxes\nmetadata=user%2520id%3Da%2526b&limit=1",
            "metadata-alice": b"GET /v2/sandboxes\nmetadata=user%3Dalice&limit=1",
            "metadata-no-value": b"GET /v2/sandboxes\nmetadata=novalue",
            "metadata-bad-escape": b"GET /v2/sandboxes\nmetadata=%zz%3D%2",
            "metadata-non-utf8": b"GET /v2/sandboxes\nmetadata=%ff%3D%fe",
            "bad-token": b"GET /v2/sandboxes\nnextToken=!!!",
            "token-no-colon": b"GET /v2/sandboxes\nnextToken=YWJj",
            "token-huge-number": b"GET /v2/sandboxes\nnextToken=OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk6eA",
            "limit-huge": b"GET /v2/sandboxes\nlimit=99999999999999999999",
            "limit-negative": b"GET /v2/sandboxes\nlimit=-5",
            "state-unknown": b"GET /v2/sandboxes\nstate=running,sleeping",
            "state-paused": b"GET /v2/sandboxes\nstate=paused&limit=1",
            "duplicate-key": b"GET /v2/sandboxes\nlimit=1&limit=2",
            "legacy": b"GET /sandboxes\nmetadata=k%3Dv",
            "logs": b"GET /sandboxes/{id}/logs\nstart=0&limit=10",
            "logs-bad": b"GET /sandboxes/{id}/logs\nstart=-99999999999999999999&limit=-1",
        }
    )
    return seeds


def proxy_route(_reqs) -> dict[str, bytes]:
    return {
        "by-headers": b"GET /health\ne2b-sandbox-id: {id}\ne2b-sandbox-port: 49983\n\n",
        "by-headers-port-0": b"GET /health\ne2b-sandbox-id: {id}\ne2b-sandbox-port: 0\n\n",
        "by-headers-bad-port": b"GET /\ne2b-sandbox-id: {id}\ne2b-sandbox-port: 99999\n\n",
        "half-headers": b"GET /\ne2b-sandbox-id: {id}\n\n",
        "unknown-sandbox": b"GET /\ne2b-sandbox-id: nosuch\ne2b-sandbox-port: 8080\n\n",
        "by-host": b"GET /\nhost: 8080-{id}.localhost:3000\n\n",
        "by-host-agent": b"POST /process.Process/List\nhost: 49983-{id}.localhost:3000\ncontent-type: application/json\n\n{}",
        "by-host-upper": b"GET /\nhost: 8080-{id}.LOCALHOST:3000\n\n",
        "by-host-bad-id": b"GET /\nhost: 8080-AB_c.localhost:3000\n\n",
        "by-authority": b"GET http://8080-{id}.localhost:3000/x\n\n",
        "private-no-token": b"GET /\ne2b-sandbox-id: {private}\ne2b-sandbox-port: 8080\n\n",
        "private-wrong-token": b"GET /\ne2b-sandbox-id: {private}\ne2b-sandbox-port: 8080\ne2b-traffic-access-token: nope\n\n",
        "private-token": b"GET /\ne2b-sandbox-id: {private}\ne2b-sandbox-port: 8080\ne2b-traffic-access-token: {traffic}\n\n",
        "private-agent": b"GET /health\ne2b-sandbox-id: {private}\ne2b-sandbox-port: 49983\n\n",
        "signed-forged": b"GET /files?path=%2Fetc%2Fshadow&signature=v1_AAAA\nhost: localhost:3000\n\n",
        "signed-empty": b"GET /files?signature=\n\n",
        "signed-bad-escape": b"POST /files?path=%zz&signature=v1_x\n\n",
        "sign": b"SIGN /home/user/a.txt",
        "sign-user-exp": b"SIGN /home/user/a%20b.txt user 1893456000",
        "sign-post": b"SIGN /tmp/x root post",
        "sign-bad": b"SIGN /home/user/a.txt user 1 bad",
        "api": b"GET /v2/sandboxes\nx-api-key: cove_fuzz_key\n\n",
        "api-domain-host": b"GET /health\nhost: localhost:3000\n\n",
    }


def multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def multipart_upload(reqs) -> dict[str, bytes]:
    seeds = {}
    for i, (method, target, headers, body) in enumerate(reqs):
        if method == "POST" and target.startswith("/files"):
            head = f"path\ncontent-type: {headers.get('content-type', '')}\n\n".encode()
            seeds[f"capture-{i}"] = head + body
    form = "multipart/form-data; boundary=XyZ"
    seeds.update(
        {
            "by-filename": f"filename\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", "a.txt", b"hello"), ("file", "b.txt", b"world")]),
            "dotdot-filename": f"filename\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", "..", b"x")]),
            "nul-filename": f"filename\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", "a\x00b", b"x")]),
            "long-filename": f"filename\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", LONG_NAME, b"x")]),
            "non-utf8-filename": f"filename\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", "x", b"y")]).replace(b'filename="x"', b'filename="\xff\xfe"'),
            "no-filename": f"filename\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", None, b"x")]),
            "same-path-twice": f"path\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", "a", b"1"), ("file", "b", b"2")]),
            "other-field": f"path\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("other", None, b"1"), ("file", "a", b"2")]),
            "truncated": f"path\ncontent-type: {form}\n\n".encode()
            + multipart("XyZ", [("file", "a", b"12345")])[:-12],
            "no-boundary": b"path\ncontent-type: multipart/form-data\n\nxx",
            "empty-boundary": b"path\ncontent-type: multipart/form-data; boundary=\n\n----\r\n",
            "gzip": f"path\ncontent-type: {form}\nx-fuzz-gzip: 1\n\n".encode()
            + multipart("XyZ", [("file", "a", b"compressed")]),
            "gzip-raw": b"path\ncontent-type: application/octet-stream\nx-fuzz-gzip: 1\n\nraw bytes",
            "bad-gzip": b"path\ncontent-type: application/octet-stream\ncontent-encoding: gzip\n\nnot gzip at all",
            "truncated-gzip": b"path\ncontent-type: application/octet-stream\ncontent-encoding: gzip\n\n"
            + gzip.compress(b"hello" * 100)[:-10],
            "bad-encoding": b"path\ncontent-type: application/octet-stream\ncontent-encoding: br\n\nx",
            "metadata": b"path\ncontent-type: application/octet-stream\nx-metadata-owner: alice\nx-metadata-Team: a b\n\nx",
            "metadata-too-big": b"path\ncontent-type: application/octet-stream\nx-metadata-big: "
            + b"x" * 5000
            + b"\n\nx",
            "metadata-non-ascii": b"path\ncontent-type: application/octet-stream\nx-metadata-k: \xc3\xa9\n\nx",
            "text-plain": b"path\ncontent-type: text/plain\n\nx",
        }
    )
    return seeds


def agent_paths(_reqs) -> dict[str, bytes]:
    cases = {
        "plain": "/home/user/a.txt",
        "relative": "a/b/c",
        "dotdot-escape": "../../../../etc/shadow",
        "dotdot-middle": "/home/user/../../etc/./passwd",
        "tilde": "~/x/../y",
        "tilde-alone": "~",
        "tilde-other": "~root/.ssh",
        "empty": "",
        "dots-only": "././..",
        "slashes": "////a//b///",
        "nul": "/home/user/a\x00b",
        "long-name": "/tmp/" + LONG_NAME,
        "long-path": LONG_PATH,
        "long-then-dotdot": "/tmp/" + LONG_NAME + "/..",
        "backslash": "..\\..\\windows",
        "unicode": "/home/user/\u00e9\U0001f600",
    }
    seeds = {name: b"/home/user\n\n" + path.encode() for name, path in cases.items()}
    seeds["non-utf8"] = b"/home/user\n\n" + NON_UTF8
    seeds["with-default"] = b"/home/user\n/work/dir\n"
    seeds["odd-home"] = b"/home/../root/./\n\n../x"
    return seeds


def signed_url(_reqs) -> dict[str, bytes]:
    return {
        "raw-forged": b"RAW\npath=%2Fetc%2Fshadow&signature=v1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "raw-no-signature": b"RAW\npath=%2Fetc%2Fshadow",
        "raw-expired": b"RAW\npath=x&signature=v1_x&signature_expiration=1",
        "raw-bad-expiration": b"RAW\npath=x&signature=v1_x&signature_expiration=soon",
        "raw-non-utf8": b"RAW\npath=%ff&signature=v1_x",
        "raw-nul": b"RAW\npath=a%00b&signature=v1_x",
        "sign-read": b"SIGN\npath: a.txt\nop: read\n",
        "sign-write-user": b"SIGN\npath: b.txt\nuser: user\nop: write\nexp: +3600\n",
        "sign-expired": b"SIGN\npath: a.txt\nexp: -3600\n",
        "sign-unknown-user": b"SIGN\npath: a.txt\nuser: nobody\n",
        "sign-nul": b"SIGN\npath: a\x00b\n",
        "sign-long": b"SIGN\npath: " + LONG_NAME.encode() + b"\n",
        "sign-dotdot": b"SIGN\npath: ..\n",
        "mutate-path": b"SIGN\npath: a.txt\nmutate: path\n",
        "mutate-user": b"SIGN\npath: a.txt\nuser: user\nmutate: user\n",
        "mutate-exp": b"SIGN\npath: a.txt\nexp: +60\nmutate: exp\n",
        "mutate-no-exp": b"SIGN\npath: a.txt\nmutate: exp\n",
        "mutate-op": b"SIGN\npath: a.txt\nop: write\nmutate: op\n",
        "mutate-sig": b"SIGN\npath: a.txt\nmutate: sig\n",
        "mutate-token": b"SIGN\npath: a.txt\nmutate: token\n",
    }


def jupyter_message(_reqs) -> dict[str, bytes]:
    rs = b"\x1e"
    header = b'{"msg_id":"1","session":"s","username":"u","date":"2024-01-01T00:00:00Z","msg_type":"execute_reply","version":"5.3"}'
    parent = b'{"msg_id":"0","session":"s","username":"u","date":"","msg_type":"execute_request","version":"5.3"}'
    def message(key: bytes, *frames: bytes) -> bytes:
        return key + b"\n" + rs.join(frames)
    return {
        "signed": message(b"secret", b"<IDS|MSG>", b"SIGN", header, parent, b"{}", b'{"status":"ok","execution_count":1}'),
        "signed-identities": message(b"secret", b"id1", b"id2", b"<IDS|MSG>", b"SIGN", header, b"{}", b"{}", b'{"data":{"text/plain":"2"}}', b"buffer"),
        "unsigned": message(b"", b"<IDS|MSG>", b"", header, b"{}", b"{}", b'{"name":"stdout","text":"hi\\n"}'),
        "forged": message(b"secret", b"<IDS|MSG>", b"00" * 32, header, b"{}", b"{}", b"{}"),
        "not-hex": message(b"secret", b"<IDS|MSG>", b"zz", header, b"{}", b"{}", b"{}"),
        "too-short": message(b"secret", b"<IDS|MSG>", b"SIGN", header, b"{}"),
        "no-delimiter": message(b"", header, b"{}", b"{}", b"{}"),
        "bad-header": message(b"", b"<IDS|MSG>", b"", b'{"msg_id":1}', b"{}", b"{}", b"{}"),
        "null-parent": message(b"", b"<IDS|MSG>", b"", header, b"null", b"{}", b"{}"),
        "floats": message(b"", b"<IDS|MSG>", b"", header, b"{}", b"{}", b'{"x":0.1,"y":1e308,"z":-4.9e-324,"w":123456789012345678901234567890}'),
        "deep": message(b"", b"<IDS|MSG>", b"", header, b"{}", b"{}", b"[" * 100 + b"]" * 100),
    }


def client_hello(name: bytes | None) -> bytes:
    """A TLS 1.2/1.3 ClientHello record, with a server name extension when `name` is given."""
    extensions = struct.pack("!HH", 0x000A, 4) + struct.pack("!HH", 2, 0x001D)  # groups
    if name is not None:
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        sni = struct.pack("!H", len(entry)) + entry
        extensions += struct.pack("!HH", 0, len(sni)) + sni
    body = (
        b"\x03\x03" + bytes(range(32)) + b"\x20" + bytes(32)
        + struct.pack("!H", 4) + b"\x13\x01\xc0\x2f" + b"\x01\x00"
        + struct.pack("!H", len(extensions)) + extensions
    )
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def dns_reply(answers: list[tuple[bytes, int, bytes]], rcode: int = 0) -> bytes:
    """A reply (id 0x2a2a) to an A question for www.allowed.test; answers are (owner, type,
    rdata), the owner a name in wire form or a compression pointer."""
    question = b"\x03www\x07allowed\x04test\x00" + struct.pack("!HH", 1, 1)
    head = struct.pack("!HHHHHH", 0x2A2A, 0x8180 | rcode, 1, len(answers), 0, 0)
    records = b"".join(
        owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
        for owner, rtype, rdata in answers
    )
    return head + question + records


def egress_names(_reqs) -> dict[str, bytes]:
    pointer = b"\xc0\x0c"
    cdn = b"\x03cdn\x07example\x00"
    return {
        "tls-sni": b"\x00" + client_hello(b"www.allowed.test"),
        "tls-no-sni": b"\x00" + client_hello(None),
        "tls-split": b"\x00" + client_hello(b"pypi.org")[:40],
        "http-host": b"\x01GET / HTTP/1.1\r\nHost: www.allowed.test:8080\r\nAccept: */*\r\n\r\n",
        "http-v6": b"\x01GET http://x/ HTTP/1.0\r\nhost: [2001:db8::1]:80\r\n\r\n",
        "http-two-hosts": b"\x01GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        "dns-a": b"\x02" + dns_reply([(pointer, 1, bytes([10, 20, 30, 40]))]),
        "dns-cname": b"\x02" + dns_reply([(pointer, 5, cdn), (cdn, 1, bytes([192, 0, 2, 9]))]),
        "dns-nxdomain": b"\x02" + dns_reply([], rcode=3),
        "dns-loop": b"\x02" + dns_reply([(b"\xc0\x2e", 1, bytes(4))]),
    }


TARGETS = {
    "connect_envelope": connect_envelope,
    "connect_json": connect_json,
    "connect_proto": connect_proto,
    "connect_rpc": connect_rpc,
    "rest_bodies": rest_bodies,
    "list_query": list_query,
    "proxy_route": proxy_route,
    "multipart_upload": multipart_upload,
    "agent_paths": agent_paths,
    "signed_url": signed_url,
    "jupyter_message": jupyter_message,
    "egress_names": egress_names,
}


def main() -> None:
    captures = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CAPTURES
    reqs = captured_requests(captures) if captures.is_dir() else []
    if not reqs:
        print(f"make_corpus: no captures at {captures}; writing the hand-made seeds only")
    for target, make in TARGETS.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        seeds = make(reqs)
        for name, data in seeds.items():
            digest = hashlib.sha1(data).hexdigest()[:8]
            (directory / f"seed-{name}-{digest}").write_bytes(data)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
