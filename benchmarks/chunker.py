"""Chunking throughput: artifactstore.chunking.cut against pyfastcdc on weights-like data.

Both run on the same bytes in the same process, interleaved within every repetition: ours with
each of the native scan's two loops on one thread, ours on two threads with the loop the
calibration chose for this CPU, and pyfastcdc. Figures are medians with ranges; ratios
("ours / pyfastcdc", above 1: ours is faster) are taken repetition by repetition. Cut points
must be identical.

    python benchmarks/chunker.py [--size-mib 256] [--repeat 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pyfastcdc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from interleave import describe, interleaved, load_average, rate, ratios, write_json  # noqa: E402

from artifactstore.content import chunking  # noqa: E402

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


def measure(data: np.ndarray, params: chunking.ChunkerParams, repeat: int) -> dict:
    """Ours (each loop, one thread; the chosen loop on two threads) and pyfastcdc, interleaved."""
    reference = pyfastcdc.FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size,
                                  normalized_chunking=params.normalization, seed=params.seed)
    buffer = memoryview(data).cast("B")
    results: dict[str, list[int]] = {}

    def ours(two_lanes: bool | None, threads: int):
        def run(_):
            chunking.TWO_LANES = two_lanes
            results[f"{two_lanes} {threads}"] = chunking.cut(data, **params.as_kwargs(), threads=threads)
        return run

    def theirs(_):
        results["pyfastcdc"] = [chunk.length for chunk in reference.cut_buf(buffer)]

    times = interleaved(repeat, {
        "two lanes, 1 thread": (lambda: None, ours(True, 1)),
        "one lane, 1 thread": (lambda: None, ours(False, 1)),
        "chosen loop, 2 threads": (lambda: None, ours(None, 2)),
        "pyfastcdc": (lambda: None, theirs),
    })
    chunking.TWO_LANES = None
    if len({tuple(lengths) for lengths in results.values()}) != 1:
        raise AssertionError(f"cut points differ from pyfastcdc for {params}")
    return {
        "params": params.as_kwargs(),
        "chunks": len(results["pyfastcdc"]),
        "identical": True,
        "gbps": {name: rate(len(data), seconds) for name, seconds in times.items()},
        "pyfastcdc_over_ours": {name: ratios(times["pyfastcdc"], seconds) for name, seconds in times.items()
                                if name != "pyfastcdc"},
        "load_average": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="data size in MiB (default 256)")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions (default 7)")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = parser.parse_args()

    data = weights_like(args.size_mib << 20)
    chosen = "two lanes" if chunking.loop() else "one lane"
    results = {label: measure(data, params, args.repeat) for label, params in PARAM_SETS.items()}
    write_json(args.json, {"size_bytes": len(data), "repeat": args.repeat, "chosen_loop": chosen,
                           "results": results})
    print(f"{args.size_mib} MiB of bf16 weights-like data, median (range) of {args.repeat}, interleaved; cut "
          f"points identical; this CPU's calibration chose: {chosen}")
    for label, r in results.items():
        print(f"{label} ({r['chunks']} chunks, load average {r['load_average']}):")
        for name, gbps in r["gbps"].items():
            ratio = r["pyfastcdc_over_ours"].get(name)
            print(f"  {name:24} {describe(gbps, ' GB/s')}" + (f"   ours / pyfastcdc {describe(ratio)}" if ratio else ""))


if __name__ == "__main__":
    main()
