"""Load benchmark: Store.load against safetensors' own loaders on the same ~210 MB adapter.

The adapter is demo.lora_tensors(range(32), seed=5, rank=40): LoRA on every linear layer of an
8B model, about 210 MB; "half" is the same adapter with the upper half of the layers retrained
(the v1.2.0 shape of demo.adapter_history), stored after it, so that its unchanged tensors begin
and end in new chunks. Both sides read page-cache-warm copies: safetensors its files, ours the
store's packs. Each repetition runs every side once, in turn; figures are medians with their
ranges, beside the load average, and ratios (their time / ours: above 1, ours is faster) are
taken repetition by repetition.

What is timed is the load plus reading one byte of every 4 KiB page of every tensor, i.e. until
the bytes are in memory: safetensors.torch maps the file and reads it lazily, on first touch.

- warm: the same Store loads again (it remembers headers and how it laid the file out; it
  still maps, reads and checks every chunk); fresh: a new Store for every load.
- numpy: safetensors.numpy.load_file cannot return bf16, so both sides load an F16 copy of the
  same tensors (same size, same layout) instead: the same bytes to move, a fair race.
- torch (when installed): the bf16 file, safetensors.torch.load_file against framework="torch".
- --device cuda (torch with CUDA): load_file(device="cuda") against device="cuda", each followed
  by torch.cuda.synchronize().

- --from-disk: before the races, every file of both sides leaves the page cache, so that the
  pages both sides then warm are read from the disk, as on a serving machine after a reboot.
  Without it each side warms the pages its writer left: safetensors' files written through the
  page cache, the store's packs written around it by a put (direct I/O) and read back by the first
  load. On the VM these figures come from, pages read from the disk are slower to fault in than
  pages a write left, whatever their folio sizes, so the two runs differ (docs/performance.md).

Ours checks every chunk against its pack's guard (xxh3); safetensors checks nothing. The
"+ xxh3" ratio adds the cheapest way to get the same guarantee with the library (xxh3 of the
whole mapped file after loading it). safetensors.numpy allocates each tensor with malloc, so its
time depends on the process's heap: compare figures from one run only.

Usage: python benchmarks/load.py [--repeat 7] [--device cpu|cuda] [--from-disk] [--json FILE]
"""

import argparse
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import safetensors.numpy
import xxhash
from interleave import describe, interleaved, load_average, rate, ratios, write_json

from artifactstore import Store
from artifactstore.demo import lora_tensors

try:
    import safetensors.torch
    import torch
except ImportError:  # torch is optional: its races are skipped
    torch = None


def resident(load: Callable[[], dict], as_bytes: Callable) -> Callable[[object], dict]:
    """The load, then one byte read from every page of every tensor (``as_bytes``: flat uint8 view)."""
    def load_and_touch(_):
        tensors = load()
        for tensor in tensors.values():
            as_bytes(tensor)[::4096].sum()
        return tensors
    return load_and_touch


def then_hash_file(load: Callable[[object], object], path: Path) -> Callable[[object], object]:
    """The library's load followed by an xxh3 check of the whole file."""
    def load_and_hash(state):
        tensors = load(state)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            xxhash.xxh3_64_intdigest(mapped)
        return tensors
    return load_and_hash


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (written back first: dirty pages stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def numpy_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


def torch_bytes(tensor) -> "torch.Tensor":
    return tensor.reshape(-1).view(torch.uint8)


def cuda_synchronized(load: Callable[[], object]) -> Callable[[object], object]:
    def load_and_wait(_):
        tensors = load()
        torch.cuda.synchronize()
        return tensors
    return load_and_wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--from-disk", action="store_true",
                        help="evict both sides' files from the page cache first (see above)")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = parser.parse_args()
    notes = []
    work = Path(tempfile.mkdtemp(prefix="load-bench-"))
    try:
        original = lora_tensors(range(32), seed=5, rank=40)
        files = {"full": original, "half": {**original, **lora_tensors(range(16, 32), seed=6, rank=40)}}
        store = Store.init(work / "store")
        paths: dict[tuple[str, str], Path] = {}
        ids: dict[tuple[str, str], str] = {}
        for shape, tensors in files.items():
            for kind, converted in (("bf16", tensors), ("f16", {n: t.astype(np.float16) for n, t in tensors.items()})):
                paths[shape, kind] = work / f"{shape}_{kind}.safetensors"
                safetensors.numpy.save_file(converted, paths[shape, kind])
                ids[shape, kind] = store.put(paths[shape, kind]).id
        del original, files
        if args.from_disk:
            for path in [*paths.values(), *(store.path / "packs").rglob("*.pack")]:
                evict(path)

        def ours(shape: str, kind: str, fresh: bool, **options) -> Callable[[], dict]:
            return lambda: (Store(store.path) if fresh else store).load(ids[shape, kind], **options)

        races: dict[str, tuple[Path, Callable, Callable]] = {}
        for shape in ("full", "half"):
            for fresh in (False, True):
                label = f"{shape} {'fresh' if fresh else 'warm'}"
                races[f"numpy F16, {label}"] = (
                    paths[shape, "f16"],
                    resident(lambda shape=shape: safetensors.numpy.load_file(paths[shape, "f16"]), numpy_bytes),
                    resident(ours(shape, "f16", fresh), numpy_bytes))
                if torch is not None:
                    races[f"torch cpu BF16, {label}"] = (
                        paths[shape, "bf16"],
                        resident(lambda shape=shape: safetensors.torch.load_file(paths[shape, "bf16"]), torch_bytes),
                        resident(ours(shape, "bf16", fresh, framework="torch"), torch_bytes))
        if torch is None:
            notes.append("torch not installed: torch comparisons skipped")
        if args.device == "cuda":
            if torch is None or not torch.cuda.is_available():
                notes.append("--device cuda: torch with CUDA is not available here, skipped")
            else:
                bf16 = paths["full", "bf16"]
                races["torch cuda BF16, full warm"] = (
                    bf16, cuda_synchronized(lambda: safetensors.torch.load_file(bf16, device="cuda")),
                    cuda_synchronized(ours("full", "bf16", False, framework="torch", device="cuda")))

        figures: dict = {"adapter_bytes": paths["full", "bf16"].stat().st_size, "repeat": args.repeat,
                         "from_disk": args.from_disk,
                         "load_average": [load_average()], "results": {}, "notes": notes}
        for name, (path, theirs, ours_load) in races.items():
            theirs(None), ours_load(None)  # the page cache, the allocators and the store's loader warm
            times = interleaved(args.repeat, {"theirs": (lambda: None, theirs), "ours": (lambda: None, ours_load),
                                              "theirs + xxh3": (lambda: None, then_hash_file(theirs, path))})
            size = path.stat().st_size
            figures["results"][name] = {
                "theirs_gbps": rate(size, times["theirs"]),
                "ours_gbps": rate(size, times["ours"]),
                "ratio": ratios(times["theirs"], times["ours"]),
                "ratio_same_guarantee": ratios(times["theirs + xxh3"], times["ours"]),
                "load_average": load_average(),
            }
        figures["load_average"].append(load_average())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.json, figures)
    print(f"adapter: {figures['adapter_bytes'] / 1e6:.0f} MB (LoRA rank 40, 8B model), page cache warm"
          f"{' (pages read from the disk)' if args.from_disk else ''}; "
          f"median (range) of {args.repeat}; load average {figures['load_average'][0]} -> "
          f"{figures['load_average'][1]}")
    for name, r in figures["results"].items():
        print(f"{name:26} safetensors {describe(r['theirs_gbps'], ' GB/s')}  ours {describe(r['ours_gbps'], ' GB/s')}"
              f"  theirs/ours {describe(r['ratio'])}  with xxh3 {describe(r['ratio_same_guarantee'])}"
              f"  (load {r['load_average']})")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
