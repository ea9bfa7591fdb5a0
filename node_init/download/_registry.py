"""One registry of model sources: each kind declared once, and everything else reads it.

A :class:`SourceKind` says which URIs it takes, how such a URI is checked when a config is
parsed (before any Ray call), how it is opened on a node, and what it can do: whether its bytes
come over the network (overlap's "is this remote"), whether the nodes of an init may share one
fetch of it, what the origin says of each file's bytes, and where its credentials come from.
The config's check, :func:`~node_init.download.open_source`, the overlap policy, the share
policy and the README's source table all read :data:`SOURCES`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

import attrs

if TYPE_CHECKING:
    from .._config import DownloadConfig
    from ._sources import Source


@attrs.frozen
class SourceKind:
    """One kind of model source.

    Attributes:
        name: A short name (``s3``, ``local``, ``hf-cache``).
        schemes: The URI schemes it takes (``"s3://"``); ``""`` stands for a plain local path.
        remote: Its bytes come over the network (a local path or a node's own cache do not).
        share: Under ``download.share``: ``auto`` shares it by default, ``on`` only when asked
            (a mount every node reads), ``never`` (it is loaded where it is).
        checksums: What the origin says of each file's bytes, in words.
        credentials: Where its credentials come from, in words.
        check: Checks a URI when a config is parsed; raises ``ValueError`` saying what is wrong.
        open: Opens a URI on a node, with a download config's settings.
    """

    name: str
    schemes: tuple[str, ...]
    remote: bool
    share: Literal["auto", "on", "never"]
    checksums: str
    credentials: str
    check: Callable[[str], None]
    open: Callable[[str, DownloadConfig], Source]

    def takes(self, uri: str) -> bool:
        """Whether ``uri`` is of this kind."""
        if "://" not in uri:
            return "" in self.schemes
        return uri.split("://", 1)[0] + "://" in self.schemes


#: Every registered kind, by name, in the order they are tried.
SOURCES: dict[str, SourceKind] = {}


def register_source(kind: SourceKind) -> SourceKind:
    """Add a kind (a later one with the same name replaces it)."""
    SOURCES[kind.name] = kind
    return kind


def source_kind(uri: str) -> SourceKind:
    """The kind that takes ``uri``.

    Raises:
        ValueError: no registered kind takes its scheme (the message lists those that do).
    """
    for kind in SOURCES.values():
        if kind.takes(uri):
            return kind
    schemes = ", ".join(s for k in SOURCES.values() for s in k.schemes if s)
    raise ValueError(f"unsupported scheme in {uri!r}; expected one of {schemes} or a local path")


def check_source(uri: str) -> None:
    """Check a model source URI as a config is parsed (no network, no node).

    Raises:
        ValueError: saying what is wrong.
    """
    if not uri.strip():
        raise ValueError("must not be empty (leave it out to let the engine load model_id itself)")
    source_kind(uri).check(uri)


def _offline_hub(uri: str) -> bool:
    """An ``hf://`` source under ``HF_HUB_OFFLINE``: this node's cache, loaded where it is."""
    from ._hub import offline

    return uri.startswith("hf://") and offline()


def is_remote_source(uri: str | None) -> bool:
    """Whether ``uri``'s bytes come over the network."""
    return bool(uri) and source_kind(uri or "").remote and not _offline_hub(uri or "")


def shares(uri: str | None, setting: str) -> bool:
    """Whether ``download.share: <setting>`` shares a fetch of ``uri`` between nodes."""
    if not uri or setting == "off" or _offline_hub(uri):
        return False
    kind = source_kind(uri).share
    return kind == "auto" or (kind == "on" and setting == "on")


# -- the kinds shipped here ---------------------------------------------------------------------

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def s3_bucket(uri: str) -> tuple[str, bool]:
    """``(bucket, anonymous)`` of ``s3://[anonymous@]bucket/prefix`` (Ray's form for unsigned reads)."""
    netloc = urlparse(uri).netloc
    user, _, bucket = netloc.rpartition("@")
    return bucket, user == "anonymous"


def _check_s3(uri: str) -> None:
    netloc = urlparse(uri).netloc
    bucket, anonymous = s3_bucket(uri)
    if "@" in netloc and not anonymous:
        raise ValueError(f"{uri!r}: only 'anonymous@' may stand before the bucket (s3://anonymous@bucket/prefix)")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (s3://bucket/prefix)")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    if any(p in (".", "..") for p in uri.split("://", 1)[1].split("/")[1:]):
        raise ValueError(f"{uri!r}: '.' and '..' are not allowed in the prefix")


_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$")


def _check_gcs(uri: str) -> None:
    netloc = urlparse(uri).netloc
    user, _, bucket = netloc.rpartition("@")
    if "@" in netloc and user != "anonymous":
        raise ValueError(f"{uri!r}: only 'anonymous@' may stand before the bucket (gs://anonymous@bucket/prefix)")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (gs://bucket/prefix)")
    # GCS's rules: 3-63 characters (222 with dots, each dot-separated part at most 63), a-z 0-9 - _ .,
    # starting and ending with a letter or digit, not starting with "goog".
    parts = bucket.split(".")
    if not _GCS_BUCKET.match(bucket) or any(len(p) > 63 or not p for p in parts) or \
            ("." not in bucket and len(bucket) > 63) or bucket.startswith("goog"):
        raise ValueError(f"{bucket!r} is not a valid GCS bucket name (3-63 characters: a-z, 0-9, '-', '_', '.'; "
                         "starting and ending with a letter or digit; not starting with 'goog')")
    if any(p in (".", "..") for p in uri.split("://", 1)[1].split("/")[1:]):
        raise ValueError(f"{uri!r}: '.' and '..' are not allowed in the prefix")


_AZURE_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]$")
_AZURE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")


def _check_azure(uri: str) -> None:
    scheme = uri.split("://", 1)[0]
    netloc = urlparse(uri).netloc
    form = f"{scheme}://container@account.{'dfs' if scheme == 'abfss' else 'blob'}.core.windows.net/path"
    container, at, host = netloc.partition("@")
    if not at or not container:
        raise ValueError(f"{uri!r} names no container@account ({form})")
    # Ray's host checks: abfss:// is a Data Lake (dfs) host; azure:// a blob or dfs host.
    suffixes = (".dfs.core.windows.net",) if scheme == "abfss" else (".blob.core.windows.net", ".dfs.core.windows.net")
    if not host.endswith(suffixes):
        raise ValueError(f"{uri!r}: the host must end with {' or '.join(suffixes)} ({form})")
    account = host.split(".", 1)[0]
    if not _AZURE_ACCOUNT.match(account):
        raise ValueError(f"{account!r} is not a valid storage account name (3-24 lowercase letters and digits)")
    if not _AZURE_CONTAINER.match(container) and container != "$root":
        raise ValueError(f"{container!r} is not a valid container name (3-63 characters: a-z, 0-9 and single "
                         "hyphens, starting and ending with a letter or digit)")
    if any(p in (".", "..") for p in urlparse(uri).path.split("/")[1:]):
        raise ValueError(f"{uri!r}: '.' and '..' are not allowed in the path")


def _check_hf(uri: str) -> None:
    from ._hub import check_hub_uri

    check_hub_uri(uri)


def _check_local(uri: str) -> None:
    if uri.startswith("file://") and not uri[len("file://"):].startswith("/"):
        raise ValueError(f"{uri!r}: a file:// URI needs an absolute path (file:///models/x)")
    # A plain path is checked on each node, where it must exist. A relative one may be a Hub id
    # (org/name, as Ray writes it): the replica decides which (see node_init.download.hub_or_path).
    from ._hub import is_hub_id

    if not uri.startswith(("/", "~", ".", "file://")) and not is_hub_id(uri) and not os.path.exists(uri):
        raise ValueError(f"{uri!r} is neither a local path (no such file or directory here) nor a Hugging Face "
                         "Hub id (org/name)")


def _open_s3(uri: str, cfg: DownloadConfig) -> Source:
    from ._sources import S3Source

    return S3Source(uri, cfg.s3, request_timeout_s=cfg.stall_timeout_s, read_timeout_s=cfg.timeout_s,
                    retries=cfg.retries)


def _silence_s(cfg: DownloadConfig) -> float:
    """How long one connection of an HTTP source (urllib3: the bound is per socket read) may send nothing
    before it is dropped and the range read again: a third of the stall bound, so one hung connection
    is retried well before the download counts as stalled."""
    from .._bounds import Bounds

    return Bounds.of_download(cfg).silence_s


def _open_gcs(uri: str, cfg: DownloadConfig) -> Source:
    from ._gcs import GCSSource

    return GCSSource(uri, cfg.gcs, request_timeout_s=cfg.stall_timeout_s, read_timeout_s=_silence_s(cfg),
                     retries=cfg.retries)


def _open_azure(uri: str, cfg: DownloadConfig) -> Source:
    from ._azure import AzureSource

    return AzureSource(uri, cfg.azure, request_timeout_s=cfg.stall_timeout_s, read_timeout_s=_silence_s(cfg),
                       retries=cfg.retries)


def _open_hf(uri: str, cfg: DownloadConfig) -> Source:
    from ._hub import HubSource, offline
    from ._sources import HFCacheSource

    if offline():  # HF_HUB_OFFLINE: this node's Hugging Face cache, as huggingface_hub reads it
        return HFCacheSource(uri)
    return HubSource(uri, cfg.hf, request_timeout_s=cfg.stall_timeout_s, read_timeout_s=_silence_s(cfg),
                     retries=cfg.retries)


def _open_local(uri: str, cfg: DownloadConfig) -> Source:
    from ._sources import LocalSource

    return LocalSource(uri)


register_source(SourceKind(
    name="s3", schemes=("s3://", "s3a://"), remote=True, share="auto",
    checksums="the object's additional checksum (CRC64NVME, CRC32C, CRC32, SHA-256, SHA-1; whole or per part), "
              "else the ETag's MD5 (of the parts' MD5s for a multipart upload; not for SSE-KMS/SSE-C)",
    check=_check_s3, open=_open_s3,
    credentials="the node's AWS variables, download.s3 keys, then the AWS credential chain; "
                "s3://anonymous@bucket or download.s3.anonymous for unsigned reads",
))
register_source(SourceKind(
    name="gcs", schemes=("gs://",), remote=True, share="auto",
    checksums="the CRC32C GCS keeps for every object (else its md5Hash)", check=_check_gcs, open=_open_gcs,
    credentials="download.gcs.credentials_file, GOOGLE_APPLICATION_CREDENTIALS, the application-default file, "
                "the metadata server; gs://anonymous@bucket or download.gcs.anonymous for unsigned reads",
))
register_source(SourceKind(
    name="azure", schemes=("azure://", "abfss://"), remote=True, share="auto",
    checksums="the blob's Content-MD5 where it has one (blobs uploaded in blocks often have none)",
    check=_check_azure, open=_open_azure,
    credentials="download.azure.account_key, AZURE_STORAGE_KEY, download.azure.sas_token, AZURE_STORAGE_SAS_TOKEN, "
                "then azure-identity: a service principal, workload identity, the managed identity; "
                "download.azure.anonymous for a public container",
))
register_source(SourceKind(
    name="hf", schemes=("hf://",), remote=True, share="auto",
    checksums="the Hub's SHA-256 of an LFS file, the git blob SHA-1 of a small one (HF_HUB_OFFLINE=1: none, "
              "this node's Hugging Face cache, loaded where it is)",
    check=_check_hf, open=_open_hf,
    credentials="download.hf.token, HF_TOKEN, the Hugging Face CLI's token file; the endpoint from HF_ENDPOINT or "
                "download.hf.endpoint_url",
))
register_source(SourceKind(
    name="local", schemes=("file://", ""), remote=False, share="on", checksums="none (size and mtime pin a file)",
    credentials="none (the node's file system)", check=_check_local, open=_open_local,
))
