"""Times file transfers the way Python users make them, each beside the same client against
a plain server; prints the samples as JSON. cove-bench runs it with E2B_API_URL,
E2B_SANDBOX_URL and E2B_API_KEY pointing at a `cove serve`, and passes one JSON argument:

    {"dir": host directory with random.bin, text.txt and small/0..N-1,
     "plain_get": URL of `python3 -m http.server` serving "dir",
     "plain_post": URL of a plain upload sink (stores the body, answers 200),
     "runs": transfers of each large file, "small": how many 1 KiB files}

Clients: the official SDK (`files.read` bytes and stream, `files.write` of bytes and of a
stream, `write_files`), `requests` on `download_url()` / `upload_url()`, and `curl` on the
same signed URLs. Each baseline is the same client code against the plain servers: for the
SDK, an httpx client on the SDK's own transport (`e2b.api.client_sync.get_envd_api`, which
the SDK's file calls use). A large transfer and its baseline are timed by turns, so that the
machine's load over the run weighs on both alike."""

import io
import json
import os
import subprocess
import sys
import time

import requests
from e2b import ConnectionConfig, Sandbox
from e2b.api.client_sync import get_envd_api
from e2b.envd.api import ENVD_API_FILE_DOWNLOAD_HTTP_VERSION

cfg = json.loads(sys.argv[1])
DIR, RUNS, SMALL = cfg["dir"], cfg["runs"], cfg["small"]
PLAIN_GET, PLAIN_POST = cfg["plain_get"], cfg["plain_post"]
REMOTE = "/tmp/cove-bench-sdk"

with open(os.path.join(DIR, "random.bin"), "rb") as f:
    RANDOM = f.read()
with open(os.path.join(DIR, "text.txt"), "rb") as f:
    TEXT = f.read()
SMALL_DATA = []
for i in range(SMALL):
    with open(os.path.join(DIR, "small", str(i)), "rb") as f:
        SMALL_DATA.append(f.read())

out = {}


def rate(key, size, action, runs=RUNS):
    """Runs `action` `runs` times (after one untimed warm-up); records bytes per second."""
    action()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append(size / (time.perf_counter() - started))
    out[key] = samples


def paired(size, first, second, runs=RUNS):
    """Times two transfers by turns (A B A B ..., each once untimed first), so that a change
    in the machine's load over the run weighs on both alike; records bytes per second."""
    pairs = (first, second)
    for _, action in pairs:
        action()
    for key, _ in pairs:
        out[key] = []
    for _ in range(runs):
        for key, action in pairs:
            started = time.perf_counter()
            action()
            out[key].append(size / (time.perf_counter() - started))


def latencies(key, actions):
    """Times each action (after warming up on the first); records seconds."""
    actions[0]()
    samples = []
    for action in actions:
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    out[key] = samples


def check(got, want, what):
    if len(got) != len(want) or got != want:
        raise SystemExit(f"{what}: got {len(got)} bytes, expected {len(want)} (or other bytes)")


def curl(*args):
    """Runs curl; returns its own measure of the transfer's time (no process start)."""
    done = subprocess.run(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def curl_paired(size, first, second):
    """curl on two URLs by turns, as `paired` does; each of `first` and `second` is
    (key, curl's arguments)."""
    for _, args in (first, second):
        curl(*args)
    for key, _ in (first, second):
        out[key] = []
    for _ in range(RUNS):
        for key, args in (first, second):
            out[key].append(size / curl(*args))


sandbox = Sandbox.create()
try:
    files = sandbox.files
    big, text = f"{REMOTE}/random.bin", f"{REMOTE}/text.txt"

    # The SDK's own HTTP client, for the plain servers: an httpx client on the SDK's
    # transport, as the SDK's file calls make it.
    config = ConnectionConfig()
    plain = get_envd_api(config, PLAIN_GET, http_version=ENVD_API_FILE_DOWNLOAD_HTTP_VERSION)
    plain_stream = get_envd_api(
        config, PLAIN_GET, for_streaming=True, http_version=ENVD_API_FILE_DOWNLOAD_HTTP_VERSION
    )
    sink = get_envd_api(config, PLAIN_POST)

    def plain_read_stream():
        request = plain_stream.build_request("GET", "/random.bin")
        response = plain_stream.send(request, stream=True)
        try:
            check(b"".join(response.iter_bytes()), RANDOM, "plain stream")
        finally:
            response.close()

    def plain_post(**kwargs):
        sink.post("/upload", **kwargs).raise_for_status()

    # --- large files: the official SDK against Cove, by turns with its client and a plain server
    paired(
        len(RANDOM),
        ("sdk_write", lambda: files.write(big, RANDOM)),
        ("plain_write", lambda: plain_post(files=[("file", (big, RANDOM))])),
    )
    paired(
        len(RANDOM),
        ("sdk_write_stream", lambda: files.write(big, io.BytesIO(RANDOM))),
        (
            "plain_write_stream",
            lambda: plain_post(
                content=io.BytesIO(RANDOM), headers={"Content-Type": "application/octet-stream"}
            ),
        ),
    )
    files.write(text, TEXT)
    paired(
        len(RANDOM),
        ("sdk_read_bytes", lambda: check(files.read(big, format="bytes"), RANDOM, "read")),
        (
            "plain_read_bytes",
            lambda: check(bytearray(plain.get("/random.bin").content), RANDOM, "plain"),
        ),
    )
    paired(
        len(RANDOM),
        (
            "sdk_read_stream",
            lambda: check(b"".join(files.read(big, format="stream")), RANDOM, "read stream"),
        ),
        ("plain_read_stream", plain_read_stream),
    )
    rate(
        "sdk_read_gzip_text",
        len(TEXT),
        lambda: check(files.read(text, format="bytes", gzip=True), TEXT, "gzip read"),
    )
    rate(
        "sdk_read_gzip_random",
        len(RANDOM),
        lambda: check(files.read(big, format="bytes", gzip=True), RANDOM, "gzip read"),
    )
    # What went over the wire for `gzip=True`: the SDK's transport decodes gzip itself and
    # drops `Content-Encoding`, so the same request (`Accept-Encoding: gzip`) is made with
    # `requests` on the signed URL, reading the raw bytes undecoded.
    for name, path, size in (("text", text, len(TEXT)), ("random", big, len(RANDOM))):
        response = requests.get(
            sandbox.download_url(path), headers={"Accept-Encoding": "gzip"}, stream=True
        )
        response.raise_for_status()
        wire = sum(len(c) for c in response.raw.stream(1 << 20, decode_content=False))
        out[f"gzip_wire_{name}"] = wire / size
        out[f"gzip_encoding_{name}"] = response.headers.get("content-encoding", "identity")

    # --- many small files
    small_paths = [f"{REMOTE}/small/{i}" for i in range(SMALL)]
    latencies(
        "sdk_small_write",
        [lambda i=i: files.write(small_paths[i], SMALL_DATA[i]) for i in range(SMALL)],
    )
    latencies(
        "sdk_small_read",
        [
            lambda i=i: check(files.read(small_paths[i], format="bytes"), SMALL_DATA[i], "small read")
            for i in range(SMALL)
        ],
    )
    rate(
        "sdk_write_files",
        SMALL * len(SMALL_DATA[0]),
        lambda: files.write_files(
            [{"path": small_paths[i], "data": SMALL_DATA[i]} for i in range(SMALL)]
        ),
        runs=3,
    )
    latencies(
        "plain_small_write",
        [lambda i=i: plain_post(files=[("file", (small_paths[i], SMALL_DATA[i]))]) for i in range(SMALL)],
    )
    latencies(
        "plain_small_read",
        [
            lambda i=i: check(bytearray(plain.get(f"/small/{i}").content), SMALL_DATA[i], "plain small")
            for i in range(SMALL)
        ],
    )
    rate(
        "plain_write_files",
        SMALL * len(SMALL_DATA[0]),
        lambda: plain_post(files=[("file", (small_paths[i], SMALL_DATA[i])) for i in range(SMALL)]),
        runs=3,
    )

    # --- requests on the signed URLs, by turns with the same calls to the plain servers
    session = requests.Session()
    download, upload = sandbox.download_url(big), sandbox.upload_url(big)
    paired(
        len(RANDOM),
        ("requests_read", lambda: check(session.get(download).content, RANDOM, "requests")),
        (
            "requests_read_plain",
            lambda: check(session.get(f"{PLAIN_GET}/random.bin").content, RANDOM, "requests plain"),
        ),
    )
    paired(
        len(RANDOM),
        ("requests_write", lambda: session.post(upload, files={"file": RANDOM}).raise_for_status()),
        (
            "requests_write_plain",
            lambda: session.post(f"{PLAIN_POST}/upload", files={"file": RANDOM}).raise_for_status(),
        ),
    )

    # --- curl on the same URLs
    random_file = os.path.join(DIR, "random.bin")
    curl_paired(len(RANDOM), ("curl_read", [download]), ("curl_read_plain", [f"{PLAIN_GET}/random.bin"]))
    octet = ["-H", "Content-Type: application/octet-stream", "--data-binary", f"@{random_file}"]
    curl_paired(
        len(RANDOM),
        ("curl_write", [*octet, upload]),
        ("curl_write_plain", [*octet, f"{PLAIN_POST}/upload"]),
    )
finally:
    sandbox.kill()

json.dump(out, sys.stdout)
