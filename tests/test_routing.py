"""Routing a request for a pointer to an immutable version: the canary split, sticky per key."""

import json

import pytest
from conftest import run_cli

from artifactstore import InvalidParameter, NotFound
from artifactstore.demo import adapter_history
from artifactstore.registry.refs import ModelName
from artifactstore.registry.routing import BUCKETS, bucket, route

HISTORY = adapter_history(layers=2, scale=16)
KEYS = [f"user-{i}" for i in range(10_000)]
MODEL = ModelName("acme", "support")


def canary_share(state, keys=KEYS) -> float:
    return sum(route(state, "production", key) == state.canary["version"] for key in keys) / len(keys)


def test_the_bucket_is_blake3_of_model_and_key():
    """A fixed answer, so that another implementation (a gateway in another language, a
    follower's pick) can check it splits exactly as this one does."""
    assert bucket(MODEL, "user-42") == int("a102105e9ee6e40d", 16) % BUCKETS == 1037
    assert bucket(ModelName("globex", "chat"), "user-42") != bucket(MODEL, "user-42"), "per model"


def test_without_a_canary_production_serves_every_key(served):
    state = served.state("acme/support")
    assert {route(state, "production", key) for key in KEYS[:100]} == {"v1.0.0"}


def test_the_canary_gets_its_percent_of_keys_and_each_key_keeps_its_version(served):
    served.set_canary("acme/support@v1.1.0", 10)
    ten = served.state("acme/support")
    assert canary_share(ten) == pytest.approx(0.10, abs=0.01)
    assert [route(ten, "production", key) for key in KEYS[:500]] == [route(ten, "production", key)
                                                                     for key in KEYS[:500]]
    in_canary = {key for key in KEYS if route(ten, "production", key) == "v1.1.0"}

    served.set_canary("acme/support@v1.1.0", 50)
    fifty = served.state("acme/support")
    assert canary_share(fifty) == pytest.approx(0.50, abs=0.02)
    assert all(route(fifty, "production", key) == "v1.1.0" for key in in_canary), "a ramp keeps its keys"

    served.set_canary("acme/support@v1.1.0", 100)
    assert canary_share(served.state("acme/support")) == 1.0


def test_other_pointers_resolve_directly(served):
    served.stage("acme/support@v1.1.1")
    served.set_canary("acme/support@v1.1.0", 100)
    state = served.state("acme/support")
    assert route(state, "staging", "user-1") == "v1.1.1"
    assert route(state, "canary", "user-1") == "v1.1.0"
    with pytest.raises(NotFound, match="acme/support@rollback_target is not set"):
        route(state, "rollback_target", "user-1")


def test_store_route_names_an_immutable_version(served):
    served.set_canary("acme/support@v1.1.0", 50)
    state = served.state("acme/support")
    for key in KEYS[:50]:
        assert served.route("acme/support@production", key) == f"acme/support@{route(state, 'production', key)}"
    assert served.route("acme/support@v1.1.1") == "acme/support@v1.1.1"
    assert served.route("acme/support@latest") == "acme/support@v1.1.1"
    # without a key every request draws one: both versions serve
    assert {served.route("acme/support@production") for _ in range(200)} == {"acme/support@v1.0.0",
                                                                             "acme/support@v1.1.0"}
    with pytest.raises(NotFound, match="no version v9.9.9"):
        served.route("acme/support@v9.9.9")
    with pytest.raises(NotFound, match="no model acme/other"):
        served.route("acme/other@production")
    with pytest.raises(InvalidParameter, match="content id"):
        served.route(served.resolve("acme/support@v1.0.0"))
    with pytest.raises(InvalidParameter, match="unknown pointer 'prod'"):
        served.route("acme/support@prod")


def test_route_command(served):
    served.set_canary("acme/support@v1.1.0", 50)
    for key in ("user-1", "user-2", "user-3", "user-4"):
        expected = served.route("acme/support@production", key)
        result = run_cli("route", "acme/support@production", "--key", key, "--store", served.path, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"ref": "acme/support@production", "key": key, "routed": expected,
                                             "version": expected.partition("@")[2]}
        plain = run_cli("route", "acme/support@production", "--key", key, "--store", served.path)
        assert plain.stdout == expected + "\n"
    missing = run_cli("route", "acme/support@staging", "--store", served.path)
    assert missing.returncode == 1 and missing.stderr == "error: acme/support@staging is not set\n"
