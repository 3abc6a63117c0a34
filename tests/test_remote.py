"""FsspecBackend against a real S3-protocol server (moto) on 127.0.0.1, through real sockets."""

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import run_cli
from s3server import create_bucket, s3_environment, start_s3_server, start_s3_server_with_auth

from artifactstore.backends.remote import FsspecBackend, mask_secrets, mask_url
from artifactstore.errors import Conflict, NotFound, StoreError

BUCKET = "remote-tests"


@pytest.fixture(scope="module")
def s3_url():
    url, stop = start_s3_server()
    yield url
    stop()


@pytest.fixture(scope="module", autouse=True)
def s3_env(s3_url):
    """Configure S3 the way users do, by the standard AWS variables, for this module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            patch.delenv(name)
        for name, value in s3_environment(s3_url).items():
            patch.setenv(name, value)
        create_bucket(s3_url, BUCKET)
        yield


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def backend(prefix) -> FsspecBackend:
    return FsspecBackend(f"s3://{BUCKET}/{prefix}")


class Proxy:
    """A TCP proxy in front of the S3 server, to make the network fail the way real ones do."""

    def __init__(self, upstream_url: str, *, delay: float = 0.0):
        host, _, port = upstream_url.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._delay = delay
        self._lock = threading.Lock()
        self._open = 0
        self.peak_connections = 0
        self._target: bytes | None = None
        self._drops_left = 0
        self._before_forwarding = None
        self.dropped_statuses: list[int] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_responses(self, request_line_prefix: str, *, times: int = 1, before_forwarding=None) -> None:
        """Forward the next ``times`` matching requests to the server, then cut the connection
        instead of returning the response; ``before_forwarding`` runs first."""
        self._target = request_line_prefix.encode()
        self._drops_left = times
        self._before_forwarding = before_forwarding

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            self._open += 1
            self.peak_connections = max(self.peak_connections, self._open)
        try:
            with client, socket.create_connection(self._upstream) as upstream:
                self._relay(client, upstream)
        finally:
            with self._lock:
                self._open -= 1

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        head = b""
        while b"\r\n" not in head:
            data = client.recv(65536)
            if not data:
                return
            head += data
        with self._lock:
            lose = self._drops_left > 0 and head.startswith(self._target)
            self._drops_left -= lose
        time.sleep(self._delay)
        if lose and self._before_forwarding:
            self._before_forwarding()
        upstream.sendall(head)
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        if lose:
            self._swallow_final_response(upstream, client)
        else:
            _pump(upstream, client)

    def _swallow_final_response(self, upstream: socket.socket, client: socket.socket) -> None:
        """Pass on interim ``100 Continue`` answers (the client waits for them before sending
        the body), then drop the connection as soon as the server's real answer arrives."""
        buffered = b""
        while data := upstream.recv(65536):
            buffered += data
            while buffered.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in buffered:
                interim, _, buffered = buffered.partition(b"\r\n\r\n")
                client.sendall(interim + b"\r\n\r\n")
            if b"\r\n" in buffered and not buffered.startswith(b"HTTP/1.1 100"):
                self.dropped_statuses.append(int(buffered.split(b" ", 2)[1]))
                client.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked on this socket, sends FIN
                return


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other side is gone: nothing left to relay


@pytest.fixture
def proxy(s3_url):
    proxy = Proxy(s3_url)
    yield proxy
    proxy.close()


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[1]


# -- objects --------------------------------------------------------------------------------


def test_read_ranges_reads_concurrently(s3_url, prefix):
    """Through a proxy that delays every request, several requests are in flight at once."""
    data = {f"packs/{n:02x}/p.pack": os.urandom(50_000) for n in range(2)}
    direct = FsspecBackend(f"s3://{BUCKET}/{prefix}")
    for key, content in data.items():
        direct.write(key, content)
    requests = [(key, 3000 * i, 1000 + i) for i in range(8) for key in data]
    slow = Proxy(s3_url, delay=0.2)
    try:
        backend = FsspecBackend(f"s3://{BUCKET}/{prefix}", {"endpoint_url": slow.url})
        results = backend.read_ranges(requests)
    finally:
        slow.close()
    assert results == [data[key][offset:offset + length] for key, offset, length in requests]
    assert slow.peak_connections >= 4
    assert backend.read_ranges([]) == []


def test_describe_names_url_and_endpoint(backend, prefix, s3_url):
    assert backend.url == f"s3://{BUCKET}/{prefix}"
    assert backend.describe() == f"s3://{BUCKET}/{prefix} at {s3_url}"


# -- refs -----------------------------------------------------------------------------------

REF = "registry/refs/acme/support.json"


RACER = textwrap.dedent("""
    import json, os, sys, time
    from artifactstore.errors import Conflict
    from artifactstore.backends.remote import FsspecBackend
    url, key, start, attempts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    backend = FsspecBackend(url)
    backend.read_ref(key)  # connected: ready to start
    open(os.path.join(start, f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(start, "go")):
        time.sleep(0.005)
    wins = losses = 0
    for _ in range(attempts):
        data, token = backend.read_ref(key)
        try:
            backend.swap_ref(key, str(int(data) + 1).encode(), token)
            wins += 1
        except Conflict:
            losses += 1
    print(json.dumps({"wins": wins, "losses": losses}))
""")


def test_racing_processes_lose_no_update(backend, prefix, tmp_path):
    """Processes increment one counter by read_ref + swap_ref: every success counts exactly once."""
    backend.swap_ref("counter", b"0", None)
    processes, attempts = 4, 12
    racers = [subprocess.Popen([sys.executable, "-c", RACER, backend.url, "counter", str(tmp_path), str(attempts)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
              for _ in range(processes)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < processes and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()  # all at once, so that they contend
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        results.append(json.loads(out))

    wins = sum(r["wins"] for r in results)
    assert int(backend.read_ref("counter")[0]) == wins
    assert wins + sum(r["losses"] for r in results) == processes * attempts
    assert sum(r["losses"] for r in results) > 0, "no contention: the test proved nothing"


# -- lost responses -------------------------------------------------------------------------


def _via(proxy: Proxy, prefix: str) -> FsspecBackend:
    return FsspecBackend(f"s3://{BUCKET}/{prefix}", {"endpoint_url": proxy.url})


def test_lost_response_to_an_applied_update_is_a_success(backend, proxy, prefix):
    token = backend.swap_ref(REF, b"v1", None)
    proxy.lose_responses(f"PUT /{BUCKET}/{prefix}/{REF} ")

    new_token = _via(proxy, prefix).swap_ref(REF, b"v2", token)

    assert proxy.dropped_statuses == [200]  # the update was applied, its answer never came
    assert backend.read_ref(REF) == (b"v2", new_token)


def test_lost_response_to_an_applied_create_is_a_success(backend, proxy, prefix):
    proxy.lose_responses(f"PUT /{BUCKET}/{prefix}/{REF} ")

    token = _via(proxy, prefix).swap_ref(REF, b"v1", None)

    assert proxy.dropped_statuses == [200]
    assert backend.read_ref(REF) == (b"v1", token)


def test_every_response_lost_still_resolved_by_reading_back(backend, proxy, prefix):
    """No attempt gets an answer: the client gives up with a connection error, not a 412."""
    token = backend.swap_ref(REF, b"v1", None)
    proxy.lose_responses(f"PUT /{BUCKET}/{prefix}/{REF} ", times=100)

    new_token = _via(proxy, prefix).swap_ref(REF, b"v2", token)

    assert proxy.dropped_statuses[0] == 200 and set(proxy.dropped_statuses[1:]) == {412}
    assert backend.read_ref(REF) == (b"v2", new_token)


def test_lost_response_after_another_writer_won_is_a_conflict(backend, proxy, prefix):
    token = backend.swap_ref(REF, b"v1", None)
    proxy.lose_responses(f"PUT /{BUCKET}/{prefix}/{REF} ",
                         before_forwarding=lambda: backend.swap_ref(REF, b"theirs", token))

    with pytest.raises(Conflict):
        _via(proxy, prefix).swap_ref(REF, b"ours", token)

    assert proxy.dropped_statuses == [412]
    assert backend.read_ref(REF)[0] == b"theirs"


def test_another_writer_with_the_same_bytes_is_still_a_conflict(backend, proxy, prefix):
    """Equal content does not prove the write was ours: two swaps from one token cannot both win."""
    token = backend.swap_ref(REF, b"v1", None)
    proxy.lose_responses(f"PUT /{BUCKET}/{prefix}/{REF} ",
                         before_forwarding=lambda: backend.swap_ref(REF, b"v2", token))

    with pytest.raises(Conflict):
        _via(proxy, prefix).swap_ref(REF, b"v2", token)


# -- errors ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server():
    url, stop, credentials = start_s3_server_with_auth()
    create_bucket(url, "guarded", credentials)
    yield url, credentials
    stop()


@pytest.mark.parametrize("wrong", ["secret", "key id"])
def test_wrong_credentials_are_one_line_without_secrets(auth_server, wrong, monkeypatch):
    url, credentials = auth_server
    secret = "wrong-secret-0123456789" if wrong == "secret" else credentials["AWS_SECRET_ACCESS_KEY"]
    key_id = credentials["AWS_ACCESS_KEY_ID"] if wrong == "secret" else "AKIAUNKNOWNUNKNOWN00"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    backend = FsspecBackend("s3://guarded/store")

    for operation in (lambda: backend.read("artifactstore.json"), lambda: backend.write("x", b"x"),
                      lambda: list(backend.list("packs")), lambda: backend.read_ref(REF),
                      lambda: backend.swap_ref(REF, b"v1", None)):
        with pytest.raises(StoreError) as caught:
            operation()
        message = str(caught.value)
        assert message == ("s3://guarded/store: access denied "
                           "(check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        assert secret not in message and "\n" not in message


def test_right_credentials_work_on_the_checking_server(auth_server):
    url, credentials = auth_server
    options = {"endpoint_url": url, "key": credentials["AWS_ACCESS_KEY_ID"],
               "secret": credentials["AWS_SECRET_ACCESS_KEY"]}
    backend = FsspecBackend("s3://guarded/store", options)
    backend.write("artifactstore.json", b"{}")
    assert backend.read("artifactstore.json") == b"{}"


def test_unreachable_endpoint_fails_fast_with_one_line(monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    backend = FsspecBackend(f"s3://{BUCKET}/store")
    for operation in (lambda: backend.read("artifactstore.json"), lambda: backend.exists("x"),
                      lambda: backend.swap_ref(REF, b"v1", None)):
        with pytest.raises(StoreError) as caught:
            operation()
        assert str(caught.value) == f"cannot reach http://127.0.0.1:{port}: connection refused"


def test_missing_bucket_is_named():
    backend = FsspecBackend("s3://no-such-bucket/store")
    expected = "s3://no-such-bucket/store: bucket no-such-bucket does not exist"
    for operation in (lambda: backend.read("artifactstore.json"), lambda: backend.exists("x"),
                      lambda: list(backend.list("packs")), lambda: backend.write("x", b"x"),
                      lambda: backend.size("x"), lambda: backend.read_ref(REF),
                      lambda: backend.swap_ref(REF, b"v1", None)):
        with pytest.raises(StoreError) as caught:
            operation()
        assert str(caught.value) == expected


def test_endpoint_that_is_not_s3_is_named(monkeypatch, tmp_path):
    """A web server that answers 404 to everything must not make every object look missing."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=tmp_path)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{web.server_port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        backend = FsspecBackend(f"s3://{BUCKET}/store")
        try:
            for operation in (lambda: backend.read("artifactstore.json"), lambda: backend.exists("x"),
                              lambda: backend.read_ref(REF)):
                with pytest.raises(StoreError, match=f"{endpoint} does not answer like S3"):
                    operation()
        finally:
            web.shutdown()


def test_url_without_bucket_is_refused():
    with pytest.raises(StoreError, match="names no bucket"):
        FsspecBackend("s3://")


# -- other filesystems, open_backend, masking -----------------------------------------------


def test_memory_filesystem_stores_objects_but_refuses_ref_swaps():
    backend = FsspecBackend(f"memory://remote-tests-{uuid.uuid4().hex}")
    backend.write("packs/ab/1.pack", b"0123456789")
    assert backend.read_range("packs/ab/1.pack", 2, 3) == b"234"
    assert backend.read_ranges([("packs/ab/1.pack", 0, 2), ("packs/ab/1.pack", 8, 2)]) == [b"01", b"89"]
    assert list(backend.list("packs")) == ["packs/ab/1.pack"]
    with pytest.raises(NotFound):
        backend.read("packs/ab/2.pack")
    assert backend.read_ref(REF) == (None, None)
    with pytest.raises(StoreError, match="refs need conditional writes"):
        backend.swap_ref(REF, b"v1", None)


def test_mask_secrets():
    environment = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
                   "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                   "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLE", "AWS_REGION": "eu-west-1",
                   "AWS_ENDPOINT_URL": "http://user:hunter2@minio:9000",
                   "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/credentials"}
    assert mask_secrets(environment) == {
        "AWS_ACCESS_KEY_ID": "AKIA…", "AWS_SECRET_ACCESS_KEY": "****", "AWS_SESSION_TOKEN": "****",
        "AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://user:****@minio:9000",
        "AWS_SHARED_CREDENTIALS_FILE": "/home/me/.aws/credentials"}
    options = {"key": "AKIAIOSFODNN7EXAMPLE", "secret": "s3cr3t", "token": "t0k3n", "anon": False,
               "client_kwargs": {"aws_secret_access_key": "s3cr3t", "region_name": "us-east-1"}}
    assert mask_secrets(options) == {"key": "AKIA…", "secret": "****", "token": "****", "anon": False,
                                     "client_kwargs": {"aws_secret_access_key": "****",
                                                       "region_name": "us-east-1"}}


def test_mask_url():
    assert mask_url(None) is None
    assert mask_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert mask_url("https://u:pw@host/p?X-Amz-Signature=abc&part=1") == \
        "https://u:****@host/p?X-Amz-Signature=****&part=1"


def test_init_with_an_unreachable_cold_tier_is_refused_and_writes_nothing(auth_server, tmp_path):
    url, credentials = auth_server
    wrong = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": credentials["AWS_ACCESS_KEY_ID"],
             "AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"}
    refused = run_cli("init", tmp_path / "store", "--cold", "s3://guarded/cold", env=wrong)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "access denied" in refused.stderr and "wrong-secret" not in refused.stderr
    assert not (tmp_path / "store").exists()
    right = {**wrong, "AWS_SECRET_ACCESS_KEY": credentials["AWS_SECRET_ACCESS_KEY"]}
    assert run_cli("init", tmp_path / "store", "--cold", "s3://guarded/cold", env=right).returncode == 0
