"""Load benchmark: Store.load against safetensors' own loaders on the same ~200 MB adapter.

The adapter is demo.lora_tensors(range(32), seed=5, rank=40): LoRA on every linear layer of an
8B model, about 210 MB. Both sides read a page-cache-warm copy (the hot tier): safetensors from
its file, ours from the store's packs. Each figure is the best of --repeat runs, the two sides
alternating within one run of this script. Target: ours / theirs >= 1.

What is timed is the load plus reading one byte of every 4 KiB page of every tensor, i.e. until
the bytes are in memory: safetensors.torch maps the file and reads it lazily, on first touch.

- numpy: safetensors.numpy.load_file cannot return bf16, so both sides load an F16 copy of the
  same tensors (same size, same layout) instead: the same bytes to move, a fair race.
- torch (when installed): the bf16 file, safetensors.torch.load_file against framework="torch".
- --device cuda (torch with CUDA): load_file(device="cuda") against device="cuda", each followed
  by torch.cuda.synchronize().

Ours maps the packs (tensors are views, as safetensors.torch's are) and checks every chunk
against its pack's guard (xxh3) on the way; safetensors checks nothing. The line
"safetensors + xxh3" adds the cheapest way to get the same guarantee with the library (xxh3 of
the whole mapped file after loading it), so that both sides of that ratio deliver checked bytes.
safetensors.numpy allocates each tensor with malloc, so its time depends on the process's heap
(35 to 160 ms for the same call here): compare figures from one run only.

Usage: python benchmarks/load.py [--repeat 7] [--device cpu|cuda] [--json]
"""

import argparse
import json
import mmap
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy
import xxhash

from artifactstore import Store
from artifactstore.demo import lora_tensors

try:
    import safetensors.torch
    import torch
except ImportError:  # torch is optional: its races are skipped
    torch = None


def elapsed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    del result  # freeing the tensors is no part of a load: only once the clock is read
    return seconds


def race(repeat: int, theirs: Callable[[], object], ours: Callable[[], object]) -> tuple[float, float]:
    """Best seconds of each side; the sides alternate so that both see the same machine."""
    theirs(), ours()  # warm the page cache and the allocators
    times = [(elapsed(theirs), elapsed(ours)) for _ in range(repeat)]
    return min(t for t, _ in times), min(o for _, o in times)


def resident(load: Callable[[], dict], as_bytes: Callable) -> Callable[[], dict]:
    """The load, then one byte read from every page of every tensor (``as_bytes``: flat uint8 view)."""
    def load_and_touch():
        tensors = load()
        for tensor in tensors.values():
            as_bytes(tensor)[::4096].sum()
        return tensors
    return load_and_touch


def then_hash_file(load: Callable[[], object], path: Path) -> Callable[[], object]:
    """The library's load followed by an xxh3 check of the whole file."""
    def load_and_hash():
        tensors = load()
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            xxhash.xxh3_64_intdigest(mapped)
        return tensors
    return load_and_hash


def numpy_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


def torch_bytes(tensor) -> "torch.Tensor":
    return tensor.reshape(-1).view(torch.uint8)


def cuda_synchronized(load: Callable[[], object]) -> Callable[[], object]:
    def load_and_wait():
        tensors = load()
        torch.cuda.synchronize()
        return tensors
    return load_and_wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    notes = []
    work = Path(tempfile.mkdtemp(prefix="load-bench-"))
    try:
        tensors = lora_tensors(range(32), seed=5, rank=40)
        bf16, f16 = work / "adapter_bf16.safetensors", work / "adapter_f16.safetensors"
        safetensors.numpy.save_file(tensors, bf16)
        safetensors.numpy.save_file({name: t.astype(np.float16) for name, t in tensors.items()}, f16)
        del tensors
        store = Store.init(work / "store")
        bf16_id, f16_id = store.put(bf16).id, store.put(f16).id

        races = {"numpy F16": (f16, resident(lambda: safetensors.numpy.load_file(f16), numpy_bytes),
                               resident(lambda: store.load(f16_id), numpy_bytes))}
        if torch is None:
            notes.append("torch not installed: torch comparisons skipped")
        else:
            races["torch cpu BF16"] = (bf16, resident(lambda: safetensors.torch.load_file(bf16), torch_bytes),
                                       resident(lambda: store.load(bf16_id, framework="torch"), torch_bytes))
        if args.device == "cuda":
            if torch is None or not torch.cuda.is_available():
                notes.append("--device cuda: torch with CUDA is not available here, skipped")
            else:
                races["torch cuda BF16"] = (
                    bf16, cuda_synchronized(lambda: safetensors.torch.load_file(bf16, device="cuda")),
                    cuda_synchronized(lambda: store.load(bf16_id, framework="torch", device="cuda")))

        figures = {"adapter_bytes": bf16.stat().st_size, "repeat": args.repeat, "results": {}, "notes": notes}
        for name, (path, theirs, ours) in races.items():
            size = path.stat().st_size
            theirs_s, ours_s = race(args.repeat, theirs, ours)
            theirs_checked_s, ours_again_s = race(args.repeat, then_hash_file(theirs, path), ours)
            best_ours = min(ours_s, ours_again_s)
            figures["results"][name] = {
                "theirs_gbps": size / theirs_s / 1e9,
                "ours_gbps": size / best_ours / 1e9,
                "ratio": theirs_s / best_ours,
                "theirs_plus_xxh3_gbps": size / theirs_checked_s / 1e9,
                "ratio_same_guarantee": theirs_checked_s / best_ours,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"adapter: {figures['adapter_bytes'] / 1e6:.0f} MB (LoRA rank 40, 8B model), best of {args.repeat}, "
          f"page cache warm")
    for name, r in figures["results"].items():
        print(f"{name:16} safetensors {r['theirs_gbps']:6.2f} GB/s   ours {r['ours_gbps']:6.2f} GB/s   "
              f"ours/theirs {r['ratio']:.2f} (target >= 1)")
        print(f"{'':16} safetensors + xxh3 of the file {r['theirs_plus_xxh3_gbps']:6.2f} GB/s   "
              f"ours/that {r['ratio_same_guarantee']:.2f}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
