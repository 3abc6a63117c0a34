"""The OpenAI-compatible gateway, run as its own process (`artifactstore gateway`) in front of a
real HTTP upstream on 127.0.0.1 that answers with the model it was asked for."""

import http.client
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import run_cli

from artifactstore.demo import adapter_history
from artifactstore.registry.refs import ModelName

HISTORY = adapter_history(layers=2, scale=16)
TIMEOUT = 30


class Upstream(ThreadingHTTPServer):
    """Echoes what it was asked, as a completion; streams it as server-sent events when asked to,
    holding the second event until ``release`` is set (so a test sees whether events are passed on
    as they come)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.requests: list[dict] = []
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class EchoHandler(BaseHTTPRequestHandler):
    server: Upstream
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.answer({"object": "list", "path": self.path, "data": [{"id": "base"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append({"path": self.path, "body": body, "key": self.headers.get("x-artifactstore-key"),
                                     "cookie": self.headers.get("cookie")})
        if not body.get("stream"):
            extra = {"alice": [("set-cookie", "session=ALICE; Path=/"), ("set-cookie", "lb=node-7; Path=/")],
                     "mallory": [("x-artifactstore-routed", "acme/support@v9.9.9")]}.get(body.get("user"), [])
            self.answer({"object": "text_completion", "model": body["model"], "user": body.get("user")}, extra)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for index in range(3):
            self.wfile.write(f"data: {json.dumps({'model': body['model'], 'index': index})}\n\n".encode())
            self.wfile.flush()
            if index == 0:
                self.server.release.wait(TIMEOUT)
        self.wfile.write(b"data: [DONE]\n\n")

    def answer(self, obj: dict, extra: list[tuple[str, str]] = ()) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        for name, value in extra:  # an auth proxy's or a sticky load balancer's cookies, say
            self.send_header(name, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def upstream():
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def start_gateway(store_path, upstream_url: str):
    process = subprocess.Popen([sys.executable, "-m", "artifactstore", "gateway", "--upstream", upstream_url,
                                "--port", "0", "--store", str(store_path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(TIMEOUT)
        pytest.fail(f"the gateway did not start (exit status {process.returncode})")
    return process, json.loads(line)["listening"]


@pytest.fixture
def gateway(served, upstream):
    process, url = start_gateway(served.path, upstream.url)
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        yield client
    process.terminate()
    process.wait(TIMEOUT)


def complete(gateway, model: str, **fields) -> httpx.Response:
    return gateway.post("/v1/completions", json={"model": model, "prompt": "hello", **fields})


def test_a_pointer_is_routed_and_a_rollback_takes_effect_without_a_restart(gateway, served, upstream):
    answer = complete(gateway, "acme/support@production")
    assert answer.status_code == 200
    assert answer.json()["model"] == "acme/support@v1.0.0"
    assert answer.headers["x-artifactstore-routed"] == "acme/support@v1.0.0"
    assert upstream.requests[-1]["body"] == {"model": "acme/support@v1.0.0", "prompt": "hello"}

    served.promote("acme/support@v1.1.0")
    assert complete(gateway, "acme/support@production").json()["model"] == "acme/support@v1.1.0"
    served.rollback("acme/support")
    assert complete(gateway, "acme/support@production").json()["model"] == "acme/support@v1.0.0"
    chat = gateway.post("/v1/chat/completions", json={"model": "acme/support@production",
                                                       "messages": [{"role": "user", "content": "hi"}]})
    assert chat.json()["model"] == "acme/support@v1.0.0"
    assert upstream.requests[-1]["body"]["messages"] == [{"role": "user", "content": "hi"}], "the rest as sent"


def test_a_stream_is_passed_on_as_it_comes(gateway, upstream):
    with gateway.stream("POST", "/v1/chat/completions",
                        json={"model": "acme/support@production", "stream": True,
                              "messages": [{"role": "user", "content": "hi"}]}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["x-artifactstore-routed"] == "acme/support@v1.0.0"
        lines = answer.iter_lines()
        first = next(lines)  # arrives while the upstream still holds the rest
        assert json.loads(first.removeprefix("data: ")) == {"model": "acme/support@v1.0.0", "index": 0}
        upstream.release.set()
        events = [line for line in lines if line]
    assert [json.loads(e.removeprefix("data: "))["index"] for e in events[:-1]] == [1, 2]
    assert events[-1] == "data: [DONE]"


def test_the_canary_gets_the_recorded_share_and_keys_stay(gateway, served, upstream):
    served.set_canary("acme/support@v1.1.0", 30)
    routed = {}
    for i in range(400):
        key = f"user-{i}"
        # the key: the X-Artifactstore-Key header, else the OpenAI "user" field
        answer = (gateway.post("/v1/completions", json={"model": "acme/support@production", "prompt": "x"},
                               headers={"X-Artifactstore-Key": key}) if i % 2 else
                  complete(gateway, "acme/support@production", user=key))
        routed[key] = answer.headers["x-artifactstore-routed"]
        assert routed[key] == served.route("acme/support@production", key)
    share = sum(name == "acme/support@v1.1.0" for name in routed.values()) / len(routed)
    assert share == pytest.approx(0.30, abs=0.06)
    for key in list(routed)[:20]:
        assert complete(gateway, "acme/support@production", user=key).headers["x-artifactstore-routed"] == \
            routed[key]
    assert upstream.requests[1]["key"] == "user-1", "headers reach the upstream"


def test_other_names_and_paths_pass_through(gateway, upstream, served):
    answer = complete(gateway, "base-model")
    assert answer.json()["model"] == "base-model" and "x-artifactstore-routed" not in answer.headers
    bundle = served.resolve("acme/support@v1.1.1")
    assert complete(gateway, bundle).json()["model"] == bundle
    assert complete(gateway, "acme/support@v1.1.1").headers["x-artifactstore-routed"] == "acme/support@v1.1.1"
    assert gateway.get("/v1/models?limit=5").json() == {"object": "list", "path": "/v1/models?limit=5",
                                                         "data": [{"id": "base"}]}


def test_adapter_loading_is_not_forwarded(gateway, upstream):
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        answer = gateway.post(path, json={"lora_name": "x", "lora_path": "/etc"})
        assert answer.status_code == 403
        assert answer.json()["error"]["message"] == (f"the gateway does not forward {path}: the server loads "
                                                     f"adapters from the store by their version names")
    assert upstream.requests == []


def test_adapter_loading_is_not_forwarded_under_any_spelling_of_its_path(gateway, upstream):
    """A load balancer that merges slashes (nginx's default) would make each of these the endpoint."""
    address = httpx.URL(str(gateway.base_url))
    for path in ("//v1/load_lora_adapter", "/v1//load_lora_adapter", "/v1/load_lora_adapter/",
                 "/v1/x/../unload_lora_adapter"):
        connection = http.client.HTTPConnection(address.host, address.port, timeout=TIMEOUT)
        try:  # sent as written: httpx would tidy the path itself
            connection.request("POST", path, body=b'{"lora_name": "x", "lora_path": "/etc"}',
                               headers={"content-type": "application/json"})
            assert connection.getresponse().status == 403, path
        finally:
            connection.close()
    assert upstream.requests == []


def test_a_registry_the_disk_cannot_read_is_a_503(gateway, upstream, served):
    ref = served.registry.ref_file(ModelName.parse("acme/support"))
    ref.unlink()
    ref.mkdir()  # reading it fails with an OSError that is not "no such file"
    answer = complete(gateway, "acme/support@production")
    assert answer.status_code == 503 and answer.json()["error"]["message"].startswith("the registry cannot be read")
    assert upstream.requests == []


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the request body is not JSON"),
    (b"[1, 2]", 400, "the request body is not a JSON object"),
    (b'{"model": "acme/support@prod"}', 400, "unknown pointer 'prod' in 'acme/support@prod'"),
    (b'{"model": "Acme@production"}', 400, "not a model name: 'Acme'"),
    (b'{"model": "acme/nothing@production"}', 404, "no model acme/nothing in the registry"),
    (b'{"model": "acme/support@staging"}', 404, "acme/support@staging is not set"),
    (b'{"model": "acme/support@v9.9.9"}', 404, "acme/support has no version v9.9.9"),
])
def test_bad_requests_get_clear_errors(gateway, upstream, body, status, message):
    answer = gateway.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status
    assert answer.json()["error"]["message"].startswith(message)
    assert answer.json()["error"]["code"] == status
    assert upstream.requests == [], "nothing reached the upstream"


def test_an_unreachable_upstream_is_a_502(served, upstream):
    url = upstream.url
    upstream.shutdown()
    upstream.server_close()
    process, gateway_url = start_gateway(served.path, url)
    try:
        answer = httpx.post(f"{gateway_url}/v1/completions", json={"model": "acme/support@production"},
                            timeout=TIMEOUT)
        assert answer.status_code == 502
        assert answer.json()["error"]["message"].startswith(f"the upstream server {url} did not answer")
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def test_gateway_command_errors(served, tmp_path):
    bad = run_cli("gateway", "--upstream", "ftp://example.com", "--store", served.path)
    assert bad.returncode == 1 and bad.stderr == "error: --upstream must be an http:// or https:// URL, " \
                                                 "not 'ftp://example.com'\n"
    without_web_stack = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['starlette'] = None; from artifactstore.cli import main; main()", "gateway", "--upstream", "http://127.0.0.1:1", "--store", str(served.path)],
        capture_output=True, text=True, timeout=TIMEOUT)
    assert without_web_stack.returncode == 1
    assert without_web_stack.stderr == "error: the gateway needs starlette: pip install 'artifactstore[serve]'\n"


def test_a_callers_cookies_reach_that_caller_whole_and_nobody_else(gateway, upstream):
    """The gateway keeps no state: cookies the upstream sets for one caller are passed to that caller,
    each Set-Cookie on its own, and never sent upstream with another caller's requests."""
    alice = complete(gateway, "acme/support@production", user="alice")
    assert alice.headers.get_list("set-cookie") == ["session=ALICE; Path=/", "lb=node-7; Path=/"]
    gateway.cookies.clear()  # another caller, who has no cookies
    complete(gateway, "acme/support@production", user="bob")
    assert [r["cookie"] for r in upstream.requests] == [None, None]


def test_the_routed_header_is_the_gateways_own(gateway, upstream):
    answer = complete(gateway, "acme/support@production", user="mallory")
    assert answer.headers.get_list("x-artifactstore-routed") == ["acme/support@v1.0.0"]
