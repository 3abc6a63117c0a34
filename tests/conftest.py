import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from artifactstore import Store
from artifactstore.clock import timestamp
from artifactstore.content.manifest import canonical_json
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.registry.refs import ModelName
from artifactstore.registry.state import (
    STATE_CONTEXT,
    VERSION_CONTEXT,
    VERSION_MAP_CONTEXT,
    AuditEntry,
    encode_version_map,
    ref_key,
)
from artifactstore.registry.versioning import previous_version


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.init(tmp_path / "store")


@pytest.fixture
def served(store, tmp_path) -> Store:
    """A local store serving acme/support: v1.0.0 to v1.2.0 of a small adapter, v1.0.0 in production."""
    for version in adapter_history(layers=2, scale=16)[:3]:
        store.push(write_bundle(version, tmp_path / "bundles" / version.name), f"acme/support@{version.name}")
    store.promote("acme/support@v1.0.0")
    return store


def reuse_deleted_number(store: Store, ref: str, number: str) -> None:
    """Give the version ``ref`` names the number of a deleted version, ``number``, as a push could
    before the registry kept deleted numbers: a store from that release may hold such a version,
    which what serves versions must still tell from the deleted one. Written as that release wrote
    it: the version's record under the new number, then a state (without ``deleted``) adding it."""
    registry, name = store.registry, ModelName.parse(ref.partition("@")[0])
    record = registry.record(store.state(name), ref.partition("@")[2]) | {"version": number}
    record_id = registry.write_object(canonical_json(record), VERSION_CONTEXT)
    store.delete(ref, reason="renumbered")
    state = store.state(name)
    versions = state.versions | {number: record_id}
    entry = AuditEntry(state.seq + 1, timestamp(), "ci@agency", "push", None, previous_version(state, number),
                       number, "pushed again")
    renumbered = replace(state, versions=versions, deleted=None, seq=entry.seq, entries=(entry,), parent=state.id,
                         versions_id=registry.write_object(encode_version_map(name, versions), VERSION_MAP_CONTEXT))
    token = store.backend.read_ref(ref_key(name))[1]
    store.backend.swap_ref(ref_key(name), canonical_json({"state": registry.write_object(renumbered.encode(),
                                                                                          STATE_CONTEXT)}), token)


def random_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under a store except tmp/, with its content: equal snapshots mean no change."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] != "tmp"}


def guards_match_hot_packs(store: Store) -> bool:
    """Whether the hot tier holds a guard for each of its packs and for nothing else."""
    def names(prefix: str, suffix: str) -> set[str]:
        return {key.rsplit("/", 1)[-1].removesuffix(suffix) for key in store.hot.list(prefix)}
    return names("guards", ".guard") == names("packs", ".pack")


def run_cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "artifactstore", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kwargs)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1, shared by the session's tests."""
    from s3server import start_s3_server

    url, stop = start_s3_server()
    yield url
    stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch) -> str:
    """A fresh bucket on the loopback server, with the AWS variables pointing at it; its s3:// URL."""
    from s3server import create_bucket, s3_environment

    for name, value in s3_environment(s3_server).items():
        monkeypatch.setenv(name, value)
    bucket = f"test-{time.monotonic_ns()}"
    create_bucket(s3_server, bucket)
    return f"s3://{bucket}"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST; ``statuses`` are answered first, then 200;
    with ``hang`` set it answers nothing until the test ends."""

    def __init__(self, port: int = 0, statuses: tuple[int, ...] = (), hang: bool = False):
        self.received: list[dict] = []
        self.statuses, self.hang = list(statuses), hang
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.hang:
                    receiver.release.wait(60)
                    return
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "event": json.loads(body)})
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [r["event"]["event"] for r in self.received]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def resident_pages(path) -> list[bool]:
    """Which pages of a file the page cache holds (Linux's mincore over a mapping of it)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        first_byte = ctypes.c_char.from_buffer(mapped)
        flags = (ctypes.c_ubyte * pages)()
        status = libc.mincore(ctypes.c_void_p(ctypes.addressof(first_byte)), size, flags)
        del first_byte  # the mapping closes only once nothing points into it
        assert status == 0, os.strerror(ctypes.get_errno())
        return [bool(flag & 1) for flag in flags]


def direct_io_taken(directory) -> bool:
    """Whether the file system under ``directory`` opens files for direct I/O (ext4 and XFS do;
    tmpfs before Linux 6.6 does not)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe_path = directory / "direct-probe"
    try:
        os.close(os.open(probe_path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
        return True
    except OSError:
        return False
    finally:
        probe_path.unlink(missing_ok=True)
