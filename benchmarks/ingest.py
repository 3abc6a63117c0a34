"""Ingest benchmark: put of a new ~200 MB adapter, re-put of the same, stored bytes of a history.

Targets (docs/BRIEF): new put >= 1 GB/s on both cores, re-put >= 2 GB/s with zero new bytes,
stored bytes of the demo history within 2% of the unique tensor bytes. As a reference for the
machine's disk, the same adapter is also copied with shutil.copyfile + fsync in the same run.

Usage: python benchmarks/ingest.py [--repeat 3] [--json]
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from safetensors.numpy import save_file

from artifactstore import Store
from artifactstore.demo import adapter_history, lora_tensors, unique_tensor_bytes, write_bundle


def copy_with_fsync(source: Path, dest: Path) -> None:
    shutil.copyfile(source, dest)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def best_of(repeat: int, setup, action) -> float:
    times = []
    for _ in range(repeat):
        state = setup()
        os.sync()
        started = time.perf_counter()
        action(state)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        adapter = work / "adapter_model.safetensors"
        save_file(lora_tensors(range(32), seed=5, rank=40), adapter)  # rank 40 on an 8B model: ~200 MB
        size = adapter.stat().st_size
        os.sync()  # the adapter's own writeback must not compete with the puts' fsyncs
        counter = iter(range(10**6))

        def fresh_store():
            return Store.init(work / f"store{next(counter)}")

        new_put = best_of(args.repeat, fresh_store, lambda s: s.put(adapter))
        store = fresh_store()
        store.put(adapter)
        repeat_put = best_of(args.repeat, lambda: store, lambda s: s.put(adapter))
        assert store.put(adapter).new_bytes == 0
        copy = best_of(args.repeat, lambda: work / f"copy{next(counter)}", lambda d: copy_with_fsync(adapter, d))

        history = adapter_history()
        history_store = fresh_store()
        for version in history:
            history_store.put(write_bundle(version, work / "bundles" / version.name))
        stored = history_store.stats().stored_bytes
        ideal = unique_tensor_bytes(history)
        figures = {
            "adapter_bytes": size,
            "new_put_gbps": size / new_put / 1e9,
            "repeat_put_gbps": size / repeat_put / 1e9,
            "copy_fsync_gbps": size / copy / 1e9,
            "new_put_vs_copy": copy / new_put,
            "history_stored_bytes": stored,
            "history_ideal_bytes": ideal,
            "history_stored_over_ideal": stored / ideal,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"adapter: {size / 1e6:.0f} MB (bf16 LoRA, rank 40, 8B model)")
    print(f"put, new adapter:       {figures['new_put_gbps']:.2f} GB/s   (target >= 1)")
    print(f"put, same adapter:      {figures['repeat_put_gbps']:.2f} GB/s   (target >= 2, 0 new bytes)")
    print(f"copyfile + fsync:       {figures['copy_fsync_gbps']:.2f} GB/s   (this disk; "
          f"new put / copy = {figures['new_put_vs_copy']:.2f})")
    print(f"history of {len(history)} versions: stored {stored / 2**20:.1f} MiB, ideal {ideal / 2**20:.1f} MiB, "
          f"ratio {figures['history_stored_over_ideal']:.4f} (target <= 1.02)")


if __name__ == "__main__":
    main()
