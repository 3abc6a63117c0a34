"""Fleet benchmark: N serving processes of one machine start following a store shared through a
bucket (moto on 127.0.0.1): how long until all of them hold the version, and what they keep.

- one cache: every process uses this machine's cache directory (the default): the version is
  fetched into it once, by one process, and every process maps the cached packs;
- a cache each: every process has a cache of its own (the peer: what each process cost when
  the cache went unused, one download per process).

Each repetition starts the fleet in each mode in turn, from an empty cache; figures are medians
with ranges, beside the load average.

Usage: python benchmarks/fleet.py [--followers 1,5,10] [--repeat 3] [--json FILE]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from interleave import describe, load_average, spread, write_json
from s3 import loopback_s3

from artifactstore import Store
from artifactstore.demo import Version, lora_tensors, write_bundle

MODES = ("one cache", "a cache each")


def start_fleet(url: str, count: int, caches: list[Path]) -> float:
    """Seconds until ``count`` followers (cache ``caches[i]``) all serve production."""
    started = time.monotonic()
    servers = [subprocess.Popen([sys.executable, "-m", "artifactstore", "follow", "acme/support@production",
                                 "--store", url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "ARTIFACTSTORE_CACHE": str(caches[i])}) for i in range(count)]
    try:
        for server in servers:
            json.loads(server.stdout.readline())  # serving
            json.loads(server.stdout.readline())  # its hot set is resident
        return time.monotonic() - started
    finally:
        for server in servers:
            server.stdin.close()
            server.wait()


def cached_bytes(caches: list[Path]) -> int:
    return sum(p.stat().st_size for cache in set(caches) for p in cache.rglob("*.pack"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", default="1,5,10")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    results: dict = {}
    try:
        with loopback_s3("fleet") as _:
            url = "s3://fleet/registry"
            store = Store.init(url, cache=work / "writer-cache")
            tensors = lora_tensors(range(32), seed=11, rank=16)  # about 84 MB, as in the issue
            version = Version("v1.0.0", "first", tensors, {"format": "pt"}, {"temperature": 0.2})
            store.push(write_bundle(version, work / "bundle"), "acme/support@v1.0.0")
            store.promote("acme/support@v1.0.0")
            adapter_bytes = store.show("acme/support@v1.0.0")["adapter_bytes"]
            load_before = load_average()
            for count in map(int, args.followers.split(",")):
                seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
                kept: dict[str, int] = {}
                for repetition in range(args.repeat):
                    for mode in MODES:
                        base = work / f"caches-{count}-{repetition}-{mode.replace(' ', '-')}"
                        caches = [base] * count if mode == "one cache" else [base / str(i) for i in range(count)]
                        seconds[mode].append(start_fleet(url, count, caches))
                        kept[mode] = cached_bytes(caches)
                        shutil.rmtree(base)
                results[count] = {mode: {"seconds": spread(seconds[mode]), "cached_pack_bytes": kept[mode]}
                                  for mode in MODES}
            load_after = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {"adapter_bytes": adapter_bytes, "repeat": args.repeat, "load_average": [load_before, load_after],
               "followers": results}
    write_json(args.json, figures)
    print(f"a {adapter_bytes / 1e6:.0f} MB adapter on a loopback bucket; median (range) of {args.repeat}; "
          f"load average {load_before} -> {load_after}")
    for count, by_mode in results.items():
        for mode, r in by_mode.items():
            print(f"{count:3} followers, {mode:13} all serving after {describe(r['seconds'], ' s')}  "
                  f"packs in the caches {r['cached_pack_bytes'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
