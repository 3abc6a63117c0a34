"""A long-lived Store sees what other processes stored after it was opened.

The product's central path: a training job pushes and promotes, an inference server that is
already running swaps to it. Each writer here is another process (the CLI), so nothing is shared
through memory.
"""

import pytest
from conftest import run_cli, snapshot

from artifactstore import Store
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.serving import Follower

HISTORY = adapter_history(layers=2, scale=16)


@pytest.fixture
def bundles(tmp_path):
    return {v.name: write_bundle(v, tmp_path / "bundles" / v.name) for v in HISTORY[:3]}


def cli(location: str, *args, cache=None) -> None:
    env = {"ARTIFACTSTORE_CACHE": str(cache)} if cache else None
    done = run_cli(*args, "--store", location, env=env)
    assert done.returncode == 0, done.stderr


@pytest.fixture(params=["directory", "shared"])
def location(request, tmp_path) -> tuple[str, dict]:
    """A store, and the cache options of a second machine (a shared store: a cache of its own)."""
    if request.param == "directory":
        Store.init(tmp_path / "store")
        return str(tmp_path / "store"), {}
    url = f"{request.getfixturevalue('s3_bucket')}/shared"
    Store.init(url, cache=tmp_path / "cache-writer")
    return url, {"cache": tmp_path / "cache-writer"}


def test_an_old_store_object_loads_gets_and_checks_out_later_pushes(location, bundles, tmp_path):
    url, writer = location
    cli(url, "push", bundles["v1.0.0"], "acme/x@v1.0.0", **writer)
    reader = Store(url, cache=tmp_path / "cache-reader")
    assert set(reader.load("acme/x@v1.0.0")) == set(HISTORY[0].tensors)
    cli(url, "push", bundles["v1.1.0"], "acme/x@v1.1.0", **writer)
    cli(url, "promote", "acme/x@v1.1.0", **writer)
    tensors = reader.load("acme/x@production")
    assert all((tensors[name] == HISTORY[1].tensors[name]).all() for name in HISTORY[1].tensors)
    reader.get(reader.resolve("acme/x@v1.1.0"), tmp_path / "got")
    assert snapshot(tmp_path / "got") == snapshot(bundles["v1.1.0"])
    reader.checkout("acme/x@v1.1.0", tmp_path / "adapter")
    assert snapshot(tmp_path / "adapter") == snapshot(bundles["v1.1.0"] / "adapter_weights")


def test_an_old_store_object_reads_later_plain_puts(location, tmp_path):
    url, writer = location
    reader = Store(url, cache=tmp_path / "cache-reader")
    env = {"ARTIFACTSTORE_CACHE": str(writer["cache"])} if writer else None
    for n in range(2):  # the first read loads the reader's index; the second must see the new put
        data = tmp_path / f"w{n}.bin"
        data.write_bytes(bytes(range(n, 256)) * 4096)
        done = run_cli("put", data, "--store", url, env=env)
        assert done.returncode == 0, done.stderr
        reader.get(done.stdout.strip(), tmp_path / f"out{n}.bin")
        assert (tmp_path / f"out{n}.bin").read_bytes() == data.read_bytes()


def test_a_follower_started_before_the_push_serves_the_promoted_version(location, bundles, tmp_path):
    url, writer = location
    cli(url, "push", bundles["v1.0.0"], "acme/x@v1.0.0", **writer)
    cli(url, "promote", "acme/x@v1.0.0", **writer)
    with Follower(Store(url, cache=tmp_path / "cache-server"), "acme/x@production", poll_interval=0.05) as server:
        assert server.current.version == "v1.0.0"
        cli(url, "push", bundles["v1.1.0"], "acme/x@v1.1.0", **writer)
        cli(url, "promote", "acme/x@v1.1.0", **writer)
        live = server.wait_for("v1.1.0", timeout=20)
        assert server.last_error is None
        probe = next(iter(HISTORY[1].tensors))
        assert (live.tensors[probe] == HISTORY[1].tensors[probe]).all()
