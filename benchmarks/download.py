"""Download throughput: our downloader against Ray 2.60's own S3 downloader, same objects, same run.

A real S3-compatible server (moto over HTTP, objects served from memory) runs
on 127.0.0.1 in this process. Each download runs in a fresh subprocess, so
its client CPU time is measured alone; this process's CPU time over the same
interval is the server's. Ray's side is ``download_model_files`` with a
``CloudMirrorConfig`` (boto3, a thread per file), pointed at the endpoint by
``AWS_ENDPOINT_URL``. Runs are interleaved; medians are reported.

Run: ``python benchmarks/download.py [--quick]``; writes ``results/download.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import markdown_table, median, write_outputs

MB = 1 << 20
CASES: dict[str, dict[str, int]] = {
    "1 x 64 MB": {"model.safetensors": 64 * MB},
    "1 x 256 MB": {"model.safetensors": 256 * MB},
    "4 x 150 MB": {f"model-0000{i}-of-00004.safetensors": 150 * MB for i in range(1, 5)},
}


def worker(kind: str, uri: str, endpoint: str, dest: str) -> None:
    """Runs in the subprocess: one download, timed; prints JSON."""
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "HF_HUB_CACHE": dest, "HOME": dest})
    if kind == "ray":
        from ray.llm._internal.common.utils.cloud_utils import CloudMirrorConfig
        from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable, download_model_files

        def run() -> None:
            download_model_files(model_id="bench/model", mirror_config=CloudMirrorConfig(bucket_uri=uri),
                                 download_model=NodeModelDownloadable.MODEL_AND_TOKENIZER,
                                 download_extra_files=False)
    else:
        from node_init import DownloadConfig, S3Config
        from node_init.download import Downloader, S3Source

        def run() -> None:
            src = S3Source(uri, S3Config(), request_timeout_s=60)
            Downloader(src, Path(dest) / "ours", DownloadConfig()).run(src.list_files())

    c0, t0 = time.process_time(), time.perf_counter()
    run()
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}))


def files_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in root.rglob("*.safetensors"):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(8 * MB):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


def one_run(kind: str, uri: str, endpoint: str, expected: dict[str, str]) -> dict[str, float]:
    dest = tempfile.mkdtemp(prefix=f"dl-{kind}-")
    try:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        out = subprocess.run([sys.executable, __file__, "--worker", kind, uri, endpoint, dest],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        got = files_digest(Path(dest))
        assert got == expected, f"{kind} produced different files: {sorted(got)} vs {sorted(expected)}"
        # The server lives in this process: its CPU over the run (minus the ~idle parent) is the server's.
        result["server_cpu"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return result
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def main(quick: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from node_init.testing import S3Server, write_model_files

    repeats = 1 if quick else 3
    cases = dict(list(CASES.items())[:2]) if quick else CASES
    server = S3Server().start()
    rows: list[dict[str, Any]] = []
    try:
        for name, files in cases.items():
            local = Path(tempfile.mkdtemp(prefix="dl-src-"))
            write_model_files(local, files)
            prefix = name.replace(" ", "")
            server.upload_dir(local, "bench", prefix)
            expected = files_digest(local)
            total = sum(p.stat().st_size for p in local.iterdir())
            shutil.rmtree(local)
            uri = f"s3://bench/{prefix}"
            one_run("ours", uri, server.endpoint, expected)  # warm the server's cache for both alike
            samples: dict[str, list[dict[str, float]]] = {"ours": [], "ray": []}
            for i in range(repeats):
                order = ("ours", "ray") if i % 2 == 0 else ("ray", "ours")
                for kind in order:
                    samples[kind].append(one_run(kind, uri, server.endpoint, expected))
            row: dict[str, Any] = {"case": name, "bytes": total}
            for kind, runs in samples.items():
                row[kind] = {k: median([r[k] for r in runs]) for k in runs[0]}
                row[kind]["mb_s"] = total / 1e6 / row[kind]["seconds"]
            row["speed_ratio"] = row["ours"]["mb_s"] / row["ray"]["mb_s"]
            rows.append(row)
            print(f"{name}: ours {row['ours']['mb_s']:.0f} MB/s, Ray {row['ray']['mb_s']:.0f} MB/s, "
                  f"ratio {row['speed_ratio']:.2f}", flush=True)
    finally:
        server.stop()
    header = ["objects", "MB", "ours MB/s", "Ray MB/s", "ours/Ray speed", "ours client CPU s",
              "Ray client CPU s", "server CPU s (ours)", "server CPU s (Ray)"]
    table = markdown_table(header, [[
        r["case"], f"{r['bytes'] / 1e6:.0f}", f"{r['ours']['mb_s']:.0f}", f"{r['ray']['mb_s']:.0f}",
        f"{r['speed_ratio']:.2f}x", f"{r['ours']['cpu']:.2f}", f"{r['ray']['cpu']:.2f}",
        f"{r['ours']['server_cpu']:.2f}", f"{r['ray']['server_cpu']:.2f}",
    ] for r in rows])
    print()
    print(table)
    path = write_outputs("download", {"repeats": repeats, "rows": rows}, table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:6])
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two sizes, one run each")
    main(ap.parse_args().quick)
