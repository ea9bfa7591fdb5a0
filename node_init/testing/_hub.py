"""A small Hugging Face Hub on 127.0.0.1 for tests: the API and ``resolve`` routes downloads use.

There is no Hub emulator to run, so this one serves the routes ``huggingface_hub`` and our Hub source
call, with the headers the Hub sends (tests prove it honest: the official client's
``snapshot_download`` against it gets the same bytes):

- ``GET /api/models/{repo}[/revision/{rev}]``: ``id``, ``sha`` (the commit), ``siblings``, ``gated``;
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: each file's ``oid`` (its git blob SHA-1), ``size`` and,
  for an LFS file, ``lfs: {oid: <sha256>, size}``;
- ``GET``/``HEAD /{repo}/resolve/{rev}/{path}``: the bytes (``Range`` honoured), with ``X-Repo-Commit``,
  ``ETag`` (the git SHA-1, or the SHA-256 for an LFS file) and ``X-Linked-Etag``/``X-Linked-Size``.

A gated repo answers 401 without the token; faults: a shared bandwidth cap, 429 with ``Retry-After``,
a flipped byte under true headers, a branch moved to a new commit while it serves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

#: Files the Hub keeps in LFS (its default .gitattributes covers these): their digest is a SHA-256.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    """Git's id of a blob: the SHA-1 of ``blob <size>\\0`` and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


class HubServer:
    """A Hub-compatible HTTP server (model repos only) on a free port of 127.0.0.1.

    Point ``HF_ENDPOINT`` (or ``download.hf.endpoint_url``) at :attr:`endpoint`.

    Example:
        >>> hub = HubServer().start()  # doctest: +SKIP
        >>> commit = hub.push("org/tiny", {"config.json": b"{}"})  # doctest: +SKIP
    """

    def __init__(self, *, token: str = "hf_test_token", rate_mb_s: float | None = None) -> None:
        self.token = token
        self.rate_mb_s = rate_mb_s
        self.endpoint = ""
        self._commits: dict[str, dict[str, dict[str, bytes]]] = {}  # repo -> commit -> files
        self._digests: dict[tuple[int, int], tuple[str, str]] = {}  # a file's bytes -> (git sha1, sha256)
        self._refs: dict[str, dict[str, str]] = {}  # repo -> branch or tag -> commit
        self._gated: set[str] = set()
        self._lock = threading.Lock()
        self._throttled: list[tuple[str, float]] = []  # (path substring, Retry-After seconds) per request
        self._flips: dict[str, int] = {}  # path substring -> how many responses get a flipped byte
        self.requests: list[tuple[str, str]] = []
        self.bytes_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Any = None
        self._thread: threading.Thread | None = None
        self._next_send = 0.0

    # --- content ------------------------------------------------------------------------------------------

    def _ids(self, data: bytes) -> tuple[str, str]:
        """``(git blob sha1, sha256)`` of ``data``, computed once per content (a range read must not
        hash a whole shard again)."""
        key = (id(data), len(data))  # the server keeps every pushed file alive: ids are not reused
        ids = self._digests.get(key)
        if ids is None:
            ids = self._digests[key] = (git_blob_sha1(data), hashlib.sha256(data).hexdigest())
        return ids

    def push(self, repo: str, files: dict[str, bytes], *, branch: str = "main", gated: bool = False) -> str:
        """Commit ``files`` (the whole tree) to ``branch`` of ``repo``; the new commit's id."""
        for data in files.values():
            self._ids(data)
        with self._lock:
            commit = hashlib.sha1(json.dumps([repo, branch, len(self._commits.get(repo, {})),
                                              sorted((k, self._ids(v)[0]) for k, v in files.items())]).encode(),
                                  usedforsecurity=False).hexdigest()
            self._commits.setdefault(repo, {})[commit] = dict(files)
            self._refs.setdefault(repo, {})[branch] = commit
            if gated:
                self._gated.add(repo)
        return commit

    def push_dir(self, repo: str, local: str | Path, **kw: Any) -> str:
        """Commit every file under ``local``."""
        root = Path(local)
        return self.push(repo, {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                                if p.is_file()}, **kw)

    def move(self, repo: str, branch: str, commit: str) -> None:
        """Point ``branch`` at ``commit`` (a push elsewhere, a force-push)."""
        with self._lock:
            self._refs[repo][branch] = commit

    def throttle(self, match: str, count: int = 1, retry_after: float = 1.0) -> None:
        """Answer the next ``count`` requests whose path holds ``match`` with 429 and ``Retry-After``."""
        with self._lock:
            self._throttled.extend([(match, retry_after)] * count)

    def flip(self, match: str, count: int = 1) -> None:
        """Flip one byte of the next ``count`` file bodies whose path holds ``match``, headers unchanged."""
        with self._lock:
            self._flips[match] = self._flips.get(match, 0) + count

    # --- server -------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        from aiohttp import web

        ready = threading.Event()
        app = web.Application()
        app.router.add_route("GET", "/api/models/{repo:[^/]+(/[^/]+)?}/tree/{rev}{path:(/.*)?}", self._tree)
        app.router.add_route("GET", "/api/models/{repo:[^/]+(/[^/]+)?}/revision/{rev}", self._info)
        app.router.add_route("GET", "/api/models/{repo:[^/]+/[^/]+}", self._info)
        app.router.add_route("*", "/{repo:[^/]+/[^/]+}/resolve/{rev}/{path:.+}", self._resolve)

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.endpoint = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="hub-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise TimeoutError("the Hub server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            if not self._loop.is_running():
                self._loop.close()
            self._loop = self._runner = None

    def _commit(self, repo: str, rev: str) -> str | None:
        with self._lock:
            if rev in self._commits.get(repo, {}):
                return rev
            return self._refs.get(repo, {}).get(rev)

    def _denied(self, request: Any, repo: str) -> Any:
        from aiohttp import web

        if repo not in self._commits:
            return web.json_response({"error": "Repository not found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        if repo in self._gated and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": f"Access to model {repo} is restricted."}, status=401,
                                     headers={"X-Error-Code": "GatedRepo"})
        with self._lock:
            for i, (match, retry_after) in enumerate(self._throttled):
                if match in request.path:
                    del self._throttled[i]
                    return web.json_response({"error": "rate limited"}, status=429,
                                             headers={"Retry-After": f"{retry_after:g}"})
        return None

    def _revision(self, request: Any, kind: str) -> Any:
        """The commit the request's repo and revision name, or the error response (recorded either way)."""
        from aiohttp import web

        repo, rev = request.match_info["repo"], request.match_info.get("rev", "main")
        self.requests.append((kind, request.path))
        if (denied := self._denied(request, repo)) is not None:
            return denied
        commit = self._commit(repo, rev)
        if commit is None:
            return web.json_response({"error": f"Invalid rev id: {rev}"}, status=404,
                                     headers={"X-Error-Code": "RevisionNotFound"})
        return commit

    async def _info(self, request: Any) -> Any:
        from aiohttp import web

        repo = request.match_info["repo"]
        commit = self._revision(request, "info")
        if not isinstance(commit, str):
            return commit
        files = self._commits[repo][commit]
        return web.json_response({"id": repo, "modelId": repo, "sha": commit, "private": False,
                                  "gated": "auto" if repo in self._gated else False,
                                  "siblings": [{"rfilename": k} for k in sorted(files)]})

    async def _tree(self, request: Any) -> Any:
        from aiohttp import web

        repo, under = request.match_info["repo"], request.match_info.get("path", "").strip("/")
        commit = self._revision(request, "tree")
        if not isinstance(commit, str):
            return commit
        recursive = request.query.get("recursive", "false").lower() in ("true", "1")
        entries: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path, data in sorted(self._commits[repo][commit].items()):
            if under and not path.startswith(under + "/"):
                continue
            rest = path[len(under) + 1:] if under else path
            if "/" in rest and not recursive:
                dirs.add((under + "/" if under else "") + rest.split("/", 1)[0])
                continue
            git, sha256 = self._ids(data)
            entry: dict[str, Any] = {"type": "file", "oid": git, "size": len(data), "path": path}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        if recursive:
            for path in self._commits[repo][commit]:
                parts = path.split("/")[:-1]
                dirs.update("/".join(parts[:i + 1]) for i in range(len(parts)))
        return web.json_response([{"type": "directory", "oid": "0" * 40, "size": 0, "path": d}
                                  for d in sorted(dirs)] + entries)

    async def _resolve(self, request: Any) -> Any:
        from aiohttp import web

        repo, rev, path = request.match_info["repo"], request.match_info["rev"], request.match_info["path"]
        self.requests.append((request.method.lower(), request.path))
        if (denied := self._denied(request, repo)) is not None:
            return denied
        commit = self._commit(repo, rev)
        data = self._commits[repo].get(commit or "", {}).get(path)
        if data is None:
            return web.json_response({"error": "Entry not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound"})
        lfs = path.endswith(LFS_SUFFIXES)
        etag = f'"{self._ids(data)[1] if lfs else self._ids(data)[0]}"'
        headers = {"X-Repo-Commit": str(commit), "ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(len(data))})
        start, end, status = 0, len(data), 200
        if (spec := request.headers.get("Range", "")).startswith("bytes="):
            lo, _, hi = spec[6:].partition("-")
            start, end, status = int(lo or 0), min(len(data), int(hi) + 1 if hi else len(data)), 206
            if start >= len(data) and len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{max(start, end - 1)}/{len(data)}"
        headers["Content-Length"] = str(end - start)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        body = data[start:end]
        with self._lock:
            match = next((m for m, n in self._flips.items() if n > 0 and m in path), None)
            if match is not None and body:
                self._flips[match] -= 1
                body = body[:len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
        out = web.StreamResponse(status=status, headers=headers)
        await out.prepare(request)
        for i in range(0, len(body), 64 * 1024):
            chunk = body[i:i + 64 * 1024]
            await self._pace(len(chunk))
            await out.write(chunk)
            self.bytes_sent += len(chunk)
        await out.write_eof()
        return out

    async def _pace(self, n: int) -> None:
        """The bandwidth cap, shared by every connection (one schedule of send times)."""
        if not self.rate_mb_s:
            return
        now = time.monotonic()
        self._next_send = max(self._next_send, now) + n / (self.rate_mb_s * 1e6)
        if self._next_send - n / (self.rate_mb_s * 1e6) > now:
            await asyncio.sleep(self._next_send - n / (self.rate_mb_s * 1e6) - now)
