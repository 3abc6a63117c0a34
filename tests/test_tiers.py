"""Two tiers: tiering both ways, cold-only reads, pulls, verify and repair; on a directory and on S3."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import guards_match_hot_packs, run_cli, snapshot

from artifactstore import InvalidParameter, Store
from artifactstore.backends.local import LocalBackend
from artifactstore.content.pack import pack_id_from_key
from artifactstore.demo import adapter_history, write_bundle

HISTORY = adapter_history(layers=4, scale=8)  # tiny tensors, 5 versions


@pytest.fixture(params=["directory", "s3"])
def cold_url(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "cold")
    return request.getfixturevalue("s3_bucket") + "/store"


@pytest.fixture
def bundles(tmp_path):
    return {v.name: write_bundle(v, tmp_path / "bundles" / v.name) for v in HISTORY}


def tiered_store(tmp_path, cold_url, bundles, keep_hot=1) -> Store:
    store = Store.init(tmp_path / "store", cold=cold_url, keep_hot=keep_hot)
    for name, bundle in bundles.items():
        store.push(bundle, f"acme/support@{name}")
    store.promote("acme/support@v1.0.0")
    return store


def hot_packs(store) -> set:
    return {p for p in map(pack_id_from_key, store.backend.list("packs")) if p}


def cold_packs(store) -> set:
    return {p for p in map(pack_id_from_key, store.cold.list("packs")) if p}


def test_tier_moves_everything_but_the_hot_set_and_back(tmp_path, cold_url, bundles):
    store = tiered_store(tmp_path, cold_url, bundles)
    indexed = set(store.index.pack_entries)
    dry = store.tier(dry_run=True)
    assert hot_packs(store) == indexed and dry.evicted
    report = store.tier()
    assert report.hot_versions == ["acme/support@v1.0.0", "acme/support@v1.2.1"]
    assert (report.evicted, report.bytes_to_cold) == (dry.evicted, dry.bytes_to_cold)
    assert indexed <= hot_packs(store) | cold_packs(store), "no pack may be lost"
    assert len(hot_packs(store)) < len(indexed)
    assert guards_match_hot_packs(store)
    stats = Store(store.path).stats()
    assert stats.cold_pack_bytes > 0 and stats.hot_pack_bytes > 0
    assert stats.stored_bytes >= stats.hot_pack_bytes + stats.cold_pack_bytes
    again = Store(store.path).tier()
    assert not again.evicted and not again.fetched_chunks, "tiering is idempotent"

    cold_only = Store(store.path)
    cold_only.get(cold_only.resolve("acme/support@v1.1.0"), tmp_path / "from-cold")
    assert snapshot(tmp_path / "from-cold") == snapshot(bundles["v1.1.0"])
    assert cold_only.verify().ok

    cold_only.promote("acme/support@v1.1.0")
    back = cold_only.tier()
    assert back.fetched_chunks and back.bytes_from_cold > 0
    assert "acme/support@v1.1.0" in back.hot_versions
    assert guards_match_hot_packs(cold_only)


def test_pull_transfers_only_missing_chunks(tmp_path, cold_url, bundles):
    store = tiered_store(tmp_path, cold_url, bundles)
    store.tier()
    first = store.pull("acme/support@v1.1.0")
    assert 0 < first.transferred_bytes < first.logical_bytes
    repeat = Store(store.path).pull("acme/support@v1.1.0")
    assert repeat.transferred_bytes == 0 and repeat.chunks_fetched == 0
    # v1.1.1 has v1.1.0's weights: nothing left to transfer for its tensors
    patch = Store(store.path).pull("acme/support@v1.1.1")
    assert patch.transferred_bytes < 4096
    weights_only = Store(store.path)
    weights_only.content.cold = None  # the hot tier alone now serves v1.1.0
    weights_only.get(weights_only.resolve("acme/support@v1.1.0"), tmp_path / "hot-only")
    assert snapshot(tmp_path / "hot-only") == snapshot(bundles["v1.1.0"])
    assert Store(store.path).verify().ok


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def test_verify_repairs_a_damaged_copy_from_the_other_tier(tmp_path, cold_url, bundles):
    store = tiered_store(tmp_path, cold_url, bundles, keep_hot=5)
    store.tier()
    key = next(k for k in store.backend.list("packs") if pack_id_from_key(k))
    data = store.backend.read(key)
    store.cold.write(key, data)  # a second copy in cold
    store.backend.write(key, _flip_byte(data, 10))
    report = Store(store.path).verify(tier="hot")
    assert not report.ok and any(key in p for p in report.problems)
    repaired = Store(store.path).verify(tier="hot", repair=True)
    assert repaired.ok and repaired.repaired == [f"hot {key}: restored from the cold tier"]
    assert store.backend.read(key) == data
    store.cold.write(key, _flip_byte(data, 20))
    assert Store(store.path).verify(repair=True).repaired == [f"cold {key}: restored from the hot tier"]
    store.cold.write(key, _flip_byte(data, 20))
    store.backend.write(key, _flip_byte(data, 30))
    broken = Store(store.path).verify(repair=True)
    assert not broken.ok and any("no sound copy" in p for p in broken.problems)


def test_kill_during_tier_never_loses_a_pack(tmp_path, bundles):
    store = tiered_store(tmp_path, str(tmp_path / "cold"), bundles)
    indexed = set(store.index.pack_entries)
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "artifactstore", "tier", "--store", str(store.path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.25 + 0.05 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert indexed <= hot_packs(store) | cold_packs(store)
        assert Store(store.path).verify().ok
    Store(store.path).tier()
    assert not Store(store.path).tier().evicted
    assert indexed <= hot_packs(store) | cold_packs(store)


def test_sampled_verify_and_config(tmp_path, cold_url, bundles, monkeypatch):
    store = tiered_store(tmp_path, cold_url, bundles)
    store.tier()
    assert Store(store.path).verify(tier="cold", sample=50).ok
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    shown = run_cli("config", "--store", store.path, "--json")
    config = json.loads(shown.stdout)
    assert config["keep_hot"] == 1 and config["cold"] == cold_url
    assert "very-secret-value" not in shown.stdout and config["environment"]["AWS_SECRET_ACCESS_KEY"] == "****"
    result = run_cli("tier", "--dry-run", "--store", store.path, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["dry_run"] is True


def test_tier_without_a_cold_tier_is_a_clear_error(store):
    result = run_cli("tier", "--store", store.path)
    assert result.returncode == 1 and "has no cold tier" in result.stderr


def test_a_cold_tier_is_a_place_of_its_own(tmp_path, cold_url, bundles):
    """A cold tier that is the store, inside it, another store, or another store's cold tier would
    see its packs deleted by the other's gc, or by this one's tier: each is refused, with nothing
    written; a cold tier given up loses its mark and can serve another store."""
    for cold in (tmp_path / "s", tmp_path / "s" / "cold", tmp_path, ""):
        result = run_cli("init", str(tmp_path / "s"), "--cold", str(cold))
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and "error: the cold tier" in result.stderr
        assert not (tmp_path / "s").exists()
    (tmp_path / "a-file").touch()
    result = run_cli("init", str(tmp_path / "a-file" / "s"), "--cold", str(tmp_path / "cold-for-nothing"))
    assert result.returncode == 1 and result.stderr == (f"error: cannot make the store's directory "
                                                        f"{tmp_path}/a-file/s: {tmp_path}/a-file is not a directory\n")
    assert not (tmp_path / "cold-for-nothing").exists()
    other = Store.init(tmp_path / "other")
    result = run_cli("init", str(tmp_path / "s"), "--cold", str(other.path))
    assert result.returncode == 1 and "is a store: a cold tier must be a place of its own" in result.stderr

    store = tiered_store(tmp_path, cold_url, bundles)
    store.tier()
    result = run_cli("init", str(tmp_path / "second"), "--cold", cold_url)
    assert result.returncode == 1 and "is the cold tier of the store at" in result.stderr
    assert not (tmp_path / "second").exists()
    second = Store.init(tmp_path / "second")
    before = snapshot(tmp_path / "second")
    result = run_cli("config", "set", "cold", cold_url, "--store", str(second.path))
    assert result.returncode == 1 and snapshot(tmp_path / "second") == before
    for cold in ("", str(second.path / "packs")):
        assert run_cli("config", "set", "cold", cold, "--store", str(second.path)).returncode == 1

    empty = Store.init(tmp_path / "third", cold=str(tmp_path / "spare"))
    empty.content.change_setting("cold", None, actor="ops", reason="not needed", at="2026-11-27T00:00:00Z")
    Store.init(tmp_path / "fourth", cold=str(tmp_path / "spare"))  # given up: free again
    assert Store(store.path).verify().ok


def test_a_cold_tier_claim_holds_across_spellings_machines_and_failures(tmp_path):
    """The store itself named by a local URL; the same place spelled anew (its claim stays); a store
    at the same path on another machine (a path is no identity); an init that fails after its claim
    (released)."""
    for cold in (f"local://{tmp_path / 's'}", f"local://{tmp_path / 's' / 'inside'}"):
        result = run_cli("init", str(tmp_path / "s"), "--cold", cold)
        assert result.returncode == 1 and "must be a directory of its own" in result.stderr
    store = Store.init(tmp_path / "a", cold=str(tmp_path / "cold"))
    store.content.change_setting("cold", f"local://{tmp_path / 'cold'}", actor="ops", reason="as a URL",
                                 at="2026-11-27T00:00:00Z")
    with pytest.raises(InvalidParameter, match="is the cold tier of the store at .*/a on "):
        Store.init(tmp_path / "b", cold=str(tmp_path / "cold"))
    (tmp_path / "a").rename(tmp_path / "a-on-the-first-machine")  # the second machine's store at that path
    with pytest.raises(InvalidParameter, match="is the cold tier of the store at"):
        Store.init(tmp_path / "a", cold=str(tmp_path / "cold"))
    assert not (tmp_path / "a").exists()

    real_write = LocalBackend.write

    def config_write_fails(self, key, data):
        if key == "artifactstore.json":
            raise OSError(28, "No space left on device")
        return real_write(self, key, data)

    with pytest.MonkeyPatch.context() as failing:
        failing.setattr(LocalBackend, "write", config_write_fails)
        with pytest.raises(OSError, match="No space"):
            Store.init(tmp_path / "c", cold=str(tmp_path / "cold-c"))
    assert not (tmp_path / "cold-c" / "cold-tier.json").exists()
    Store.init(tmp_path / "d", cold=str(tmp_path / "cold-c"))
