"""Ingest benchmark: put of a ~210 MB adapter against shutil.copyfile + fsync of the same file.

Each repetition runs, in turn and after an `os.sync()`:

- copy:  shutil.copyfile + fsync of the adapter (the peer: what writing it durably costs here);
- new:   a put of the adapter into an empty store (every byte new);
- half:  a put of a half-retrained adapter (the upper half of the layers changed, the v1.2.0
         shape of demo.adapter_history) into a store that holds the original (about half new);
- again: a re-put of the adapter into a store that holds it (0 new bytes).

Ratios are the copy's time over the put's, repetition by repetition (above 1: the put is
faster); every figure is a median with its range, beside the load average. Targets (issue 13):
new / copy >= 1, re-put >= 2.5 GB/s. Then the stored bytes of the demo history against the
unique tensor bytes (target <= 1.02).

Usage: python benchmarks/ingest.py [--repeat 5] [--json FILE]
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from interleave import describe, interleaved, load_average, rate, ratios, spread, write_json
from safetensors.numpy import save_file

from artifactstore import Store
from artifactstore.demo import adapter_history, lora_tensors, unique_tensor_bytes, write_bundle


def copy_with_fsync(source: Path, dest: Path) -> None:
    shutil.copyfile(source, dest)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        original = lora_tensors(range(32), seed=5, rank=40)  # rank 40 on an 8B model: ~210 MB
        adapter, retrained = work / "adapter_model.safetensors", work / "retrained.safetensors"
        save_file(original, adapter)
        save_file({**original, **lora_tensors(range(16, 32), seed=6, rank=40)}, retrained)
        del original
        size = adapter.stat().st_size
        os.sync()  # the adapters' own writeback must not compete with the puts' fsyncs
        counter = iter(range(10**6))

        def fresh_store(name: str = "store") -> Store:
            return Store.init(work / f"{name}{next(counter)}")

        def holding_adapter(name: str = "store") -> Store:
            store = fresh_store(name)
            store.put(adapter)
            return store

        def cleanup() -> None:  # stores of earlier repetitions (not the re-put's): the disk is not ours alone
            for old in work.glob("store*"):
                shutil.rmtree(old)
            for old in work.glob("copy*"):
                old.unlink()

        repeated = holding_adapter("repeated")
        load_before = load_average()
        cpu: dict[str, list[float]] = {}
        times = interleaved(args.repeat, {
            "copy": (lambda: work / f"copy{next(counter)}", lambda dest: copy_with_fsync(adapter, dest)),
            "new": (lambda: (cleanup(), fresh_store())[1], lambda store: store.put(adapter)),
            "half": (holding_adapter, lambda store: store.put(retrained)),
            "again": (lambda: repeated, lambda store: store.put(adapter)),
        }, before_each=os.sync, cpu=cpu)
        load_after = load_average()
        assert repeated.put(adapter).new_bytes == 0
        half_new = holding_adapter().put(retrained).new_bytes

        history = adapter_history()
        history_store = fresh_store()
        for version in history:
            history_store.put(write_bundle(version, work / "bundles" / version.name))
        stored = history_store.stats().stored_bytes
        ideal = unique_tensor_bytes(history)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "adapter_bytes": size,
        "repeat": args.repeat,
        "load_average": [load_before, load_after],
        "gbps": {name: rate(size, seconds) for name, seconds in times.items()},
        "copy_over_put": {name: ratios(times["copy"], times[name]) for name in ("new", "half", "again")},
        "cpu_seconds": {name: spread(seconds) for name, seconds in cpu.items()},
        "half_new_bytes": half_new,
        "history_stored_bytes": stored,
        "history_ideal_bytes": ideal,
        "history_stored_over_ideal": stored / ideal,
    }
    write_json(args.json, figures)
    gbps, over = figures["gbps"], figures["copy_over_put"]
    print(f"adapter: {size / 1e6:.0f} MB (bf16 LoRA, rank 40, 8B model); median (range) of {args.repeat}, "
          f"load average {load_before} -> {load_after}")
    print(f"copyfile + fsync:          {describe(gbps['copy'], ' GB/s')}")
    print(f"put, new adapter:          {describe(gbps['new'], ' GB/s')}   copy time / put time "
          f"{describe(over['new'])} (target >= 1)")
    print(f"put, half retrained:       {describe(gbps['half'], ' GB/s')}   copy time / put time "
          f"{describe(over['half'])} ({half_new / 1e6:.0f} MB new)")
    print(f"put, same adapter again:   {describe(gbps['again'], ' GB/s')}   (target >= 2.5 GB/s, 0 new bytes)")
    print("CPU of this process per side (every thread; the disk's own work is not in it): "
          + ", ".join(f"{name} {describe({k: v * 1e3 for k, v in figures['cpu_seconds'][name].items()}, ' ms', 0)}"
                      for name in ("copy", "new", "half", "again")))
    print(f"history of {len(history)} versions: stored {stored / 2**20:.1f} MiB, ideal {ideal / 2**20:.1f} MiB, "
          f"ratio {figures['history_stored_over_ideal']:.4f} (target <= 1.02)")


if __name__ == "__main__":
    main()
