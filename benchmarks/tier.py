"""Tier benchmark: move a history of versions to S3 and back, MB/s each way.

The demo's history (five versions of an 80 MB adapter) in a store whose cold tier is a
bucket on a loopback S3 server (moto). `tier` with keep-hot 1 uploads, reads back and evicts the
old versions' packs; promoting the oldest version and tiering again fetches its packs back.
As a reference, s3fs uploads and downloads the same number of bytes in the same run.

Usage: python benchmarks/tier.py [--json]   (needs: pip install -r benchmarks/requirements.txt)
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import s3fs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3 import loopback_s3  # noqa: E402

from artifactstore import Store  # noqa: E402
from artifactstore.demo import adapter_history, write_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tier-bench-"))
    try:
        with loopback_s3("bench-tier"):
            store = Store.init(work / "store", cold="s3://bench-tier/store", keep_hot=1)
            for version in adapter_history():
                store.push(write_bundle(version, work / "bundles" / version.name), f"acme/support@{version.name}")
            started = time.perf_counter()
            down = store.tier()
            down_seconds = time.perf_counter() - started
            store.promote("acme/support@v1.0.0")
            started = time.perf_counter()
            up = store.tier()
            up_seconds = time.perf_counter() - started

            fs = s3fs.S3FileSystem()
            blob = work / "blob"
            blob.write_bytes(bytes(down.bytes_to_cold))
            started = time.perf_counter()
            fs.put_file(str(blob), "bench-tier/plain/blob")
            fs.get_file("bench-tier/plain/blob", str(work / "blob-back"))
            plain_seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {"to_cold_bytes": down.bytes_evicted, "to_cold_seconds": down_seconds,
               "to_cold_mbps": down.bytes_evicted / down_seconds / 1e6,
               "from_cold_bytes": up.bytes_from_cold, "from_cold_seconds": up_seconds,
               "from_cold_mbps": up.bytes_from_cold / up_seconds / 1e6,
               "s3fs_put_and_get_mbps": 2 * down.bytes_to_cold / plain_seconds / 1e6}
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"to cold:   {down.bytes_evicted / 1e6:7.1f} MB in {down_seconds:.2f} s = {figures['to_cold_mbps']:.0f} MB/s "
          f"(upload, read back, compare, evict)")
    print(f"from cold: {up.bytes_from_cold / 1e6:7.1f} MB in {up_seconds:.2f} s = {figures['from_cold_mbps']:.0f} MB/s "
          f"(download, check every chunk)")
    print(f"s3fs put + get of the same bytes: {figures['s3fs_put_and_get_mbps']:.0f} MB/s")


if __name__ == "__main__":
    main()
