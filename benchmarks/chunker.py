"""Chunking throughput: artifactstore.chunking.cut against pyfastcdc on weights-like data.

Both run on the same bytes in the same process, alternately, best of several
repetitions; their cut points must be identical.

    python benchmarks/chunker.py [--size-mib 256] [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyfastcdc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from artifactstore.content import chunking

PARAM_SETS = {
    "store default (16K/64K/256K)": chunking.DEFAULT_PARAMS,
    "avg 16K (4K/16K/64K)": chunking.ChunkerParams(min_size=4096, avg_size=16384, max_size=65536),
    "avg 1M (256K/1M/4M)": chunking.ChunkerParams(min_size=256 << 10, avg_size=1 << 20, max_size=4 << 20),
}


def to_bf16(values: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (as uint16) of float32 values, truncated."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def weights_like(size: int, seed: int = 0) -> np.ndarray:
    """`size` bytes laid out like a bf16 transformer checkpoint in safetensors format.

    Per layer: attention and MLP matrices of N(0, 0.02) values, RMS-norm weights
    near 1 and zero biases, the last tensor cut short to fit.
    """
    rng = np.random.default_rng(seed)
    hidden, ffn = 1024, 4096
    layer = [
        ("attn.q.weight", (hidden, hidden), "normal"), ("attn.k.weight", (hidden, hidden), "normal"),
        ("attn.v.weight", (hidden, hidden), "normal"), ("attn.o.weight", (hidden, hidden), "normal"),
        ("attn.o.bias", (hidden,), "zeros"), ("norm1.weight", (hidden,), "ones"),
        ("mlp.up.weight", (ffn, hidden), "normal"), ("mlp.down.weight", (hidden, ffn), "normal"),
        ("mlp.down.bias", (hidden,), "zeros"), ("norm2.weight", (hidden,), "ones"),
    ]
    tensors, header, offset, index = [], {}, 0, 0
    while offset < size:
        for name, shape, kind in layer:
            nbytes = 2 * int(np.prod(shape))
            tensors.append((shape, kind))
            header[f"layers.{index}.{name}"] = {
                "dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        index += 1
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    out = np.zeros(size, dtype=np.uint8)
    prefix = struct.pack("<Q", len(header_bytes)) + header_bytes
    position = min(len(prefix), size)
    out[:position] = np.frombuffer(prefix[:position], dtype=np.uint8)
    for shape, kind in tensors:
        if position >= size:
            break
        count = min(int(np.prod(shape)), (size - position + 1) // 2)
        if kind == "normal":
            values = to_bf16(rng.standard_normal(count, dtype=np.float32) * np.float32(0.02))
        elif kind == "ones":
            values = to_bf16(1 + rng.standard_normal(count, dtype=np.float32) * np.float32(0.05))
        else:
            values = np.zeros(count, dtype=np.uint16)
        raw = values.view(np.uint8)[: size - position]
        out[position: position + len(raw)] = raw
        position += len(raw)
    return out


def timed(run: Callable[[], list[int]]) -> tuple[float, list[int]]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def measure(data: np.ndarray, params: chunking.ChunkerParams, repeat: int) -> dict:
    ours_time = ours_parallel_time = theirs_time = float("inf")
    reference = pyfastcdc.FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size,
                                  normalized_chunking=params.normalization, seed=params.seed)
    buffer = memoryview(data).cast("B")
    # Alternate the two so that a noisy neighbour hits both alike.
    for _ in range(repeat):
        elapsed, ours = timed(lambda: chunking.cut(data, **params.as_kwargs(), threads=1))
        ours_time = min(ours_time, elapsed)
        elapsed, ours_parallel = timed(lambda: chunking.cut(data, **params.as_kwargs(), threads=2))
        ours_parallel_time = min(ours_parallel_time, elapsed)
        elapsed, theirs = timed(lambda: [chunk.length for chunk in reference.cut_buf(buffer)])
        theirs_time = min(theirs_time, elapsed)
    if not ours == ours_parallel == theirs:
        raise AssertionError(f"cut points differ from pyfastcdc for {params}")
    return {
        "params": params.as_kwargs(),
        "chunks": len(ours),
        "identical": True,
        "ours_gbps": len(data) / ours_time / 1e9,
        "pyfastcdc_gbps": len(data) / theirs_time / 1e9,
        "ratio": theirs_time / ours_time,
        "ours_2_threads_gbps": len(data) / ours_parallel_time / 1e9,
        "ratio_2_threads": theirs_time / ours_parallel_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="data size in MiB (default 256)")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions, best of (default 7)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()

    data = weights_like(args.size_mib << 20)
    results = {label: measure(data, params, args.repeat) for label, params in PARAM_SETS.items()}
    if args.json:
        print(json.dumps({"size_bytes": len(data), "repeat": args.repeat, "results": results}, indent=1))
        return
    print(f"{args.size_mib} MiB of bf16 weights-like data, best of {args.repeat}; cut points identical "
          f"(ours on 1 and 2 threads, pyfastcdc)")
    for label, r in results.items():
        print(f"{label:30} ours {r['ours_gbps']:5.2f} GB/s ({r['ratio']:.2f}x)   "
              f"ours 2 threads {r['ours_2_threads_gbps']:5.2f} GB/s ({r['ratio_2_threads']:.2f}x)   "
              f"pyfastcdc {r['pyfastcdc_gbps']:5.2f} GB/s   ({r['chunks']} chunks)")


if __name__ == "__main__":
    main()
