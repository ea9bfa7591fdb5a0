"""Where models come from: a local directory / ``file://``, ``s3://``, or an HF cache offline.

A source lists its files and reads byte ranges; the :class:`~node_init.download.Downloader`
owns caching, locking, retries and atomicity. A source already on the node in a
form the engine loads (an HF cache snapshot) says so with ``in_place``: nothing
is copied from it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import msgspec
import structlog

from .._config import DownloadConfig, S3Config, reveal
from .._errors import DownloadError, describe
from ._checksums import OriginChecksum
from ._registry import s3_bucket, source_kind
from ._retry import http_status, with_retries

_log = structlog.get_logger("node_init.download")


class RemoteFile(msgspec.Struct, frozen=True):
    """One file of a model: its key (relative POSIX path), size, version tag, and what the origin
    says its content is (``checksum``; ``None`` when it says nothing: then only the size is checked)."""

    key: str
    size: int
    etag: str = ""
    checksum: OriginChecksum | None = None


class UnsafeKeyError(ValueError):
    """A key or path that would land outside the destination directory."""


class SourceChanged(Exception):
    """A file changed at the source since it was listed (its version pin no longer holds).

    Attributes:
        key: The file.
    """

    def __init__(self, key: str, detail: str = "") -> None:
        self.key = key
        super().__init__(f"{key} changed at the source since it was listed" + (f" ({detail})" if detail else ""))

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.key,))


#: Bytes a source yields at a time while streaming a range (progress moves at this grain).
STREAM_CHUNK = 256 * 1024


class Source(Protocol):
    """What the downloader needs of a model source.

    Attributes:
        uri: The source as configured (for errors and the cache manifest).
        in_place: A directory on this node the engine can load as is (nothing to
            download), or ``None``.
    """

    uri: str
    in_place: Path | None

    def list_files(self) -> list[RemoteFile]:
        """Every file of the model."""
        ...

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of ``file`` as they arrive, pinned to its listed version.

        Raises:
            SourceChanged: when the file is no longer the version listed.
        """
        ...


#: The longest file name (one path component, in bytes) and key the cache holds (Linux's limits, less
#: room for the cache's own prefix).
NAME_MAX = 255
PATH_MAX = 3072


def check_key(key: str) -> str:
    """Return ``key`` if it stays inside a destination directory, else raise :class:`UnsafeKeyError`."""
    if not key or key.startswith(("/", "\\")) or "\\" in key or "\x00" in key or ":" in key.split("/")[0]:
        raise UnsafeKeyError(f"refused key {key!r}: absolute or not a plain relative path")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(key) != key:
        raise UnsafeKeyError(f"refused key {key!r}: it would escape the destination")
    # Refused at listing time, before a byte is fetched: the cache could not hold the name.
    longest = max(len(p.encode("utf-8", "surrogateescape")) for p in parts)
    if longest > NAME_MAX or len(key.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise UnsafeKeyError(f"refused key {key[:60]!r}...: a name of {longest} bytes (at most {NAME_MAX} per "
                             f"component, {PATH_MAX} in all) cannot be held in the cache")
    return key


def _local_tag(st: os.stat_result) -> str:
    """A local file's version tag: mtime and size (what pins it between listing and reading)."""
    return f"{st.st_mtime_ns}-{st.st_size}"


def local_path(uri: str) -> Path | None:
    """The directory a local source names (``/path``, ``~/path`` or ``file:///path``), else ``None``."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if uri and "://" not in uri:
        return Path(uri).expanduser()
    return None


class LocalSource:
    """A model directory on this node (``/path`` or ``file:///path``), copied into the cache.

    Symlinks are followed only when they stay inside the directory.
    """

    in_place: Path | None = None

    def __init__(self, uri: str) -> None:
        self.uri = uri
        root = local_path(uri)
        if root is None:
            raise ValueError(f"model source {uri!r} is not a local path or file:// URI")
        self.root = self.boundary = root

    def list_files(self) -> list[RemoteFile]:
        """Every regular file under the directory (dot-files and dot-directories left out).

        Raises:
            FileNotFoundError: the directory is missing or holds no file.
            PermissionError: a directory in it cannot be read (never skipped: shards would be missing).
            UnsafeKeyError: a symlink points outside the directory.
            ValueError: a special file (FIFO, socket, device) is in it.
        """
        if not self.root.is_dir():
            raise FileNotFoundError(f"model source {self.uri} is not a directory")
        boundary = self.boundary.resolve()
        files: list[RemoteFile] = []

        def walk(directory: str, prefix: str) -> None:
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise type(exc)(exc.errno, f"cannot read directory {directory}: {exc.strerror}") from None
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                key = prefix + entry.name
                if entry.is_symlink():
                    real = Path(entry.path).resolve()
                    if not real.is_relative_to(boundary):
                        raise UnsafeKeyError(f"refused {key!r}: symlink to {real} points outside {boundary}")
                    st = real.stat()
                    if stat.S_ISDIR(st.st_mode):
                        continue  # symlinked directories are not followed (no loops)
                elif entry.is_dir(follow_symlinks=False):
                    walk(entry.path, key + "/")
                    continue
                else:
                    st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"refused {key!r} in {self.uri}: not a regular file (a FIFO, socket or device)")
                files.append(RemoteFile(check_key(key), st.st_size, _local_tag(st)))

        walk(str(self.root), "")
        if not files:
            raise FileNotFoundError(f"model source {self.uri} holds no files")
        return sorted(files, key=lambda f: f.key)

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes]:
        """Read ``[start, end)``; the file must still have the size and mtime it was listed with."""
        try:
            # O_NONBLOCK: a FIFO put in a file's place must not block the open.
            fd = os.open(self.root / check_key(file.key), os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise SourceChanged(file.key, "removed since it was listed") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (file.etag and _local_tag(st) != file.etag):
                raise SourceChanged(file.key, "size, mtime or type differ from the listing")
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(left, STREAM_CHUNK))
                if not chunk:
                    return  # short: the caller retries
                left -= len(chunk)
                yield chunk
            if file.etag and _local_tag(os.fstat(fd)) != file.etag:
                raise SourceChanged(file.key, "modified while it was read")


class S3Source:
    """``s3://bucket/prefix`` on any S3-compatible endpoint, read with obstore.

    obstore is a Rust client that releases the GIL, so ranged reads from a
    thread pool run in parallel; it fetched a 64 MB object 3.6x faster than
    boto3's ``download_file`` here. A node's standard AWS variables override
    the config (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).
    """

    in_place: Path | None = None

    def __init__(self, uri: str, cfg: S3Config, *, request_timeout_s: float, read_timeout_s: float | None = None,
                 retries: int = 3) -> None:
        import obstore.store

        parsed = urlparse(uri)
        bucket, anonymous = s3_bucket(uri)  # Ray's s3://anonymous@bucket: unsigned reads
        if not bucket:
            raise ValueError(f"model source {uri!r} has no bucket")
        self.uri = uri
        self.prefix = parsed.path.strip("/")
        self.retries = retries
        env = os.environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or cfg.endpoint_url
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cfg.region or "us-east-1"
        kwargs: dict[str, object] = {"region": region}
        if endpoint:
            kwargs["endpoint"] = endpoint
            kwargs["virtual_hosted_style_request"] = False
        auth, self.identity = s3_credentials(msgspec.structs.replace(cfg, anonymous=True) if anonymous else cfg)
        kwargs.update(auth)
        self._bucket, self._endpoint, self._region, self._auth = bucket, endpoint, region, auth
        self._timeout_s = request_timeout_s

        def store(timeout_s: float) -> Any:
            return obstore.store.S3Store(
                bucket,
                client_options={
                    "allow_http": bool(endpoint and endpoint.startswith("http://")),
                    "timeout": timedelta(seconds=timeout_s),
                    "connect_timeout": timedelta(seconds=min(10.0, request_timeout_s)),
                },
                # Our downloader retries with its own backoff, per range, and reports it.
                retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=request_timeout_s)},
                **kwargs,  # type: ignore[arg-type]
            )

        # A listing is small: a bound of ``request_timeout_s``. A ranged GET streams for as long as
        # its bytes keep coming: the downloader's stall watchdog bounds it by bytes, not by the
        # request's total time (a slow, steady link must finish).
        self._list_store = store(request_timeout_s)
        self.store = store(read_timeout_s or request_timeout_s)

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

        base = f"{self.prefix}/" if self.prefix else ""

        def listing() -> list[RemoteFile]:
            files = []
            for batch in obstore.list(self._list_store, base or None):
                for meta in batch:
                    key = meta["path"][len(base):]
                    if not key or key.endswith("/"):
                        continue
                    files.append(RemoteFile(check_key(key), int(meta["size"]), meta.get("e_tag") or ""))
            return files

        try:
            files = with_retries(listing, retries=self.retries, what="listing", source=self.uri)
        except Exception as exc:
            denied = self._denied(exc)
            if denied is exc:
                raise
            raise denied from None
        if not files:
            raise FileNotFoundError(f"no objects under {self.uri}")
        return sorted(self._with_checksums(files), key=lambda f: f.key)

    def _with_checksums(self, files: list[RemoteFile]) -> list[RemoteFile]:
        """Each file with what the origin says its content is.

        obstore's listing and metadata carry no checksum or encryption headers, so a signed HEAD per
        file (``x-amz-checksum-mode: ENABLED``, see :mod:`node_init.download._s3_head`) asks for the
        object's additional checksum (a full-object CRC32/CRC32C/CRC64NVME, SHA-1 or SHA-256, or a
        per-part composite of one) and its encryption. Without one, the ETag states the MD5 (of the
        whole object, or of the parts' MD5s for a multipart upload), unless the object is SSE-KMS or
        SSE-C encrypted (its ETag is then no MD5). Composites need the part boundaries: two more HEADs
        (``?partNumber=``) per multipart object. Where the HEAD fails, only the ETag is read.
        """
        import concurrent.futures as cf

        from ._s3_head import s3_head

        try:
            head = s3_head(bucket=self._bucket, endpoint=self._endpoint, region=self._region, auth=self._auth,
                           timeout_s=self._timeout_s, retries=self.retries)
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


class HFCacheSource(LocalSource):
    """``hf://org/name[@revision]``: a snapshot in this node's Hugging Face cache, read offline.

    The snapshot is loaded where it is (:attr:`in_place`); nothing is copied.

    Raises:
        FileNotFoundError: when the model or revision is not in the cache (no hub access here).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = self.in_place = hf_snapshot(uri)
        self.boundary = self.root.parent.parent  # snapshot files link to the repo's blobs/


def hf_snapshot(uri: str) -> Path:
    """The local snapshot directory of ``hf://org/name[@revision]`` in this node's HF cache.

    Raises:
        FileNotFoundError: when the model or revision is not in the cache (no hub access: offline).
    """
    spec = uri[len("hf://"):]
    repo, _, revision = spec.partition("@")
    revision = revision or "main"
    cache = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
    ).expanduser()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    ref = repo_dir / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        raise FileNotFoundError(f"{uri}: no snapshot {commit} in the HF cache at {cache} (offline)")
    return snapshot


def s3_credentials(cfg: S3Config) -> tuple[dict[str, object], str]:
    """How to sign S3 requests: ``(S3Store arguments, the identity in words)``.

    In order: ``anonymous: true`` (unsigned); keys in the node's environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``); keys in the config;
    else the standard AWS credential chain through boto3 (``AWS_PROFILE`` and the shared
    credentials/config files, SSO, web identity (EKS/IRSA), container and instance roles),
    when boto3 is installed (the ``[aws]`` extra). Nothing found is an error saying where we looked.

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
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise PermissionError(
            "no S3 credentials: none in the environment (AWS_ACCESS_KEY_ID) or the config "
            "(download.s3.access_key_id), and boto3 is not installed to try the AWS credential chain "
            "(profiles, SSO, web identity, instance roles: install the [aws] extra); set "
            "download.s3.anonymous: true for a public bucket") from None
    session = boto3.Session()
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




def open_source(uri: str, cfg: DownloadConfig) -> Source:
    """The :class:`Source` for a model URI, from the source registry (:data:`SOURCES`).

    Args:
        uri: The model source.
        cfg: The download settings (bounds, retries, each store's section); the node's own
            variables (``AWS_*``) override them.

    Raises:
        ValueError: for a scheme no registered kind takes.
        FileNotFoundError: for an ``hf://`` model missing from this node's HF cache.
        PermissionError: for ``s3://`` with no credentials anywhere (see :func:`s3_credentials`).
    """
    return source_kind(uri).open(uri, cfg)


@contextlib.contextmanager
def source_errors(uri: str, *, node_id: str | None = None) -> Iterator[None]:
    """Re-raise any failure to open or list ``uri`` as a :class:`~node_init.DownloadError`.

    Raises:
        DownloadError: naming the node and the source, for an unsupported or missing
            source, a key that would escape the destination, or a failed listing.
    """
    try:
        yield
    except DownloadError:
        raise
    except UnsafeKeyError as exc:
        raise DownloadError(str(exc), node_id=node_id, source=uri, cause=describe(exc)) from exc
    except Exception as exc:
        from obstore.exceptions import InvalidPathError

        if isinstance(exc, InvalidPathError):  # obstore refuses '..' segments and control characters itself
            # Its message is a multi-line debug dump holding the raw key: keep its first line, escaped.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DownloadError(f"refused an object key that cannot name a file here: {first!r}",
                                node_id=node_id, source=uri, cause=f"{type(exc).__name__}: {first!r}") from exc
        if isinstance(exc, FileNotFoundError | ValueError):
            raise DownloadError(str(exc), node_id=node_id, source=uri, cause=describe(exc)) from exc
        raise DownloadError(f"cannot list the model: {describe(exc)}", node_id=node_id, source=uri,
                            cause=describe(exc)) from exc


def list_source(uri: str, cfg: DownloadConfig, *, node_id: str | None = None) -> tuple[Source, list[RemoteFile]]:
    """Open ``uri`` and list its files, every failure as a :class:`~node_init.DownloadError`.

    Raises:
        DownloadError: see :func:`source_errors`.
    """
    with source_errors(uri, node_id=node_id):
        source = open_source(uri, cfg)
        return source, source.list_files()
