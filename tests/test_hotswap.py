"""The hot-swap follower, checkout, and the serving object's resistance to bad input."""

import dataclasses
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import reuse_deleted_number, run_cli

from artifactstore import InvalidInput, InvalidParameter, Store
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.serving import Follower

HISTORY = adapter_history(layers=2, scale=16)
PROBE = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"  # differs between v1.0.0 and v1.1.0


def expected(version_index: int) -> np.ndarray:
    return HISTORY[version_index].tensors[PROBE]


def test_a_version_number_deleted_and_pushed_again_is_loaded_again(served, tmp_path):
    """Resident versions and the live one are known by their version record, not their number alone:
    a number deleted and pushed again (refused now; a store from an older release may hold such a
    version) is other weights."""
    def push_as_v110(history_index: int) -> None:
        bundle = write_bundle(HISTORY[history_index], tmp_path / f"again-{history_index}")
        pushed = served.push(bundle, "acme/support", bump="auto").ref
        reuse_deleted_number(served, pushed, "v1.1.0")

    served.delete("acme/support@v1.1.1")  # v1.1.0 pushed again with other weights would make its patch label wrong
    follower = Follower(served, "acme/support@production")
    served.promote("acme/support@v1.1.0")
    follower.refresh()
    served.rollback("acme/support")
    follower.refresh()  # v1.1.0 stays resident
    served.delete("acme/support@v1.1.0", reason="data removal")
    push_as_v110(3)
    served.promote("acme/support@v1.1.0")
    follower.refresh()
    np.testing.assert_array_equal(follower.current.tensors[PROBE], HISTORY[3].tensors[PROBE])
    # the same, unseen by the follower from its live version's rollback to its return
    served.rollback("acme/support")
    served.delete("acme/support@v1.1.0", reason="data removal")
    push_as_v110(1)
    served.promote("acme/support@v1.1.0")
    follower.refresh()
    np.testing.assert_array_equal(follower.current.tensors[PROBE], expected(1))
    assert follower.current.bundle == served.resolve("acme/support@v1.1.0")


@pytest.mark.parametrize("args, message", [
    (["acme/nosuch@production"], "no model acme/nosuch in the registry"),
    (["acme/support@production", "--device", "gpu"], "device 'gpu' needs framework='torch'"),
    (["acme/support@production", "--framework", "torch", "--device", "gpu"], "unknown device 'gpu'"),
])
def test_follow_refuses_what_it_could_not_serve_in_one_line_and_joins_no_fleet(served, args, message):
    done = run_cli("follow", *args, "--node", "srv-9", "--store", served.path, input="")
    assert done.returncode != 0 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (served.path / "fleet").exists()


def test_follow_with_a_probe_the_version_lacks_warns_and_serves(served):
    done = run_cli("follow", "acme/support@production", "--probe", "no.such.tensor", "--node", "srv-9",
                   "--store", served.path, input="")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "warning: --probe no.such.tensor: v1.0.0 has no such tensor" in done.stderr
    swap = json.loads(done.stdout.splitlines()[0])
    assert swap["version"] == "v1.0.0" and swap["probe"] is None
    assert served.fleet("acme/support").heartbeats == []  # it left the fleet when it stopped


def test_a_follower_whose_first_look_fails_leaves_no_heartbeat(served):
    def refuse(old, new):
        raise RuntimeError("the server could not take it")

    with pytest.raises(RuntimeError, match="could not take it"):
        Follower(served, "acme/support@production", node="srv-9", on_swap=refuse)
    assert served.fleet("acme/support").heartbeats == []


def test_follower_swaps_on_promote_and_rollback(served):
    swaps = []
    with Follower(served, "acme/support@production", poll_interval=0.001,
                  on_swap=lambda old, new: swaps.append((old and old.version, new.version))) as follower:
        assert follower.current.version == "v1.0.0"
        np.testing.assert_array_equal(follower.current.tensors[PROBE], expected(0))
        served.promote("acme/support@v1.1.0")
        live = follower.wait_for("v1.1.0")
        np.testing.assert_array_equal(live.tensors[PROBE], expected(1))
        assert "v1.0.0" in follower.resident, "the rollback target stays resident"
        served.rollback("acme/support")
        follower.wait_for("v1.0.0")
    assert swaps == [(None, "v1.0.0"), ("v1.0.0", "v1.1.0"), ("v1.1.0", "v1.0.0")]


def test_a_local_follower_is_woken_by_the_ref_not_by_polling(served):
    """With a poll interval far longer than the test, only the watch on the ref's directory (which
    another model's ref shares) can make the follower see moves made by another process."""
    served.push(write_bundle(HISTORY[0], served.path.parent / "other"), "acme/other@v1.0.0")
    with Follower(served, "acme/support@production", poll_interval=3600) as follower:
        assert follower.current.version == "v1.0.0"
        run_cli("promote", "acme/support@v1.1.0", "--store", served.path, check=True)
        follower.wait_for("v1.1.0", timeout=60)
        run_cli("rollback", "acme/support", "--store", served.path, check=True)
        follower.wait_for("v1.0.0", timeout=60)


def test_readers_never_see_a_mix_of_versions(served):
    follower = Follower(served, "acme/support@production", poll_interval=0.0005).start()
    expected_by_version = {v.name: v.tensors for v in HISTORY[:3]}
    mixes, reads, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            live = follower.current
            reference = expected_by_version[live.version]
            for name in (PROBE, "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"):
                if not np.array_equal(live.tensors[name], reference[name]):
                    mixes.append(live.version)
            reads[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(10):
        served.promote("acme/support@v1.1.0")
        follower.wait_for("v1.1.0")
        served.rollback("acme/support")
        follower.wait_for("v1.0.0")
    stop.set()
    for t in threads:
        t.join()
    follower.stop()
    assert reads[0] > 0 and mixes == []


def test_a_failing_smoke_check_keeps_the_old_version(served):
    errors = []

    def smoke(candidate):
        assert candidate.version != "v1.1.0", "known inputs give wrong outputs"

    follower = Follower(served, "acme/support@production", smoke_check=smoke, on_error=errors.append)
    served.promote("acme/support@v1.1.0")
    assert follower.refresh() is False
    assert follower.current.version == "v1.0.0"
    assert "v1.1.0 failed the smoke check" in follower.last_error and "v1.0.0 stays live" in follower.last_error
    assert len(errors) == 1
    served.promote("acme/support@v1.1.1")
    assert follower.refresh() is True and follower.current.version == "v1.1.1" and follower.last_error is None


def test_follower_survives_a_corrupt_store_and_recovers(served):
    follower = Follower(served, "acme/support@production")
    served.promote("acme/support@v1.1.0")
    packs = sorted((served.path / "packs").rglob("*.pack"), key=lambda p: p.stat().st_mtime)
    damaged = packs[1]  # the pack of v1.1.0's new tensors
    original = damaged.read_bytes()
    damaged.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    follower.resident.pop("v1.1.0", None)
    assert follower.refresh() is False
    assert follower.current.version == "v1.0.0" and "damaged" in follower.last_error
    damaged.write_bytes(original)
    assert follower.refresh(force=True) is True and follower.current.version == "v1.1.0"


@pytest.mark.parametrize("failing", ["registry.state", "store.load"])
def test_a_follower_tries_a_failed_look_again_without_waiting_for_another_move(served, failing):
    """One read the store refused for a moment (an EIO, a 503, too many open files) while the
    pointer moved: the follower tries again a second later, and reports the failure once."""
    import errno

    owner, name = (served.registry, "state") if failing == "registry.state" else (served, "load")
    real, left = getattr(owner, name), [0]

    def flaky(*args, **kwargs):
        if left[0]:
            left[0] -= 1
            raise OSError(errno.EIO, "transient read error")
        return real(*args, **kwargs)

    setattr(owner, name, flaky)
    errors: list[str] = []
    with Follower(served, "acme/support@production", on_error=errors.append) as follower:
        follower.wait_for("v1.0.0")
        left[0] = 1
        served.promote("acme/support@v1.1.0")
        follower.wait_for("v1.1.0", timeout=5)
        assert follower.last_error is None
    assert len(errors) == 1 and "transient read error" in errors[0]


def test_a_number_pushed_again_by_an_older_release_for_another_base_model_is_refused(tmp_path):
    """The follower learnt v1.1.0's base model while keeping it hot; that number then names a Mistral
    adapter (a store an older release wrote): the base model is known by the version's record."""
    store = Store.init(tmp_path / "store")
    history = adapter_history(layers=2, scale=16)
    versions = (dataclasses.replace(history[0], name="v1.0.0"), dataclasses.replace(history[1], name="v1.1.0"),
                dataclasses.replace(history[3], name="v2.0.0", base_model="mistralai/Mistral-7B-v0.3"))
    for version in versions:
        store.push(write_bundle(version, tmp_path / version.name), f"acme/support@{version.name}")
    store.promote("acme/support@v1.0.0")
    follower = Follower(store, "acme/support@production", keep_newest=2)
    store.delete("acme/support@v1.1.0", reason="bad")
    reuse_deleted_number(store, "acme/support@v2.0.0", "v1.1.0")
    store.promote("acme/support@v1.1.0", force=True, reason="test")
    assert follower.refresh() is False and follower.current.version == "v1.0.0"
    assert "mistralai/Mistral-7B-v0.3" in follower.last_error


def test_a_failure_tried_again_is_heard_once_and_a_new_outage_is_heard_again(served, monkeypatch):
    """A version kept loaded whose bundle cannot be read is tried again and again, and reported
    once; a heartbeat outage that comes back after heartbeats went well is reported again."""
    import errno

    import artifactstore.serving.follower as following
    from artifactstore.errors import CorruptObject

    monkeypatch.setattr(following, "RETRY_FIRST", 0.02)
    monkeypatch.setattr(following, "RETRY_MAX", 0.05)
    newest = served.state("acme/support").sorted_versions()[-1]
    damaged, real_load, loads = served.resolve(f"acme/support@{newest}"), served.load, [0]

    def load(ref, **kwargs):
        if ref == damaged:
            loads[0] += 1
            raise CorruptObject("a chunk is damaged")
        return real_load(ref, **kwargs)

    monkeypatch.setattr(served, "load", load)
    real_write, down = following.write_heartbeat, [False]

    def write_heartbeat(registry, heartbeat):
        if down[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(registry, heartbeat)

    monkeypatch.setattr(following, "write_heartbeat", write_heartbeat)
    errors: list[str] = []
    with Follower(served, "acme/support@production", node="srv-1", heartbeat_interval=0.05, poll_interval=0.02,
                  on_error=errors.append) as follower:
        deadline = time.monotonic() + 10
        while loads[0] < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loads[0] >= 5 and errors == ["acme/support@production: a chunk is damaged"]
        for _ in range(2):  # two outages, with heartbeats written in between
            down[0] = True
            time.sleep(0.3)
            down[0] = False
            time.sleep(0.3)
        assert follower.current.version == "v1.0.0"
    outages = [e for e in errors if "No space left" in e]
    assert len(outages) >= 2, errors


def test_on_error_hears_a_refusal_once_until_the_versions_followed_change(served, tmp_path):
    """One turn of the follow loop at a time: a refusal met again, on a look tried again or on a
    look an unrelated change caused, is not news; the pointer moving back to it is; so is an
    unexpected error once, however often it is tried again."""
    from artifactstore.errors import CorruptObject

    errors: list[str] = []
    follower = Follower(served, "acme/support@production", on_error=errors.append, keep_newest=0)
    real_load, refused = served.load, {"v1.1.0", "v1.1.1"}

    def load(ref, **kwargs):
        if kwargs.get("label", "").split("@")[-1] in refused:
            raise CorruptObject("a chunk is damaged")
        return real_load(ref, **kwargs)

    served.load = load
    served.promote("acme/support@v1.1.0")
    follower._turn(look=True)
    follower._retry_due = 0.0  # a look tried again
    follower._turn(look=True)
    served.pin("acme/support@v1.0.0")  # an unrelated change: an ordinary look
    follower._turn(look=True)
    assert len(errors) == 1 and "v1.1.0 could not be loaded" in errors[0]
    served.promote("acme/support@v1.1.1")
    follower._turn(look=True)
    served.promote("acme/support@v1.1.0")  # back to the version refused before: news again
    follower._retry_due = 0.0
    follower._turn(look=True)
    assert [e.split(": ")[1].split(" ")[0] for e in errors] == ["v1.1.0", "v1.1.1", "v1.1.0"]

    served.load = lambda ref, **kwargs: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    served.promote("acme/support@v1.1.1")
    for _ in range(4):
        follower._retry_due = 0.0
        follower._turn(look=True)
    assert sum("unexpected RuntimeError: CUDA out of memory" in e for e in errors) == 1
    assert follower.current.version == "v1.0.0"


def test_follower_needs_a_pointer(served):
    with pytest.raises(InvalidParameter):
        Follower(served, "acme/support@v1.0.0")
    follower = Follower(served, "acme/support@staging")
    with pytest.raises(InvalidParameter, match="no live version"):
        follower.current


def test_checkout_writes_a_peft_directory(served, tmp_path):
    target = served.checkout("acme/support@production", tmp_path / "adapter")
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((target / "adapter_config.json").read_text())["r"] == 16
    weights = (tmp_path / "bundles" / "v1.0.0" / "adapter_weights" / "adapter_model.safetensors").read_bytes()
    assert (target / "adapter_model.safetensors").read_bytes() == weights
    result = run_cli("checkout", "acme/support@v1.1.0", tmp_path / "cli-adapter", "--store", served.path)
    assert result.returncode == 0, result.stderr
    again = run_cli("checkout", "acme/support@v1.1.0", tmp_path / "cli-adapter", "--store", served.path)
    assert again.returncode == 1 and again.stderr.startswith("error: destination already exists")


def test_load_refuses_malformed_weights_through_the_api(store, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": {"dtype"')
    file_id = store.put(bad).id
    with pytest.raises(InvalidInput, match="safetensors"):
        store.load(file_id)
    assert store.verify().ok


def test_follow_command_prints_each_swap(served):
    server = subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", "acme/support@production",
                               "--store", str(served.path), "--poll-ms", "1", "--probe", PROBE],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(server.stdout.readline())
        assert first["version"] == "v1.0.0" and first["probe"] == float(expected(0).reshape(-1)[0])
        assert "v1.0.0" in json.loads(server.stdout.readline())["resident"]
        served.promote("acme/support@v1.1.0")
        assert json.loads(server.stdout.readline())["version"] == "v1.1.0"
    finally:
        server.stdin.close()
        assert server.wait(timeout=30) == 0, server.stderr.read()


def test_a_follower_keeps_to_its_base_model(served, tmp_path):
    new_base = dataclasses.replace(HISTORY[0], name="v2.0.0", base_model="mistralai/Mistral-7B-Instruct-v0.3",
                                   description="moved to Mistral")
    with Follower(served, "acme/support@production", poll_interval=0.001) as follower:
        served.push(write_bundle(new_base, tmp_path / "bundles" / "v2.0.0"), "acme/support@v2.0.0")
        served.promote("acme/support@v1.1.0")  # the newest version is now for another base model
        follower.wait_for("v1.1.0")
        assert "v2.0.0" not in follower.resident
        assert follower.last_error is None, "a newer major version for another base is no error of this server's"
        served.promote("acme/support@v2.0.0")
        deadline = time.monotonic() + 10
        while "v2.0.0 is for base model" not in (follower.last_error or "") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert follower.current.version == "v1.1.0", "an adapter for another base model never goes live"
        assert "stays live" in follower.last_error and "v2.0.0" not in follower.resident
