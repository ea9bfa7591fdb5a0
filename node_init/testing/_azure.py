"""A real Azure Blob Storage emulator on 127.0.0.1 for tests: Azurite (from npm, pinned to 3.35.0)."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

#: Azurite's well-known development account and key (public: documented by Microsoft for the emulator).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: Where ``make setup`` installs it (``npm install azurite@3.35.0``, the last release for Node 20).
AZURITE_HOME = Path(__file__).resolve().parents[2] / ".cache" / "azurite"


def azurite_command() -> str:
    """The ``azurite-blob`` executable: ``AZURITE_BLOB``, the project's ``.cache/azurite``, else ``PATH``.

    Raises:
        FileNotFoundError: none is installed (the message says how to install it).
    """
    for candidate in (os.environ.get("AZURITE_BLOB"), str(AZURITE_HOME / "node_modules" / ".bin" / "azurite-blob"),
                      shutil.which("azurite-blob")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("azurite-blob not found: run `make setup`, or `npm install azurite@3.35.0` and set "
                            "AZURITE_BLOB to its node_modules/.bin/azurite-blob")


class AzuriteServer:
    """Azurite's Blob service on a free port of 127.0.0.1 (in memory), with helpers to fill containers.

    Point a config at it with ``download.azure: {endpoint_url: server.endpoint, account_key: ACCOUNT_KEY}``
    and a URI of Ray's form naming the emulator's account:
    ``azure://container@devstoreaccount1.blob.core.windows.net/prefix``. Azurite checks Shared Key
    signatures and SAS tokens, honours ``If-Match``, and keeps a blob's ``Content-MD5`` when it is
    uploaded in one piece (a blob put in blocks has none, as on Azure). It has no Data Lake (dfs)
    endpoint: ``abfss://`` URIs are read through the Blob API, as they are on Azure.

    Example:
        >>> server = AzuriteServer().start()  # doctest: +SKIP
        >>> server.upload_dir("/models/tiny", "models", "tiny")  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self.root = self.endpoint = ""

    def start(self, timeout_s: float = 30.0) -> AzuriteServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self._dir = tempfile.mkdtemp(prefix="azurite-")
        self._proc = subprocess.Popen(
            [azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
             "--skipApiVersionCheck", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self._dir)  # its debug files go there
        self.root = f"http://127.0.0.1:{port}"  # what a FaultProxy forwards to
        self.endpoint = f"{self.root}/{ACCOUNT}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return self
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"azurite exited with {self._proc.returncode}") from None
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"azurite did not listen on port {port} within {timeout_s}s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _call(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
        from ..download import AZURE_API_VERSION, azure_shared_key

        url = self.endpoint + path
        # urllib would add a form Content-Type to a PUT after the signature: name one that is signed.
        h = {"x-ms-version": AZURE_API_VERSION, "x-ms-date": email.utils.formatdate(usegmt=True),
             "Content-Length": str(len(body)), "Content-Type": "application/octet-stream", **(headers or {})}
        h["Authorization"] = f"SharedKey {ACCOUNT}:{azure_shared_key(ACCOUNT, ACCOUNT_KEY, method, url, h)}"
        request = urllib.request.Request(url, data=body if method == "PUT" else None, method=method, headers=h)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            if exc.code == 409:  # it exists already
                return 409
            raise

    def container_sas(self, container: str, permissions: str = "rl", hours: float = 1.0) -> str:
        """A service SAS token for ``container`` (read and list by default), as the portal would give."""
        import datetime
        import hmac
        from urllib.parse import urlencode

        from ..download import AZURE_API_VERSION

        expiry = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = "\n".join([permissions, "", expiry, f"/blob/{ACCOUNT}/{container}", "", "", "", AZURE_API_VERSION, "c",
                          "", "", "", "", "", "", ""])
        sig = base64.b64encode(hmac.new(base64.b64decode(ACCOUNT_KEY), text.encode(), hashlib.sha256).digest())
        return urlencode({"sv": AZURE_API_VERSION, "se": expiry, "sr": "c", "sp": permissions, "sig": sig.decode()})

    def create_container(self, container: str, *, public: bool = False) -> None:
        """Create ``container`` (``public``: anonymous reads of its blobs and listings)."""
        self._call("PUT", f"/{container}?restype=container",
                   headers={"x-ms-blob-public-access": "container"} if public else {})

    def put(self, container: str, name: str, data: bytes, *, blocks: int = 0) -> None:
        """Upload one blob: in one piece (it keeps a Content-MD5), or in ``blocks`` blocks (it has none)."""
        path = f"/{container}/{quote(name, safe='/')}"
        if not blocks:
            md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
            self._call("PUT", path, data, {"x-ms-blob-type": "BlockBlob", "Content-MD5": md5})
            return
        step = max(1, -(-len(data) // blocks))
        ids = []
        for i, lo in enumerate(range(0, len(data), step)):
            block = base64.b64encode(f"{i:08d}".encode()).decode()
            self._call("PUT", f"{path}?comp=block&blockid={quote(block, safe='')}", data[lo:lo + step])
            ids.append(block)
        body = ("<?xml version='1.0' encoding='utf-8'?><BlockList>"
                + "".join(f"<Latest>{b}</Latest>" for b in ids) + "</BlockList>").encode()
        self._call("PUT", f"{path}?comp=blocklist", body, {"Content-Type": "application/xml"})

    def upload_dir(self, local: str | os.PathLike[str], container: str, prefix: str, *,
                   blocks: int = 0) -> dict[str, int]:
        """Upload every file under ``local`` to ``container/prefix/...``; return ``{key: size}``."""
        self.create_container(container)
        sizes = {}
        root = Path(local)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = path.relative_to(root).as_posix()
                self.put(container, f"{prefix}/{key}" if prefix else key, path.read_bytes(), blocks=blocks)
                sizes[key] = path.stat().st_size
        return sizes
