"""The Hugging Face Hub as a source: ``org/name`` as Ray writes it, or ``hf://org/name[@revision]``.

The replica resolves the revision (a branch, tag or commit) once to a commit id and hands the nodes
``hf://org/name@<commit>`` (:func:`pin_hub_source`), so every node reads one commit however the branch
moves meanwhile. A node lists that commit's tree (one call) and keeps the files vLLM would load
(:func:`vllm_files`); each file is read in ranges from ``{endpoint}/{repo}/resolve/{commit}/{path}``
and checked against the Hub's digest as it streams: the SHA-256 of an LFS file, the git blob SHA-1
of a small one. ``HF_HUB_OFFLINE=1`` reads this node's Hugging Face cache instead, as before.
Requests go through urllib3; the endpoint is ``HF_ENDPOINT`` or ``download.hf.endpoint_url``; the
token ``download.hf.token``, ``HF_TOKEN``, or the file the Hugging Face CLI writes.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog

from .._config import HFConfig, reveal
from ._checksums import OriginChecksum
from ._http import HttpClient
from ._retry import Transient, retry_after, with_retries
from ._sources import RemoteFile, check_key

_log = structlog.get_logger("node_init.download")
HUB_ENDPOINT = "https://huggingface.co"
#: The Hub's repo id grammar (``huggingface_hub.utils.validate_repo_id``): ``[org/]name``, 1-96 characters
#: of letters, digits, ``-``, ``_``, ``.``; no ``--`` or ``..``; not ending in ``.git``.
_REPO_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]{1,96}$")
#: A git revision we accept: a branch, a tag or a commit (no spaces, ``..``, ``~^:?*[\``, ``@{``).
_REVISION = re.compile(r"^(?!.*\.\.)(?!.*@\{)(?!/)(?!.*/$)(?!.*\.lock$)[^\s~^:?*\[\\\x00-\x1f\x7f]{1,255}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: Weight formats, in the order vLLM prefers them (its ``_prepare_weights`` with ``load_format: auto``).
WEIGHT_PATTERNS = ((".safetensors", "model.safetensors.index.json"), (".bin", "pytorch_model.bin.index.json"),
                   (".pt", None))


def is_hub_id(text: str) -> bool:
    """Whether ``text`` is a Hub repo id by the Hub's grammar."""
    return bool(_REPO_ID.match(text)) and "--" not in text and ".." not in text and not text.endswith(".git") \
        and not text.startswith((".", "-")) and not text.endswith((".", "-"))


def parse_hub_uri(uri: str) -> tuple[str, str]:
    """``(repo, revision)`` of ``hf://repo[@revision]`` (``main`` when none is named)."""
    repo, _, revision = uri.removeprefix("hf://").partition("@")
    return repo, revision or "main"


def check_hub_uri(uri: str) -> None:
    """Raise ``ValueError`` naming what is wrong with ``hf://org/name[@revision]``."""
    repo, at, revision = uri.removeprefix("hf://").partition("@")
    if not is_hub_id(repo):
        raise ValueError(f"{repo!r} is not a Hugging Face Hub repo id (org/name: letters, digits, '-', '_', '.'; "
                         "at most 96 characters a part; no '--' or '..')")
    if at:
        check_revision(revision)


def check_revision(revision: str) -> None:
    """Raise ``ValueError`` unless ``revision`` can name a branch, tag or commit."""
    if not _REVISION.match(revision):
        raise ValueError(f"{revision!r} is not a revision (a branch, tag or commit: no spaces, '..', '~^:?*[\\', "
                         "'@{', leading or trailing '/')")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` set: every Hub form reads this node's Hugging Face cache, as ``huggingface_hub`` does."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_endpoint(cfg: HFConfig) -> str:
    return (os.environ.get("HF_ENDPOINT") or cfg.endpoint_url or HUB_ENDPOINT).rstrip("/")


def token_file() -> Path:
    """Where the Hugging Face CLI writes the token (``HF_TOKEN_PATH``, else ``$HF_HOME/token``)."""
    if os.environ.get("HF_TOKEN_PATH"):
        return Path(os.environ["HF_TOKEN_PATH"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "token"


def hub_token(cfg: HFConfig) -> tuple[str | None, str]:
    """``(token or None, where it came from)``: ``download.hf.token``, ``HF_TOKEN``, the CLI's token file."""
    if cfg.token:
        return reveal(cfg.token), "download.hf.token"
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"], "HF_TOKEN"
    path = token_file()
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    if text:
        return text, f"the token file {path}"
    return None, f"none (looked at download.hf.token, HF_TOKEN and {path})"


class HubClient:
    """The few Hub calls a download makes, with the Hub's errors mapped to ours.

    Args:
        cfg: ``download.hf``.
        request_timeout_s: Bound on a call and on connecting.
        read_timeout_s: Bound on one read of a streamed body.
        retries: Retries of an API call on 429 and 5xx (``Retry-After`` honoured).
    """

    def __init__(self, cfg: HFConfig, *, request_timeout_s: float, read_timeout_s: float | None = None,
                 retries: int = 3) -> None:
        self.endpoint = hub_endpoint(cfg)
        self.retries = retries
        self._token, self.token_from = hub_token(cfg)
        self._http = HttpClient(request_timeout_s=request_timeout_s, read_timeout_s=read_timeout_s)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def check(self, response: Any, what: str, repo: str) -> None:
        """A response's status as our errors: 429 and 5xx transient (with the wait the Hub asks for)."""
        status = int(response.status)
        if status < 300:
            return
        code = response.headers.get("X-Error-Code", "")
        response.release_conn()
        refused = status in (401, 403) or code == "GatedRepo"
        # Without a token the Hub answers a private repo as a missing one: it may be either.
        hidden = status == 404 and code == "RepoNotFound" and not self._token
        if refused or hidden:
            raise PermissionError(f"{what}: {repo} is gated, private or missing (status {status} {code}); token: "
                                  f"{self.token_from}".replace("  ", " "))
        if status == 404:
            raise FileNotFoundError(f"{what}: not found on {self.endpoint} (status 404 {code})".replace(" )", ")"))
        if status == 429 or status >= 500:
            raise Transient(f"{what}: status {status}", retry_after=retry_after(response.headers))
        raise ValueError(f"{what}: status {status} {code}".strip())

    def api(self, path: str, repo: str, what: str) -> Any:
        """``GET {endpoint}{path}`` as JSON, retried on 429 and 5xx."""
        def call() -> Any:
            response = self._http.request("GET", self.endpoint + path, headers=self._headers(), preload_content=True)
            self.check(response, what, repo)
            return json.loads(response.data)

        return with_retries(call, retries=self.retries, what=what, source=f"hf://{repo}")

    def commit(self, repo: str, revision: str) -> str:
        """The commit ``revision`` (a branch, tag or commit) of ``repo`` names now."""
        info = self.api(f"/api/models/{repo}/revision/{quote(revision, safe='')}", repo,
                        f"resolving {repo}@{revision}")
        sha = str(info.get("sha") or "")
        if not COMMIT.match(sha):
            raise ValueError(f"the Hub gave no commit for {repo}@{revision}")
        return sha

    def tree(self, repo: str, commit: str) -> list[dict[str, Any]]:
        """Every file of ``repo`` at ``commit`` (path, size, git oid, LFS sha256)."""
        entries = self.api(f"/api/models/{repo}/tree/{commit}?recursive=true&expand=false", repo,
                           f"listing {repo}@{commit[:12]}")
        return [e for e in entries if e.get("type") == "file"]

    def stream(self, repo: str, commit: str, path: str, start: int, end: int) -> Iterator[bytes]:
        url = f"{self.endpoint}/{repo}/resolve/{commit}/{quote(path, safe='/')}"
        response = self._http.open_stream(url, {**self._headers(), "Range": f"bytes={start}-{end - 1}",
                                                "Accept-Encoding": "identity"})
        self.check(response, path, repo)
        got = response.headers.get("X-Repo-Commit")
        if got and got != commit:  # a commit URL never moves; a server that says otherwise is not trusted
            response.release_conn()
            raise ValueError(f"{path}: the Hub served commit {got}, not {commit}")
        yield from self._http.body(response, path)


def vllm_files(paths: list[str]) -> list[str]:
    """The files of a repo that vLLM loads for ``load_format: auto``: one weight format (safetensors
    over ``.bin`` over ``.pt``), only the shards its index names where it has one, ``original/`` and
    other subfolders' checkpoints skipped; with every other top-level file (config, tokenizer,
    generation config, chat template). The index's own shard list is applied by :class:`HubSource`."""
    top = [p for p in paths if "/" not in p]
    weights: list[str] = []
    for suffix, _index in WEIGHT_PATTERNS:
        weights = [p for p in top if p.endswith(suffix)]
        if weights:
            break
    other_weights = {p for p in top for suffix, _ in WEIGHT_PATTERNS if p.endswith(suffix)} - set(weights)
    return sorted(set(top) - other_weights)


class HubSource:
    """``hf://org/name@<commit>`` read from the Hub (see the module doc).

    Args:
        uri: ``hf://org/name[@revision]`` (a revision is resolved here if the replica has not pinned it).
        cfg: ``download.hf``.
        request_timeout_s, read_timeout_s, retries: As for every source.
    """

    in_place: Path | None = None

    def __init__(self, uri: str, cfg: HFConfig, *, request_timeout_s: float, read_timeout_s: float | None = None,
                 retries: int = 3) -> None:
        self.repo, revision = parse_hub_uri(uri)
        self.client = HubClient(cfg, request_timeout_s=request_timeout_s, read_timeout_s=read_timeout_s,
                                retries=retries)
        self.commit = revision if COMMIT.match(revision) else self.client.commit(self.repo, revision)
        self.uri = f"hf://{self.repo}@{self.commit}"
        self.identity = f"token from {self.client.token_from}"
        self.retries = retries
        self._shards: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"HubSource({self.uri!r}, {self.identity})"

    def list_files(self) -> list[RemoteFile]:
        """The files vLLM would load at the pinned commit, each with the Hub's digest (the tree the
        replica fetched, where it shared one through Ray: the Hub is not asked once per node)."""
        tree = shared_tree(self.repo, self.commit)
        if tree is None:
            tree = self.client.tree(self.repo, self.commit)
        entries = {str(e["path"]): e for e in tree}
        keep = vllm_files(list(entries))
        for suffix, index in WEIGHT_PATTERNS:  # only the shards an index names (a repo may hold others beside them)
            if index is not None and index in entries and any(k.endswith(suffix) for k in keep):
                named = set(self._index(index, entries[index]))
                keep = [k for k in keep if not k.endswith(suffix) or k in named]
                break
        files = []
        for key in keep:
            e = entries[key]
            lfs = e.get("lfs")
            checksum = OriginChecksum("sha256", str(lfs["oid"])) if lfs else OriginChecksum("git-sha1", str(e["oid"]))
            files.append(RemoteFile(check_key(key), int(e["size"]), str(lfs["oid"] if lfs else e["oid"]), checksum))
        if not files:
            raise FileNotFoundError(f"no files vLLM would load in {self.uri}")
        return sorted(files, key=lambda f: f.key)

    def _index(self, name: str, entry: dict[str, Any]) -> list[str]:
        """The shard names an index file maps weights to (read once, small)."""
        data = b"".join(self.client.stream(self.repo, self.commit, name, 0, int(entry["size"])))
        return sorted(set(json.loads(data).get("weight_map", {}).values()))

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of the file at the pinned commit, yielded as they arrive."""
        if end <= start:
            return
        yield from self.client.stream(self.repo, self.commit, file.key, start, end)


_KV_NAMESPACE = "node_init"


def _tree_key(repo: str, commit: str) -> str:
    return f"hub-tree/{repo}@{commit}"


def _ray_up() -> bool:
    # Ray running here means it was imported; importing it only to ask costs a fresh process ~0.3 s.
    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


def shared_tree(repo: str, commit: str) -> list[dict[str, Any]] | None:
    """The tree of ``repo@commit`` the replica put in Ray's internal KV, if Ray runs and it did."""
    if not _ray_up():
        return None
    try:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(_tree_key(repo, commit), namespace=_KV_NAMESPACE)
    except Exception:  # no Ray here, or its KV is unreachable: list the Hub
        return None
    return list(json.loads(raw)) if raw else None


def pin_hub_source(uri: str, cfg: HFConfig, *, timeout_s: float, retries: int, share_tree: bool = False) -> str:
    """``hf://org/name@<commit>`` for ``hf://org/name[@revision]``, resolved once (on the replica).

    With ``share_tree`` (Ray running), the commit's tree is fetched here too and put in Ray's internal
    KV, where the nodes read it: the Hub rate-limits, and many nodes must not each list it.
    """
    repo, revision = parse_hub_uri(uri)
    if offline():
        return uri
    client = HubClient(cfg, request_timeout_s=timeout_s, retries=retries)
    commit = revision if COMMIT.match(revision) else client.commit(repo, revision)
    if commit != revision:
        _log.info("hub revision pinned", repo=repo, revision=revision, commit=commit)
    if share_tree and _ray_up() and shared_tree(repo, commit) is None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(_tree_key(repo, commit), json.dumps(client.tree(repo, commit)).encode(),
                                     overwrite=True, namespace=_KV_NAMESPACE)
    return f"hf://{repo}@{commit}"


def hub_or_path(source: str) -> str:
    """A bare ``org/name`` is a Hub id (``hf://org/name``) when it matches the Hub's grammar and is not
    an existing path here; decided once, on the replica, whose working directory is the user's (a
    node's, under Serve, is not). Any other source is returned as it is."""
    if "://" in source or source.startswith(("/", "~", ".")) or source.count("/") != 1 or not is_hub_id(source):
        return source
    if os.path.exists(source):
        _log.info("model source is a local path, not a Hub id", source=source)
        return source
    return f"hf://{source}"
