"""``gs://bucket/prefix``: Google Cloud Storage through its JSON API.

Chosen over obstore here because the JSON API's listing returns, in one call per page, each object's
size, generation, ``crc32c`` and ``md5Hash``: the generation pins every ranged read
(``?generation=N``: honoured by GCS and by fake-gcs-server, which ignores ``If-Match``), and the CRC32C
checks every byte against what the origin states; obstore's listings carry neither. Requests go
through urllib3 (a pool per source, streamed bodies); credentials as GCP tools find them, google-auth's
own calls through urllib3 too (:func:`auth_transport`: the ``[gcp]`` extra needs no ``requests``).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

import structlog

from .._bounds import Bounds
from .._config import GCSConfig
from ._checksums import OriginChecksum
from ._http import HttpClient, check_status
from ._source import Entry, RemoteFile, SourceChanged, SourceKind, check_prefix, list_under

if TYPE_CHECKING:
    from .._config import DownloadConfig

_log = structlog.get_logger("node_init.download")
GOOGLE_ENDPOINT = "https://storage.googleapis.com"
_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


def gcs_bucket(uri: str) -> tuple[str, bool]:
    """``(bucket, anonymous)`` of ``gs://[anonymous@]bucket/prefix`` (Ray's form for unsigned reads).

    Raises:
        ValueError: something other than ``anonymous@`` stands before the bucket.
    """
    user, at, bucket = urlparse(uri).netloc.rpartition("@")
    if at and user != "anonymous":
        raise ValueError(f"{uri!r}: only 'anonymous@' may stand before the bucket (gs://anonymous@bucket/prefix)")
    return bucket, user == "anonymous"


_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$")


def check_gcs(uri: str) -> None:
    """Raise ``ValueError`` naming what is wrong with ``gs://[anonymous@]bucket/prefix``."""
    bucket, _ = gcs_bucket(uri)
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (gs://bucket/prefix)")
    # GCS's rules: 3-63 characters (222 with dots, each dot-separated part at most 63), a-z 0-9 - _ .,
    # starting and ending with a letter or digit, not starting with "goog".
    parts = bucket.split(".")
    if not _GCS_BUCKET.match(bucket) or any(len(p) > 63 or not p for p in parts) or \
            ("." not in bucket and len(bucket) > 63) or bucket.startswith("goog"):
        raise ValueError(f"{bucket!r} is not a valid GCS bucket name (3-63 characters: a-z, 0-9, '-', '_', '.'; "
                         "starting and ending with a letter or digit; not starting with 'goog')")
    check_prefix(uri)


def gcs_endpoint(cfg: GCSConfig) -> str:
    """The JSON API's base URL: the node's ``STORAGE_EMULATOR_HOST`` (as Google's clients read it), the
    config's ``endpoint_url``, else Google's."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator:
        return emulator if "://" in emulator else f"http://{emulator}"
    return (cfg.endpoint_url or GOOGLE_ENDPOINT).rstrip("/")


def auth_transport(bounds: Bounds) -> Any:
    """google-auth's transport for its own calls (token refresh, the metadata server's check): urllib3,
    a core dependency, rather than ``requests``, with our connect and request bounds and no retries of
    its own (google-auth's default transport has neither a bound nor our retry policy)."""
    import google.auth.transport.urllib3
    import urllib3

    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=bounds.connect_s, read=bounds.request_s),
                               retries=False)
    return google.auth.transport.urllib3.Request(pool)  # type: ignore[no-untyped-call]


class _Token:
    """An OAuth2 access token from ``google-auth`` credentials, refreshed before it expires."""

    def __init__(self, credentials: Any, where: str, transport: Any) -> None:
        self.credentials, self.where, self._transport = credentials, where, transport
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        with self._lock:
            if not self.credentials.valid:
                self.credentials.refresh(self._transport)
            return {"Authorization": f"Bearer {self.credentials.token}"}


def gcs_credentials(cfg: GCSConfig, anonymous: bool, bounds: Bounds) -> tuple[_Token | None, str]:
    """``(token or None, the identity in words)``, in GCP's order: anonymous; ``credentials_file``;
    ``GOOGLE_APPLICATION_CREDENTIALS``; the application-default file; the metadata server. google-auth's
    calls go through :func:`auth_transport` (``bounds``).

    Raises:
        PermissionError: no credentials could be found or loaded (the message says where it looked).
    """
    if anonymous or cfg.anonymous:
        return None, "no identity (anonymous: unsigned requests)"
    try:
        import google.auth
        import google.auth.exceptions
    except ImportError:
        raise PermissionError("no GCS credentials: google-auth is not installed to read them (pip install "
                              "google-auth); set download.gcs.anonymous: true for a public bucket") from None
    path = cfg.credentials_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    transport = auth_transport(bounds)
    try:
        if path:
            credentials, _ = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
                os.path.expanduser(path), scopes=[_SCOPE], request=transport)
            where = f"the credentials file {path}"
        else:  # the application-default file, then the metadata server (on GCE/GKE only)
            credentials, _ = google.auth.default(scopes=[_SCOPE], request=transport)
            where = "application-default credentials"
    except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as exc:
        raise PermissionError(f"no GCS credentials: {type(exc).__name__}: {exc} (looked at "
                              "download.gcs.credentials_file, GOOGLE_APPLICATION_CREDENTIALS, the application-"
                              "default file, the metadata server); set download.gcs.anonymous: true for a "
                              "public bucket") from None
    email = getattr(credentials, "service_account_email", None)
    return _Token(credentials, where, transport), f"{email or type(credentials).__name__} (from {where})"


class GCSSource:
    """``gs://bucket/prefix`` (see the module doc); every read pinned to the listed generation.

    Args:
        uri: ``gs://[anonymous@]bucket/prefix``.
        cfg: The ``download.gcs`` settings.
        bounds: Its requests' bounds (:meth:`~node_init.Bounds.of_download`).
    """

    in_place: Path | None = None
    local = False

    def __init__(self, uri: str, cfg: GCSConfig, *, bounds: Bounds) -> None:
        bucket, anonymous = gcs_bucket(uri)
        if not bucket:
            raise ValueError(f"model source {uri!r} has no bucket")
        self.uri, self.bucket, self.bounds = uri, bucket, bounds
        self.prefix = urlparse(uri).path.strip("/")
        self.endpoint = gcs_endpoint(cfg)
        self._token, self.identity = gcs_credentials(cfg, anonymous, bounds)
        self._http = HttpClient(request_timeout_s=bounds.request_s, connect_s=bounds.connect_s,
                                read_timeout_s=bounds.silence_s)

    def __repr__(self) -> str:
        return f"GCSSource({self.uri!r}, identity={self.identity!r})"

    def _headers(self) -> dict[str, str]:
        return self._token.header() if self._token is not None else {}

    def _path(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _check(self, response: Any, what: str) -> None:
        check_status(response, what, denied=f"access denied to {self.uri} for {self.identity}",
                     missing=f"{what}: not found in {self.uri}")

    def list_files(self) -> list[RemoteFile]:
        """Every object under the prefix, with its generation and the CRC32C GCS keeps for every object."""
        return list_under(self.uri, self.prefix, self._pages, retries=self.bounds.retries,
                          wait_s=self.bounds.retry_wait_s)

    def _pages(self, base: str) -> Iterator[list[Entry]]:
        token = ""
        while True:
            fields = {"prefix": base, "maxResults": "1000",
                      "fields": "items(name,size,generation,crc32c,md5Hash),nextPageToken"}
            if token:
                fields["pageToken"] = token
            response = self._http.request("GET", f"{self.endpoint}/storage/v1/b/{quote(self.bucket)}/o",
                                          fields=fields, headers=self._headers(), preload_content=True)
            self._check(response, "listing")
            page = response.json()
            yield [(str(item["name"]), int(item["size"]), str(item["generation"]),
                    OriginChecksum("crc32c", str(item["crc32c"])) if item.get("crc32c")
                    else OriginChecksum("md5", str(item["md5Hash"])) if item.get("md5Hash") else None)
                   for item in page.get("items", [])]
            token = str(page.get("nextPageToken") or "")
            if not token:
                return

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of the listed generation, yielded as they arrive.

        Raises:
            SourceChanged: that generation is gone (replaced or deleted since the listing).
        """
        if end <= start:
            return
        url = f"{self.endpoint}/download/storage/v1/b/{quote(self.bucket)}/o/{quote(self._path(file.key), safe='')}"
        fields = {"alt": "media", **({"generation": file.etag} if file.etag else {})}
        headers = {**self._headers(), "Range": f"bytes={start}-{end - 1}"}
        response = self._http.open_stream(url, headers, fields)
        if response.status == 404 and file.etag:
            response.release_conn()
            raise SourceChanged(file.key, f"generation {file.etag} is gone")
        self._check(response, file.key)
        yield from self._http.body(response, file.key)


def _open(uri: str, cfg: DownloadConfig) -> GCSSource:
    return GCSSource(uri, cfg.gcs, bounds=Bounds.of_download(cfg))


KIND = SourceKind(
    name="gcs", schemes=("gs://",), remote=True, share="auto",
    checksums="the CRC32C GCS keeps for every object (else its md5Hash)", check=check_gcs, open=_open,
    credentials="download.gcs.credentials_file, GOOGLE_APPLICATION_CREDENTIALS, the application-default file, "
                "the metadata server; gs://anonymous@bucket or download.gcs.anonymous for unsigned reads",
)
