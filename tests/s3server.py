"""A real S3-protocol server (moto) on 127.0.0.1, in its own process, for tests.

    url, stop = start_s3_server()                  # accepts any credentials
    os.environ.update(s3_environment(url))         # what a client needs to use it
    create_bucket(url, "my-bucket")
    ...
    stop()

``start_s3_server_with_auth()`` starts one that checks credentials, for tests of access errors.

The server runs in a child process so that its state (moto keeps it per process) and its load
stay out of the test process; the child exits when its standard input closes, so it cannot
outlive the tests. Run as a script, this file is that child.
"""

import json
import logging
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable

REGION = "us-east-1"
ANY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def start_s3_server() -> tuple[str, Callable[[], None]]:
    """Start a server that accepts any credentials; returns its URL and a function that stops it."""
    announced, stop = _start()
    return announced["url"], stop


def start_s3_server_with_auth() -> tuple[str, Callable[[], None], dict[str, str]]:
    """Start a server that checks credentials; also returns the environment of its one valid user."""
    announced, stop = _start("--auth")
    return announced["url"], stop, {"AWS_ACCESS_KEY_ID": announced["access_key_id"],
                                    "AWS_SECRET_ACCESS_KEY": announced["secret_access_key"]}


def s3_environment(url: str, credentials: dict[str, str] = ANY_CREDENTIALS) -> dict[str, str]:
    """The AWS variables that point boto3, s3fs and artifactstore at the server at ``url``."""
    return {**credentials, "AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": REGION}


def create_bucket(url: str, name: str, credentials: dict[str, str] = ANY_CREDENTIALS) -> None:
    """Create a bucket (moto refuses names shorter than three characters)."""
    import boto3

    client = boto3.client("s3", endpoint_url=url, region_name=REGION, **_boto_credentials(credentials))
    client.create_bucket(Bucket=name)
    client.close()


def _start(*flags: str) -> tuple[dict, Callable[[], None]]:
    process = subprocess.Popen([sys.executable, __file__, *flags], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError(f"the S3 test server did not start (exit status {process.returncode}; see stderr)")

    def stop() -> None:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    return json.loads(line), stop


class _SerializedWrites:
    """Runs writing requests one at a time.

    moto checks a PUT's If-Match / If-None-Match and stores the object in two separate steps, so
    two concurrent conditional PUTs could both pass the check; S3 makes the pair atomic.
    """

    def __init__(self, app):
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            return self._app(environ, start_response)
        with self._lock:
            return self._app(environ, start_response)


def _enable_auth(url: str) -> dict[str, str]:
    """Create a user allowed everything, then make moto check every request's credentials."""
    import boto3

    iam = boto3.client("iam", endpoint_url=url, region_name=REGION, **_boto_credentials(ANY_CREDENTIALS))
    iam.create_user(UserName="tester")
    iam.put_user_policy(UserName="tester", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="tester")["AccessKey"]
    # moto authenticates every request after the first N; N = 0 from now on
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                                  headers={"Content-Type": "text/plain"}))
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def _boto_credentials(environment: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": environment["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": environment["AWS_SECRET_ACCESS_KEY"]}


def _serve(require_auth: bool) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    app = _SerializedWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    announced = {"url": url, **(_enable_auth(url) if require_auth else {})}
    print(json.dumps(announced), flush=True)
    sys.stdin.read()  # serve until the parent stops us or dies
    server.shutdown()


if __name__ == "__main__":
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        del os.environ[name]  # the server's own IAM calls must not go to another endpoint
    _serve("--auth" in sys.argv[1:])
