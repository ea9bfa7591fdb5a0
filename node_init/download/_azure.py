"""``azure://`` and ``abfss://``: Azure Blob Storage through its REST API, in Ray's URI forms.

Ray writes ``azure://container@account.blob.core.windows.net/path`` and
``abfss://container@account.dfs.core.windows.net/path`` (obstore's own ``azure://container/path``
is not Ray's). Both are read through the Blob API (it reads Data Lake Gen2 accounts too): one
List Blobs call per 5,000 blobs gives each blob's size, ETag and ``Content-MD5`` (the origin's
checksum where the blob has one: blobs uploaded in blocks often have none, and are then reported
as ``size``); every ranged read is pinned with ``If-Match`` to the listed ETag. Requests go
through urllib3 (a pool per source, streamed bodies), signed with the account key (Shared Key),
a SAS token, or an Azure AD token from ``azure-identity``.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlparse

import structlog

from .._bounds import BACKOFF_FIRST_S, Bounds
from .._config import AzureConfig, reveal
from ._checksums import OriginChecksum
from ._http import HttpClient, check_status
from ._source import Entry, RemoteFile, SourceChanged, SourceKind, check_prefix, list_under

if TYPE_CHECKING:
    from .._config import DownloadConfig

_log = structlog.get_logger("node_init.download")
#: The Blob service version every request asks for (Azurite 3.35 serves it).
AZURE_API_VERSION = "2021-12-02"
_SCOPE = "https://storage.azure.com/.default"


def azure_parts(uri: str) -> tuple[str, str, str, str]:
    """``(scheme, container, account, prefix)`` of a Ray-form Azure URI."""
    parsed = urlparse(uri)
    container, _, host = parsed.netloc.partition("@")
    return parsed.scheme, container, host.split(".", 1)[0], parsed.path.strip("/")


_AZURE_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]$")
_AZURE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")


def check_azure(uri: str) -> None:
    """Raise ``ValueError`` naming what is wrong with a Ray-form Azure URI."""
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
    check_prefix(uri, word="path")


def azure_shared_key(account: str, key: str, method: str, url: str, headers: dict[str, str]) -> str:
    """The Shared Key signature of a Blob service request (its string-to-sign, HMAC-SHA256 with the key);
    public for the test servers (:class:`~node_init.testing.AzuriteServer` signs its own setup calls)."""
    low = {k.lower(): v for k, v in headers.items()}
    fields = ["content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
              "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range"]
    parsed = urlparse(url)
    canonical_headers = "".join(f"{k}:{low[k].strip()}\n" for k in sorted(low) if k.startswith("x-ms-"))
    params: dict[str, list[str]] = {}
    for k, v in parse_qsl(parsed.query, keep_blank_values=True):
        params.setdefault(k.lower(), []).append(v)
    resource = f"/{account}{parsed.path}" + "".join(f"\n{k}:{','.join(sorted(params[k]))}" for k in sorted(params))
    length = low.get("content-length", "")
    values = [low.get(f, "") if f != "content-length" else ("" if length == "0" else length) for f in fields]
    text = "\n".join([method, *values]) + "\n" + canonical_headers + resource
    return base64.b64encode(hmac.new(base64.b64decode(key), text.encode(), hashlib.sha256).digest()).decode()


class _AadToken:
    """An Azure AD token from an ``azure-identity`` credential, fetched again before it expires."""

    def __init__(self, credential: Any, looked: str) -> None:
        self._credential, self._looked = credential, looked
        self._token: Any = None
        self._lock = threading.Lock()

    def header(self) -> str:
        import time

        with self._lock:
            if self._token is None or self._token.expires_on - 300 < time.time():
                try:
                    self._token = self._credential.get_token(_SCOPE)
                except Exception as exc:  # azure-identity's errors: none of its credentials answered
                    raise PermissionError(f"no Azure credentials: {type(exc).__name__} (looked at {self._looked}); "
                                          "set download.azure.anonymous: true for a public container") from None
            return f"Bearer {self._token.token}"


def azure_credentials(cfg: AzureConfig, account: str, bounds: Bounds) -> tuple[str, object, str]:
    """``(kind, secret or token source, the identity in words)``, in Azure's order: anonymous; an
    account key (the config, ``AZURE_STORAGE_KEY``); a SAS token (the config,
    ``AZURE_STORAGE_SAS_TOKEN``); then ``azure-identity``: a service principal, workload identity,
    the managed identity. azure-identity's calls (the token endpoint, the managed identity's) are given
    ``bounds``: connect and read bounds, our retry count and backoff (azure-core's pipeline settings).

    Raises:
        PermissionError: nothing found (the message says where it looked, never a secret).
    """
    env = os.environ
    if cfg.anonymous:
        return "anonymous", None, "no identity (anonymous: unsigned requests)"
    for kind, value, where in (("key", reveal(cfg.account_key), "download.azure.account_key"),
                               ("key", env.get("AZURE_STORAGE_KEY"), "AZURE_STORAGE_KEY"),
                               ("sas", reveal(cfg.sas_token), "download.azure.sas_token"),
                               ("sas", env.get("AZURE_STORAGE_SAS_TOKEN"), "AZURE_STORAGE_SAS_TOKEN")):
        if value:
            what = f"account {account}'s key" if kind == "key" else "a SAS token"
            return kind, value.lstrip("?") if kind == "sas" else value, f"{what} (from {where})"
    looked = ("download.azure.account_key, AZURE_STORAGE_KEY, download.azure.sas_token, AZURE_STORAGE_SAS_TOKEN, "
              "a service principal (AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET), workload identity "
              "(AZURE_FEDERATED_TOKEN_FILE), the managed identity")
    try:
        from azure.identity import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
            ChainedTokenCredential,
            EnvironmentCredential,
            ManagedIdentityCredential,
            WorkloadIdentityCredential,
        )
    except ImportError:
        raise PermissionError(f"no Azure credentials: looked at {looked.rsplit(', a service', 1)[0]}; "
                              "azure-identity is not installed to try a service principal, workload identity "
                              "or the managed identity (install the [azure] extra); set "
                              "download.azure.anonymous: true for a public container") from None
    # azure-core's transport and retry settings, each credential's pipeline: never the library's defaults.
    pipeline = {"connection_timeout": bounds.connect_s, "read_timeout": bounds.request_s,
                "retry_total": bounds.retries, "retry_backoff_factor": BACKOFF_FIRST_S,
                "retry_backoff_max": bounds.retry_wait_s}
    chain = [EnvironmentCredential(**pipeline)]
    if env.get("AZURE_FEDERATED_TOKEN_FILE"):
        chain.append(WorkloadIdentityCredential(**pipeline))
    chain.append(ManagedIdentityCredential(**pipeline))
    where = ("a service principal" if env.get("AZURE_CLIENT_SECRET") else "workload identity"
             if env.get("AZURE_FEDERATED_TOKEN_FILE") else "the managed identity")
    return "aad", _AadToken(ChainedTokenCredential(*chain), looked), \
        f"{env.get('AZURE_CLIENT_ID') or 'an identity'} (from {where})"


class AzureSource:
    """``azure://`` / ``abfss://`` (see the module doc); every read pinned to the listed ETag.

    Args:
        uri: ``azure://container@account.blob.core.windows.net/prefix`` or
            ``abfss://container@account.dfs.core.windows.net/prefix``.
        cfg: The ``download.azure`` settings.
        bounds: Its requests' bounds (:meth:`~node_init.Bounds.of_download`).
    """

    in_place: Path | None = None
    local = False

    def __init__(self, uri: str, cfg: AzureConfig, *, bounds: Bounds) -> None:
        _, self.container, self.account, self.prefix = azure_parts(uri)
        self.uri, self.bounds = uri, bounds
        self.endpoint = (cfg.endpoint_url or f"https://{self.account}.blob.core.windows.net").rstrip("/")
        self._kind, self._secret, self.identity = azure_credentials(cfg, self.account, bounds)
        self._http = HttpClient(request_timeout_s=bounds.request_s, connect_s=bounds.connect_s,
                                read_timeout_s=bounds.silence_s)

    def __repr__(self) -> str:
        return f"AzureSource({self.uri!r}, identity={self.identity!r})"

    def _path(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _url(self, path: str, query: dict[str, str]) -> str:
        """The request URL, a SAS token's parameters appended."""
        pairs = list(query.items()) + (parse_qsl(str(self._secret)) if self._kind == "sas" else [])
        return f"{self.endpoint}{path}" + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in pairs)
                                           if pairs else "")

    def _headers(self, method: str, url: str, extra: dict[str, str]) -> dict[str, str]:
        headers = {"x-ms-version": AZURE_API_VERSION, "x-ms-date": email.utils.formatdate(usegmt=True), **extra}
        if self._kind == "key":
            headers["Authorization"] = f"SharedKey {self.account}:{self._shared_key(method, url, headers)}"
        elif self._kind == "aad":
            headers["Authorization"] = self._secret.header()  # type: ignore[attr-defined]
        return headers

    def _shared_key(self, method: str, url: str, headers: dict[str, str]) -> str:
        return azure_shared_key(self.account, str(self._secret), method, url, headers)

    def _check(self, response: Any, what: str) -> None:
        check_status(response, what, denied=f"access denied to {self.uri} for {self.identity}",
                     missing=f"{what}: not found in {self.uri}", code_header="x-ms-error-code")

    def list_files(self) -> list[RemoteFile]:
        """Every blob under the prefix, with its ETag and, where it has one, its Content-MD5."""
        return list_under(self.uri, self.prefix, self._pages, retries=self.bounds.retries,
                          wait_s=self.bounds.retry_wait_s, none="blobs")

    def _pages(self, base: str) -> Iterator[list[Entry]]:
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "prefix": base, "maxresults": "5000",
                     **({"marker": marker} if marker else {})}
            url = self._url(f"/{quote(self.container)}", query)
            response = self._http.request("GET", url, headers=self._headers("GET", url, {}), preload_content=True)
            self._check(response, "listing")
            root = ET.fromstring(response.data)
            page: list[Entry] = []
            for blob in root.iter("Blob"):
                props = blob.find("Properties")
                # A Data Lake directory is no file.
                if props is None or (props.findtext("ResourceType") or "file") == "directory":
                    continue
                md5 = props.findtext("Content-MD5") or ""
                page.append((blob.findtext("Name") or "", int(props.findtext("Content-Length") or 0),
                             props.findtext("Etag") or "", OriginChecksum("md5", md5) if md5 else None))
            yield page
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of the listed version, yielded as they arrive.

        Raises:
            SourceChanged: the blob's ETag is no longer the listed one (replaced since the listing).
        """
        if end <= start:
            return
        url = self._url(f"/{quote(self.container)}/{quote(self._path(file.key), safe='/')}", {})
        extra = {"x-ms-range": f"bytes={start}-{end - 1}", **({"If-Match": file.etag} if file.etag else {})}
        response = self._http.open_stream(url, self._headers("GET", url, extra))
        if response.status == 412:
            response.release_conn()
            raise SourceChanged(file.key, f"ETag {file.etag} is no longer current")
        self._check(response, file.key)
        yield from self._http.body(response, file.key)


def _open(uri: str, cfg: DownloadConfig) -> AzureSource:
    return AzureSource(uri, cfg.azure, bounds=Bounds.of_download(cfg))


KIND = SourceKind(
    name="azure", schemes=("azure://", "abfss://"), remote=True, share="auto",
    checksums="the blob's Content-MD5 where it has one (blobs uploaded in blocks often have none)",
    check=check_azure, open=_open,
    credentials="download.azure.account_key, AZURE_STORAGE_KEY, download.azure.sas_token, AZURE_STORAGE_SAS_TOKEN, "
                "then azure-identity: a service principal, workload identity, the managed identity; "
                "download.azure.anonymous for a public container",
)
