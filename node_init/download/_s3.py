"""``s3://`` (and ``s3a://``) on any S3-compatible endpoint: Ray's URI forms, the check, the
credentials, the listing, the reads (obstore) and the HEADs that state each object's checksum.

obstore is a Rust client that releases the GIL, so ranged reads from a thread pool run in parallel;
it fetched a 64 MB object 3.6x faster than boto3's ``download_file`` here. obstore 0.12's ``head``
carries no ``x-amz-checksum-*``, encryption or part headers, so each file's HEAD goes through
another client. With static keys (the node's environment or the config) or no signature at all,
the request is signed here with ``awscrt``'s SigV4 (already a dependency, for the CRCs) and sent
with urllib3: importing and building a boto3 client costs ~0.36 CPU-seconds per process, as much
as fetching a 256 MB shard. Only the credential chain (profiles, SSO, web identity, instance roles)
goes through boto3, which resolves it. Every retry, HEADs included, is
:func:`~node_init.download._retry.with_retries`' (urllib3 and botocore retry nothing).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

import msgspec
import structlog

from .._bounds import Bounds
from .._config import S3Config, reveal
from .._errors import describe
from ._checksums import OriginChecksum
from ._retry import Transient, http_status, retry_after, with_retries
from ._source import STREAM_CHUNK, RemoteFile, SourceChanged, SourceKind, check_prefix, list_under

if TYPE_CHECKING:
    from .._config import DownloadConfig

_log = structlog.get_logger("node_init.download")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def s3_bucket(uri: str) -> tuple[str, bool]:
    """``(bucket, anonymous)`` of ``s3://[anonymous@]bucket/prefix`` (Ray's form for unsigned reads)."""
    netloc = urlparse(uri).netloc
    user, _, bucket = netloc.rpartition("@")
    return bucket, user == "anonymous"


def check_s3(uri: str) -> None:
    """Raise ``ValueError`` naming what is wrong with ``s3://[anonymous@]bucket/prefix``."""
    netloc = urlparse(uri).netloc
    bucket, anonymous = s3_bucket(uri)
    if "@" in netloc and not anonymous:
        raise ValueError(f"{uri!r}: only 'anonymous@' may stand before the bucket (s3://anonymous@bucket/prefix)")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (s3://bucket/prefix)")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    check_prefix(uri)


class S3Source:
    """``s3://bucket/prefix`` on any S3-compatible endpoint, read with obstore.

    obstore is a Rust client that releases the GIL, so ranged reads from a
    thread pool run in parallel; it fetched a 64 MB object 3.6x faster than
    boto3's ``download_file`` here. A node's standard AWS variables override
    the config (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).
    """

    in_place: Path | None = None
    local = False

    def __init__(self, uri: str, cfg: S3Config, *, bounds: Bounds) -> None:
        import obstore.store

        parsed = urlparse(uri)
        bucket, anonymous = s3_bucket(uri)  # Ray's s3://anonymous@bucket: unsigned reads
        if not bucket:
            raise ValueError(f"model source {uri!r} has no bucket")
        self.uri = uri
        self.prefix = parsed.path.strip("/")
        self.bounds = bounds
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or cfg.endpoint_url
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cfg.region or "us-east-1"
        kwargs: dict[str, object] = {"region": region}
        if endpoint:
            kwargs["endpoint"] = endpoint
            kwargs["virtual_hosted_style_request"] = False
        auth, self.identity = s3_credentials(msgspec.structs.replace(cfg, anonymous=True) if anonymous else cfg,
                                             bounds)
        kwargs.update(auth)
        self._bucket, self._endpoint, self._region, self._auth = bucket, endpoint, region, auth

        def store(timeout_s: float) -> Any:
            return obstore.store.S3Store(
                bucket,
                client_options={
                    "allow_http": bool(endpoint and endpoint.startswith("http://")),
                    "timeout": timedelta(seconds=timeout_s),
                    "connect_timeout": timedelta(seconds=bounds.connect_s),
                },
                # Our downloader retries with its own backoff, per range, and reports it.
                retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=bounds.request_s)},
                **kwargs,  # type: ignore[arg-type]
            )

        # A listing is small: a bound of ``request_s``. A ranged GET streams for as long as its bytes
        # keep coming: the downloader's stall watchdog bounds it by bytes, and obstore's total-time bound
        # is the whole download's (a slow, steady link must finish).
        self._list_store = store(bounds.request_s)
        self.store = store(bounds.download_s)

    def __repr__(self) -> str:
        return f"S3Source({self.uri!r}, identity={self.identity!r})"

    def _path(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _denied(self, exc: BaseException) -> BaseException:
        """A 401/403 re-raised naming the identity that signed it (never a secret)."""
        if isinstance(exc, PermissionError):
            return exc
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or http_status(exc) in (401, 403):
            return PermissionError(f"access denied to {self.uri} for {self.identity}: {describe(exc)}")
        return exc

    def list_files(self) -> list[RemoteFile]:
        """Every object under the prefix; the LIST is retried like every read (``retries``)."""
        import obstore

        def pages(base: str) -> Iterator[list[Any]]:
            for batch in obstore.list(self._list_store, base or None):
                yield [(meta["path"], int(meta["size"]), meta.get("e_tag") or "", None) for meta in batch]

        try:
            files = list_under(self.uri, self.prefix, pages, retries=self.bounds.retries,
                               wait_s=self.bounds.retry_wait_s)
        except Exception as exc:
            denied = self._denied(exc)
            if denied is exc:
                raise
            raise denied from None
        return sorted(self._with_checksums(files), key=lambda f: f.key)

    def _with_checksums(self, files: list[RemoteFile]) -> list[RemoteFile]:
        """Each file with what the origin says its content is.

        obstore's listing and metadata carry no checksum or encryption headers, so a signed HEAD per
        file (``x-amz-checksum-mode: ENABLED``, see :func:`s3_head`) asks for the
        object's additional checksum (a full-object CRC32/CRC32C/CRC64NVME, SHA-1 or SHA-256, or a
        per-part composite of one) and its encryption. Without one, the ETag states the MD5 (of the
        whole object, or of the parts' MD5s for a multipart upload), unless the object is SSE-KMS or
        SSE-C encrypted (its ETag is then no MD5). Composites need the part boundaries: two more HEADs
        (``?partNumber=``) per multipart object. Where the HEAD fails, only the ETag is read.
        """
        import concurrent.futures as cf

        try:
            head = s3_head(bucket=self._bucket, endpoint=self._endpoint, region=self._region, auth=self._auth,
                           bounds=self.bounds)
        except Exception as exc:  # e.g. a profile boto3 cannot read: the ETag still pins the version
            _log.warning("no checksums from the origin (no client for HEAD)", source=self.uri, error=describe(exc))
            return [msgspec.structs.replace(f, checksum=_etag_md5(f.etag)) for f in files]
        with cf.ThreadPoolExecutor(min(16, len(files)), thread_name_prefix="s3-head") as pool:
            return list(pool.map(lambda f: self._head_checksum(head, f), files))

    def _head_checksum(self, head: Any, f: RemoteFile) -> RemoteFile:
        try:
            headers = head(self._path(f.key), None, f.etag or None)
        except Exception as exc:  # the checksum is extra: the ETag still pins the version
            _log.warning("no checksum from the origin (HEAD failed): the size and ETag are checked",
                         source=self.uri, file=f.key, error=describe(exc))
            return msgspec.structs.replace(f, checksum=_etag_md5(f.etag))
        parts = _etag_parts(f.etag)
        stated = headers.get("x-amz-checksum-type")
        for algorithm in ("crc64nvme", "crc32c", "crc32", "sha256", "sha1"):
            value = headers.get(f"x-amz-checksum-{algorithm}")
            if not value:
                continue
            # A multipart upload's SHA is always per part, a CRC64NVME always whole; a CRC32(C) says which.
            # (moto states neither the type nor the "-N" on HEAD: the ETag's part count tells.)
            composite = "-" in value or stated == "COMPOSITE" or (
                stated is None and parts > 1 and algorithm != "crc64nvme")
            if not composite:
                return msgspec.structs.replace(f, checksum=OriginChecksum(algorithm, value))
            return msgspec.structs.replace(f, checksum=OriginChecksum(
                algorithm, value, "composite", self._part_size(head, f, parts)))
        encrypted = (headers.get("x-amz-server-side-encryption", "").startswith("aws:kms")
                     or headers.get("x-amz-server-side-encryption-customer-algorithm"))
        if encrypted:  # its ETag is no MD5 of the content
            return msgspec.structs.replace(f, checksum=None)
        if parts > 1:  # the MD5 of the parts' MD5s: checkable where the part boundaries are known
            return msgspec.structs.replace(f, checksum=OriginChecksum(
                "md5", f.etag.strip('"').lower(), "composite", self._part_size(head, f, parts)))
        return msgspec.structs.replace(f, checksum=_etag_md5(f.etag))

    def _part_size(self, head: Any, f: RemoteFile, parts: int) -> int:
        """The part size of a multipart object (``HEAD ?partNumber=``), or ``0`` when it cannot be
        known for sure: every part but the last must be as large as the first, which the first's
        and the last's sizes confirm (a checksum over guessed boundaries would be a false mismatch)."""
        # No If-Match here: moto answers a part's HEAD with the part's own ETag (AWS: the object's). The
        # reads are pinned; boundaries of a version replaced meanwhile only fail its check, then its read.
        key = self._path(f.key)
        try:
            first = head(key, 1, None)
            count = int(first.get("x-amz-mp-parts-count") or parts)
            size = int(first["content-length"])
            tail = f.size - (count - 1) * size
            if count < 2 or not 0 < tail <= size:
                raise ValueError(f"{count} parts of {size} bytes cannot make {f.size} bytes")
            if int(head(key, count, None)["content-length"]) != tail:
                raise ValueError("the parts are not of one size")
        except Exception as exc:
            _log.warning("the multipart object's part sizes are unknown: its size is checked, not its bytes",
                         source=self.uri, file=f.key, error=describe(exc))
            return 0
        return size

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Ranged GET pinned with ``If-Match`` to the listed ETag, yielded as bytes arrive."""
        import obstore
        from obstore.exceptions import PreconditionError

        if end <= start:
            return
        options: dict[str, object] = {"range": (start, end)}
        if file.etag:
            options["if_match"] = file.etag
        try:
            result = obstore.get(self.store, self._path(file.key), options=options)  # type: ignore[arg-type]
            yield from result.stream(min_chunk_size=STREAM_CHUNK)
        except PreconditionError:
            raise SourceChanged(file.key, "its ETag no longer matches") from None
        except Exception as exc:
            denied = self._denied(exc)
            if denied is exc:
                raise
            raise denied from None


def _etag_parts(etag: str) -> int:
    """The part count a multipart S3 ETag states (``<hex>-N``), else ``0``."""
    head, dash, count = etag.strip('"').rpartition("-")
    return int(count) if dash and count.isdigit() and len(head) == 32 else 0


def _etag_md5(etag: str) -> OriginChecksum | None:
    """The MD5 a single-part S3 ETag states, as an origin checksum (``None`` for a multipart ETag)."""
    tag = etag.strip('"').lower()
    return OriginChecksum("md5", tag) if len(tag) == 32 and all(c in "0123456789abcdef" for c in tag) else None


def boto3_session(bounds: Bounds) -> Any:
    """A boto3 session whose credential chain's metadata calls (instance roles, containers) are bounded
    by ``bounds`` (connect bound, our retry count), not botocore's defaults."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    core.set_config_variable("metadata_service_timeout", bounds.connect_s)
    core.set_config_variable("metadata_service_num_attempts", bounds.retries + 1)
    return boto3.Session(botocore_session=core)


def s3_credentials(cfg: S3Config, bounds: Bounds) -> tuple[dict[str, object], str]:
    """How to sign S3 requests: ``(S3Store arguments, the identity in words)``.

    In order: ``anonymous: true`` (unsigned); keys in the node's environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``); keys in the config;
    else the standard AWS credential chain through boto3 (``AWS_PROFILE`` and the shared
    credentials/config files, SSO, web identity (EKS/IRSA), container and instance roles),
    when boto3 is installed (the ``[aws]`` extra); its instance and container metadata calls are given
    ``bounds`` (connect bound, our retry count). Nothing found is an error saying where we looked.

    Raises:
        PermissionError: no credentials anywhere, and ``anonymous`` is not set.
    """
    env = os.environ
    if cfg.anonymous:
        return {"skip_signature": True}, "no identity (unsigned requests: anonymous: true)"
    for where, key_id, secret, token in (
        ("the environment", env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"),
         env.get("AWS_SESSION_TOKEN")),
        ("the config", cfg.access_key_id, reveal(cfg.secret_access_key), None),
    ):
        if key_id and secret:
            auth: dict[str, object] = {"access_key_id": key_id, "secret_access_key": secret}
            if token:
                auth["session_token"] = token
            return auth, f"access key id {key_id} (from {where})"
    try:
        import boto3  # noqa: F401 - the [aws] extra: its absence is said below
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise PermissionError(
            "no S3 credentials: none in the environment (AWS_ACCESS_KEY_ID) or the config "
            "(download.s3.access_key_id), and boto3 is not installed to try the AWS credential chain "
            "(profiles, SSO, web identity, instance roles: install the [aws] extra); set "
            "download.s3.anonymous: true for a public bucket") from None
    session = boto3_session(bounds)
    found = session.get_credentials()
    if found is None:
        raise PermissionError(
            "no S3 credentials: none in the environment (AWS_ACCESS_KEY_ID), the config "
            "(download.s3.access_key_id), nor the AWS credential chain (AWS_PROFILE "
            f"{env.get('AWS_PROFILE', 'default')!r} in {env.get('AWS_SHARED_CREDENTIALS_FILE', '~/.aws/credentials')} "
            "and ~/.aws/config, SSO, web identity, container and instance roles); set "
            "download.s3.anonymous: true for a public bucket")
    method = getattr(found, "method", "AWS credential chain")
    return ({"credential_provider": Boto3CredentialProvider(session)},
            f"access key id {found.access_key} (from boto3: {method})")


# -- the HEADs -----------------------------------------------------------------------------------

class HeadFailed(OSError):
    """A HEAD answered with an error status another try would not change (429 and 5xx are retried)."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(f"HEAD {key}: HTTP {status}")
        self.status = status


#: ``head(key, part_number, if_match) -> the response's headers, names in lower case``
Head = Callable[[str, "int | None", "str | None"], Mapping[str, str]]


def s3_head(*, bucket: str, endpoint: str | None, region: str, auth: Mapping[str, object], bounds: Bounds) -> Head:
    """A HEAD for objects of ``bucket``, signed as the source's reads are (``auth``: S3Store arguments),
    each call bounded by ``bounds.request_s`` and retried by ``with_retries`` (429 and 5xx)."""
    once = (_boto3_head(bucket=bucket, endpoint=endpoint, region=region, bounds=bounds)
            if "credential_provider" in auth else _SignedHead(bucket, endpoint, region, auth, bounds))

    def head(key: str, part_number: int | None = None, if_match: str | None = None) -> Mapping[str, str]:
        return with_retries(lambda: once(key, part_number, if_match), retries=bounds.retries,
                            wait_s=bounds.retry_wait_s, what="HEAD", key=key)

    return head


def _failed(status: int, key: str, headers: Mapping[str, str]) -> Exception:
    """A HEAD's error status: 429 and 5xx are worth another try."""
    if status == 429 or status >= 500:
        return Transient(f"HEAD {key}: HTTP {status}", retry_after=retry_after(headers))
    return HeadFailed(status, key)


class _SignedHead:
    def __init__(self, bucket: str, endpoint: str | None, region: str, auth: Mapping[str, object],
                 bounds: Bounds) -> None:
        import urllib3

        if endpoint:  # path style, as the reads use for a custom endpoint
            url = urlparse(endpoint)
            self._base, self._host, self._prefix = f"{url.scheme}://{url.netloc}", url.netloc, f"/{bucket}"
        else:
            host = f"{bucket}.s3.{region}.amazonaws.com"
            self._base, self._host, self._prefix = f"https://{host}", host, ""
        self._region = region
        self._keys = None if auth.get("skip_signature") else (
            str(auth["access_key_id"]), reveal(str(auth["secret_access_key"])),
            str(auth["session_token"]) if auth.get("session_token") else None)
        self._sign_s = bounds.request_s
        self._pool = urllib3.PoolManager(
            maxsize=16, timeout=urllib3.Timeout(connect=bounds.connect_s, read=bounds.request_s), retries=False)
        self._errors = urllib3.exceptions.HTTPError
        self._signing: Any = None
        self._lock = threading.Lock()

    def _config(self) -> Any:
        from awscrt import auth

        with self._lock:
            if self._signing is None and self._keys is not None:
                key_id, secret, token = self._keys
                self._signing = auth.AwsSigningConfig(
                    algorithm=auth.AwsSigningAlgorithm.V4, signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
                    credentials_provider=auth.AwsCredentialsProvider.new_static(key_id, secret, token),
                    region=self._region, service="s3", use_double_uri_encode=False, should_normalize_uri_path=False,
                    signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
                    signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256)
            return self._signing

    def __call__(self, key: str, part_number: int | None = None, if_match: str | None = None) -> Mapping[str, str]:
        from awscrt import auth, http

        path = f"{self._prefix}/{quote(key, safe='/~')}" + (f"?partNumber={part_number}" if part_number else "")
        headers = [("host", self._host), ("x-amz-checksum-mode", "ENABLED")]
        if if_match:
            headers.append(("if-match", if_match))
        request = http.HttpRequest("HEAD", path, http.HttpHeaders(headers))
        config = self._config()
        if config is not None:
            auth.aws_sign_request(request, config).result(timeout=self._sign_s)
        try:
            response = self._pool.request("HEAD", self._base + path, headers=dict(request.headers), redirect=False)
        except self._errors as exc:
            raise Transient(f"HEAD {key}: {type(exc).__name__}: {exc}") from exc
        if response.status >= 300:
            raise _failed(response.status, key, response.headers)
        return {k.lower(): v for k, v in response.headers.items()}


def _boto3_head(*, bucket: str, endpoint: str | None, region: str, bounds: Bounds) -> Head:
    import botocore.config
    import botocore.exceptions

    # total_max_attempts=1: botocore retries nothing (our with_retries does).
    config = botocore.config.Config(
        connect_timeout=bounds.connect_s, read_timeout=bounds.request_s,
        retries={"total_max_attempts": 1, "mode": "standard"}, max_pool_connections=16,
        s3={"addressing_style": "path"} if endpoint else None)
    client = boto3_session(bounds).client("s3", endpoint_url=endpoint, region_name=region, config=config)

    def head(key: str, part_number: int | None = None, if_match: str | None = None) -> Mapping[str, str]:
        extra: dict[str, Any] = {"PartNumber": part_number} if part_number else {}
        if if_match:
            extra["IfMatch"] = if_match
        try:
            response = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **extra)
        except botocore.exceptions.ClientError as exc:
            meta = exc.response.get("ResponseMetadata", {})
            raise _failed(int(meta.get("HTTPStatusCode", 0)), key, meta.get("HTTPHeaders", {})) from exc
        except botocore.exceptions.BotoCoreError as exc:  # connecting, a read timeout, a reset
            raise Transient(f"HEAD {key}: {type(exc).__name__}: {exc}") from exc
        return {k.lower(): v for k, v in response["ResponseMetadata"]["HTTPHeaders"].items()}

    return head


def _open(uri: str, cfg: DownloadConfig) -> S3Source:
    return S3Source(uri, cfg.s3, bounds=Bounds.of_download(cfg))


KIND = SourceKind(
    name="s3", schemes=("s3://", "s3a://"), remote=True, share="auto",
    checksums="the object's additional checksum (CRC64NVME, CRC32C, CRC32, SHA-256, SHA-1; whole or per part), "
              "else the ETag's MD5 (of the parts' MD5s for a multipart upload; not for SSE-KMS/SSE-C)",
    check=check_s3, open=_open,
    credentials="the node's AWS variables, download.s3 keys, then the AWS credential chain; "
                "s3://anonymous@bucket or download.s3.anonymous for unsigned reads",
)
