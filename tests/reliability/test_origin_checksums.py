"""Every byte checked against what the origin states: S3's additional checksums, the MD5 of a single-part
ETag, the MD5 of a multipart upload's parts (its ``<hex>-N`` ETag, recomputed over the part boundaries the
``?partNumber=`` HEADs give), per-part composite checksums, or (where it states nothing) the size, against
the real local S3 server through the fault proxy.

What moto does differently from AWS, and how the tests meet it: it returns ``x-amz-checksum-*`` (on HEAD
with ``x-amz-checksum-mode: ENABLED``) only for objects uploaded with an explicit checksum algorithm, so
each object here is uploaded with one; it labels a CRC32 as CRC32C/CRC64NVME unless ``crc32c`` and
``awscrt`` are installed (the test extra has both); AWS's full-object CRC64NVME default for uploads made
without an algorithm is not reproduced; it states a composite checksum on HEAD without AWS's ``-N`` suffix
and without ``x-amz-checksum-type``, and answers a part's HEAD with the part's own ETag (AWS: the object's).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_init import DownloadConfig, DownloadError, S3Config
from node_init.download import Downloader, crc, list_source
from node_init.download import combine_crcs as combine
from node_init.testing import Fault, FaultProxy, S3Server

pytestmark = pytest.mark.reliability
MB = 1 << 20
ALGORITHMS = ["CRC32", "CRC32C", "CRC64NVME", "SHA256", "SHA1"]
#: Multipart uploads (parts of 5, 5 and 1 MiB + 99 bytes): how each is checked.
MULTIPART = {"mp-plain": "multipart-md5", "mp-SHA256": "sha256-composite", "mp-CRC32C": "crc32c-composite",
             "mp-CRC64NVME": "crc64nvme"}


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=6),
       algorithm=st.sampled_from(["crc32", "crc32c", "crc64nvme"]))
def test_crcs_of_ranges_combine_into_the_crc_of_the_whole(data: bytes, cuts: list[int], algorithm: str) -> None:
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    parts = [(crc(algorithm, data[a:b]), b - a) for a, b in itertools.pairwise(points)]
    assert combine(algorithm, parts) == crc(algorithm, data)


def upload_parts(client: Any, key: str, parts: list[bytes], algorithm: str | None = None) -> None:
    """A multipart upload of ``parts`` (with ``algorithm``'s checksum per part, if given)."""
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    upload = client.create_multipart_upload(Bucket="models", Key=key, **extra)
    done = []
    for n, body in enumerate(parts, start=1):
        part = client.upload_part(Bucket="models", Key=key, PartNumber=n, UploadId=upload["UploadId"], Body=body,
                                  **extra)
        done.append({"PartNumber": n, "ETag": part["ETag"],
                     **({f"Checksum{algorithm}": part[f"Checksum{algorithm}"]} if algorithm else {})})
    client.complete_multipart_upload(Bucket="models", Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": done})


def plain_client(s3_server: S3Server) -> Any:
    """A boto3 client that sends no checksum of its own (boto3 adds a CRC32 to uploads by default)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(request_checksum_calculation="when_required"))


@pytest.fixture(scope="module")
def objects(s3_server: S3Server) -> dict[str, bytes]:
    """One object per algorithm (3 MiB: three 1 MiB ranges), one plain single-part, one without any."""
    client = s3_server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="models")
    out = {}
    for algorithm in ALGORITHMS:
        data = os.urandom(3 * MB + 4321)
        client.put_object(Bucket="models", Key=f"sums-{algorithm}/w.safetensors", Body=data,
                          ChecksumAlgorithm=algorithm)
        out[algorithm] = data
    plain = os.urandom(2 * MB + 17)
    plain_client(s3_server).put_object(Bucket="models", Key="sums-plain/w.safetensors", Body=plain)
    out["plain"] = plain
    for name in MULTIPART:
        parts = [os.urandom(5 * MB), os.urandom(5 * MB), os.urandom(MB + 99)]
        algorithm = name.removeprefix("mp-")
        upload_parts(plain_client(s3_server), f"sums-{name}/w.safetensors", parts,
                     None if algorithm == "plain" else algorithm)
        out[name] = b"".join(parts)
    return out


def cfg(endpoint: str, **over: object) -> DownloadConfig:
    return DownloadConfig(**{"s3": S3Config(endpoint_url=endpoint, access_key_id="testing",  # type: ignore[arg-type]
                                            secret_access_key="testing"),
                             "part_size_mb": 1, "timeout_s": 60, "retries": 1, **over})


def fetch(prefix: str, endpoint: str, dest: Path, **over: object) -> object:
    config = cfg(endpoint, **over)
    source, files = list_source(f"s3://models/{prefix}", config)
    return Downloader(source, dest, config).run(files)


@pytest.mark.parametrize("algorithm", ALGORITHMS + list(MULTIPART))
def test_the_origins_checksum_is_checked_and_a_transient_flip_heals(
        s3_server: S3Server, objects: dict[str, bytes], tmp_path: Path, algorithm: str) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        # One byte flipped in one range's body, every header unchanged: only the checksum sees it.
        proxy.add(Fault(kind="corrupt", method="GET", match=f"sums-{algorithm}/w.safetensors", after_bytes=1000,
                        count=1))
        result = fetch(f"sums-{algorithm}", proxy.endpoint, tmp_path / "m")
        assert proxy.injected  # the flip happened
    finally:
        proxy.stop()
    assert result.verified == {"w.safetensors": MULTIPART.get(algorithm, algorithm.lower())}  # type: ignore[attr-defined]
    assert result.rereads == ("w.safetensors",)  # type: ignore[attr-defined]
    assert (Path(result.path) / "w.safetensors").read_bytes() == objects[algorithm]  # type: ignore[attr-defined]


@pytest.mark.parametrize("algorithm", ["CRC32C", "CRC64NVME", "SHA256", "plain", "mp-plain", "mp-SHA256"])
def test_a_persistent_flip_is_a_typed_error_and_nothing_enters_the_cache(
        s3_server: S3Server, objects: dict[str, bytes], tmp_path: Path, algorithm: str) -> None:
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        proxy.add(Fault(kind="corrupt", method="GET", match=f"sums-{algorithm}/w.safetensors", after_bytes=5,
                        count=100))
        with pytest.raises(DownloadError) as info:
            fetch(f"sums-{algorithm}", proxy.endpoint, tmp_path / "m")
    finally:
        proxy.stop()
    err = info.value
    named = "md5" if algorithm == "plain" else MULTIPART.get(algorithm, algorithm.lower())
    assert err.checksum_mismatch and err.file == "w.safetensors" and f"{named} mismatch" in str(err)
    assert "the origin states" in str(err) and "the bytes give" in str(err)
    assert not (tmp_path / "m").exists()  # no snapshot of wrong bytes
    blobs = list((tmp_path / ".node-init").rglob("blobs/*"))
    assert all(p.read_bytes() in objects.values() for p in blobs if p.is_file())


def test_a_single_part_etag_is_the_md5_and_an_encrypted_one_is_not(
        s3_server: S3Server, objects: dict[str, bytes], tmp_path: Path) -> None:
    result = fetch("sums-plain", s3_server.endpoint, tmp_path / "a")
    assert result.verified == {"w.safetensors": "md5"}  # type: ignore[attr-defined]
    # SSE-KMS / SSE-C objects' ETags are not their MD5. moto's are, so the proxy sets the encryption
    # header on the HEAD (as AWS sends it for such an object): the ETag is then not taken for an MD5.
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        proxy.add(Fault(kind="headers", method="HEAD", match="sums-plain", count=10,
                        headers={"x-amz-server-side-encryption": "aws:kms"}))
        result = fetch("sums-plain", proxy.endpoint, tmp_path / "b")
    finally:
        proxy.stop()
    assert result.verified == {"w.safetensors": "size"}  # type: ignore[attr-defined]


def test_require_checksum_refuses_files_the_origin_vouches_for_with_nothing(
        s3_server: S3Server, tmp_path: Path) -> None:
    # A multipart upload without a checksum algorithm whose last part is larger than its first: its ETag
    # (<hex>-2) is the MD5 of the parts' MD5s, but the boundaries cannot be known for sure from the first
    # and last parts' sizes, so nothing is checked but the size (a guess would risk a false mismatch).
    upload_parts(plain_client(s3_server), "sums-none/w.safetensors", [os.urandom(5 * MB), os.urandom(6 * MB)])
    result = fetch("sums-none", s3_server.endpoint, tmp_path / "a")
    assert result.verified == {"w.safetensors": "size"}  # type: ignore[attr-defined]
    with pytest.raises(DownloadError, match="require_checksum") as info:
        fetch("sums-none", s3_server.endpoint, tmp_path / "b", require_checksum=True)
    assert info.value.file == "w.safetensors"


def test_verify_full_rechecks_against_the_origins_checksum(s3_server: S3Server, objects: dict[str, bytes],
                                                           tmp_path: Path) -> None:
    dest = tmp_path / "m"
    first = fetch("sums-CRC64NVME", s3_server.endpoint, dest)
    blob = Path(first.path) / "w.safetensors"  # type: ignore[attr-defined]
    real = blob.resolve()
    data = bytearray(real.read_bytes())
    data[-1] ^= 0xFF
    st = real.stat()
    real.write_bytes(bytes(data))
    os.utime(real, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and mtime: only a re-hash sees it
    again = fetch("sums-CRC64NVME", s3_server.endpoint, dest, verify="full")
    assert again.bytes > 0  # type: ignore[attr-defined]
    assert (Path(again.path) / "w.safetensors").read_bytes() == objects["CRC64NVME"]  # type: ignore[attr-defined]
