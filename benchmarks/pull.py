"""Pull benchmark: fetch v1.1.0 from S3 while v1.0.0 is hot, against a plain s3fs download.

The store's cold tier is an S3 bucket on a loopback server (moto). v1.1.0 retrains half of the
layers of a ~200 MB adapter; after `tier`, only v1.0.0 is hot. `pull` transfers only the chunks
the hot tier lacks; the peer downloads the same files from the same server with s3fs.

Usage: python benchmarks/pull.py [--json]   (needs: pip install -r benchmarks/requirements.txt)
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
from artifactstore.demo import Version, lora_tensors, write_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pull-bench-"))
    try:
        with loopback_s3("bench-cold"):
            first = lora_tensors(range(32), seed=21, rank=40)
            second = {**first, **lora_tensors(range(16, 32), seed=22, rank=40)}
            bundles = {name: write_bundle(Version(name, name, tensors, {"format": "pt"}, {"temperature": 0.2}),
                                          work / name)
                       for name, tensors in (("v1.0.0", first), ("v1.1.0", second))}
            store = Store.init(work / "store", cold="s3://bench-cold/store", keep_hot=0)
            for name, bundle in bundles.items():
                store.push(bundle, f"acme/support@{name}")
            store.promote("acme/support@v1.0.0")
            store.tier()
            started = time.perf_counter()
            report = Store(store.path).pull("acme/support@v1.1.0")
            pull_seconds = time.perf_counter() - started

            fs = s3fs.S3FileSystem()
            fs.put(str(bundles["v1.1.0"]), "bench-cold/plain/v1.1.0", recursive=True)
            started = time.perf_counter()
            fs.get("bench-cold/plain/v1.1.0", str(work / "plain"), recursive=True)
            plain_seconds = time.perf_counter() - started
            plain_bytes = sum(p.stat().st_size for p in (work / "plain").rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {"logical_bytes": report.logical_bytes, "transferred_bytes": report.transferred_bytes,
               "transferred_over_logical": report.transferred_bytes / report.logical_bytes,
               "pull_seconds": pull_seconds, "plain_s3fs_bytes": plain_bytes, "plain_s3fs_seconds": plain_seconds,
               "bytes_saved_vs_s3fs": 1 - report.transferred_bytes / plain_bytes,
               "speedup_vs_s3fs": plain_seconds / pull_seconds}
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    print(f"pull v1.1.0 with v1.0.0 hot: {report.transferred_bytes / 1e6:.1f} MB of {report.logical_bytes / 1e6:.1f} MB "
          f"({figures['transferred_over_logical']:.1%}) in {pull_seconds:.2f} s")
    print(f"plain s3fs download:         {plain_bytes / 1e6:.1f} MB in {plain_seconds:.2f} s")
    print(f"ratio: {figures['transferred_over_logical']:.2f} of the bytes, {figures['speedup_vs_s3fs']:.2f}x the speed")


if __name__ == "__main__":
    main()
