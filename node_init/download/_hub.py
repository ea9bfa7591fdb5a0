"""The Hugging Face Hub as a source: ``org/name`` as Ray writes it, or ``hf://org/name[@revision]``.

The replica resolves the revision (a branch, tag or commit) once to a commit id and hands the nodes
``hf://org/name@<commit>`` (:func:`pin_hub_source`), so every node reads one commit however the branch
moves meanwhile. The replica lists that commit's tree once (:func:`hub_tree`; ``node_init.cluster``
shares it with the nodes through Ray) and a node keeps the files vLLM reads under the engine
arguments (:func:`for_engine`, ``_vllm_files.select_files``); each file is read in ranges from
``{endpoint}/{repo}/resolve/{commit}/{path}`` and checked against the Hub's digest as it streams: the
SHA-256 of an LFS file, the git blob SHA-1 of a small one. ``HF_HUB_OFFLINE=1`` reads this node's
Hugging Face cache instead, as before.
Which calls are ``huggingface_hub``'s and which are ours, call by call:

- **Resolving a revision** (``/api/models/{repo}/revision/{rev}``): theirs, ``HfApi.model_info`` with
  an explicit ``timeout`` (the request bound) and no retry of its own, inside our :func:`with_retries`
  (429 and 5xx, ``Retry-After`` capped by the bounds); its errors are mapped to ours.
- **Listing the tree** (``/api/models/{repo}/tree/{commit}``): ours. ``HfApi.list_repo_tree`` takes
  no timeout, and pages through its own backoff, which retries a 429 with an uncapped ``Retry-After``:
  neither can be bounded from outside.
- **Reading files**: ours, ranged, parallel, and checked against the Hub's digest as they stream (the
  Hub's own client checks sizes only, and adds a HEAD per file; timings in benchmarks/README.md).
- **The token**: ours (``download.hf.token``, ``HF_TOKEN``, the CLI's token file), read at call time.
  ``huggingface_hub.get_token`` may call the network (an OIDC exchange under ``HF_OIDC_RESOURCE``, a
  refresh of an OAuth token), with no bound we can set; ``HfApi`` is given our token, or ``False`` so it
  looks for none itself.
- **The endpoint and offline mode**: ``HF_ENDPOINT`` (else ``download.hf.endpoint_url``), ``HF_HUB_OFFLINE``
  and ``TRANSFORMERS_OFFLINE`` are read at call time (the library fixes its constants at import).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import attrs
import structlog

from .._bounds import Bounds
from .._config import HFConfig, reveal
from ._checksums import OriginChecksum
from ._http import HttpClient, check_status
from ._local import LocalSource
from ._retry import Transient, retry_after, with_retries
from ._source import RemoteFile, Source, SourceKind, check_key
from ._vllm_files import EngineFileArgs, Selection, select_files

if TYPE_CHECKING:
    from .._config import DownloadConfig

_log = structlog.get_logger("node_init.download")
HUB_ENDPOINT = "https://huggingface.co"
#: The Hub's repo id grammar (``huggingface_hub.utils.validate_repo_id``): ``[org/]name``, 1-96 characters
#: of letters, digits, ``-``, ``_``, ``.``; no ``--`` or ``..``; not ending in ``.git``.
_REPO_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]{1,96}$")
#: A git revision we accept: a branch, a tag or a commit (no spaces, ``..``, ``~^:?*[\``, ``@{``).
_REVISION = re.compile(r"^(?!.*\.\.)(?!.*@\{)(?!/)(?!.*/$)(?!.*\.lock$)[^\s~^:?*\[\\\x00-\x1f\x7f]{1,255}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """``huggingface_hub``'s HTTP client's transport errors (``httpx2`` in 2.x, ``httpx`` before)."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(importlib.import_module(name).TransportError)
    return tuple(found)


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
    """``HF_HUB_OFFLINE`` (else ``TRANSFORMERS_OFFLINE``) set, read now: every Hub form reads this node's
    Hugging Face cache, as ``huggingface_hub`` does."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


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
        bounds: A call's bound, a streamed body's, the retries of an API call on 429 and 5xx
            (``Retry-After`` honoured up to ``bounds.retry_wait_s``).
    """

    def __init__(self, cfg: HFConfig, *, bounds: Bounds) -> None:
        self.endpoint = hub_endpoint(cfg)
        self.bounds = bounds
        self._token, self.token_from = hub_token(cfg)
        self._http = HttpClient(request_timeout_s=bounds.request_s, connect_s=bounds.connect_s,
                                read_timeout_s=bounds.silence_s)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def check(self, response: Any, what: str, repo: str) -> None:
        """A response's status as our errors: 429 and 5xx transient (with the wait the Hub asks for)."""
        # Without a token the Hub answers a private repo as a missing one: it may be either.
        check_status(response, what, denied=f"{what}: {repo} is gated, private or missing; token: {self.token_from}",
                     missing=f"{what}: not found on {self.endpoint}", code_header="X-Error-Code",
                     refused=lambda status, code: status in (401, 403) or code == "GatedRepo" or (
                         status == 404 and code == "RepoNotFound" and not self._token))

    def api(self, path: str, repo: str, what: str) -> Any:
        """``GET {endpoint}{path}`` as JSON, retried on 429 and 5xx."""
        def call() -> Any:
            response = self._http.request("GET", self.endpoint + path, headers=self._headers(), preload_content=True)
            self.check(response, what, repo)
            return json.loads(response.data)

        return with_retries(call, retries=self.bounds.retries, wait_s=self.bounds.retry_wait_s, what=what,
                            source=f"hf://{repo}")

    def commit(self, repo: str, revision: str) -> str:
        """The commit ``revision`` (a branch, tag or commit) of ``repo`` names now: ``huggingface_hub``'s
        ``HfApi.model_info``, bounded by its explicit timeout and retried by :func:`with_retries`."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        # The endpoint and token are ours, read now (the library fixes HF_ENDPOINT at import, and its own
        # token discovery may call the network); token=False stops it looking for one.
        api = HfApi(endpoint=self.endpoint, token=self._token or False, library_name="node-init")
        what = f"resolving {repo}@{revision}"

        def call() -> str:
            try:
                return str(api.model_info(repo, revision=revision, timeout=self.bounds.request_s).sha or "")
            except HfHubHTTPError as exc:
                raise self.their_error(exc, what, repo) from None
            except OfflineModeIsEnabled as exc:
                raise ValueError(f"{what}: huggingface_hub was imported with HF_HUB_OFFLINE set ({exc})") from None
            except _transport_errors() as exc:  # connect or read timeout, reset: worth a retry
                raise Transient(f"{what}: {type(exc).__name__}: {exc}") from None

        sha = with_retries(call, retries=self.bounds.retries, wait_s=self.bounds.retry_wait_s, what=what,
                           source=f"hf://{repo}")
        if not COMMIT.match(sha):
            raise ValueError(f"the Hub gave no commit for {repo}@{revision}")
        return sha

    def their_error(self, exc: Any, what: str, repo: str) -> Exception:
        """A ``huggingface_hub`` HTTP error as ours, as :meth:`check` maps a status."""
        response = exc.response
        status, headers = int(response.status_code), response.headers
        code = str(headers.get("X-Error-Code", ""))
        said = f"status {status} {code}".strip()
        if status in (401, 403) or code == "GatedRepo" or (status == 404 and code == "RepoNotFound"
                                                            and not self._token):
            return PermissionError(f"{what}: {repo} is gated, private or missing; token: {self.token_from} ({said})")
        if status == 404:
            return FileNotFoundError(f"{what}: not found on {self.endpoint} ({said})")
        if status == 429 or status >= 500:
            return Transient(f"{what}: status {status}", retry_after=retry_after(headers))
        return ValueError(f"{what}: {said}")

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


class HubSource:
    """``hf://org/name@<commit>`` read from the Hub (see the module doc).

    Args:
        uri: ``hf://org/name[@revision]`` (a revision is resolved here if the replica has not pinned it).
        cfg: ``download.hf``.
        bounds: As for every source.
    """

    in_place: Path | None = None
    local = False

    def __init__(self, uri: str, cfg: HFConfig, *, bounds: Bounds) -> None:
        self.repo, revision = parse_hub_uri(uri)
        self.client = HubClient(cfg, bounds=bounds)
        self.commit = revision if COMMIT.match(revision) else self.client.commit(self.repo, revision)
        self.uri = f"hf://{self.repo}@{self.commit}"
        self.identity = f"token from {self.client.token_from}"
        #: The engine arguments the snapshot is for (:func:`for_engine`), and the commit's tree if the
        #: replica shared it (the Hub is then not asked once per node).
        self.engine = EngineFileArgs()
        self.tree: list[dict[str, Any]] | None = None
        self.selection: Selection | None = None

    def __repr__(self) -> str:
        return f"HubSource({self.uri!r}, {self.identity})"

    def list_files(self) -> list[RemoteFile]:
        """The files vLLM reads at the pinned commit for :attr:`engine` (``select_files``), each with the
        Hub's digest.

        Raises:
            FileNotFoundError: no weights or config vLLM would load, or an index naming a missing shard.
            ValueError: a ``modules.json`` or index that cannot be read.
        """
        tree = self.tree if self.tree is not None else self.client.tree(self.repo, self.commit)
        entries = {str(e["path"]): e for e in tree}

        def read(key: str) -> bytes:  # a small file the choice depends on (modules.json, an index)
            return b"".join(self.client.stream(self.repo, self.commit, key, 0, int(entries[key]["size"])))

        self.selection = select_files(entries, self.engine, read)
        return [remote_file(entries[key]) for key in self.selection.files]

    def stream(self, file: RemoteFile, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Bytes ``[start, end)`` of the file at the pinned commit, yielded as they arrive."""
        if end <= start:
            return
        yield from self.client.stream(self.repo, self.commit, file.key, start, end)


def remote_file(entry: dict[str, Any]) -> RemoteFile:
    """A tree entry as a :class:`RemoteFile`: the SHA-256 of an LFS file, the git blob SHA-1 of a small one."""
    lfs = entry.get("lfs")
    checksum = OriginChecksum("sha256", str(lfs["oid"])) if lfs else OriginChecksum("git-sha1", str(entry["oid"]))
    return RemoteFile(check_key(str(entry["path"])), int(entry["size"]), str(lfs["oid"] if lfs else entry["oid"]),
                      checksum)


def for_engine(source: Source, kwargs: Mapping[str, Any], *, tree: list[dict[str, Any]] | None = None) -> Source:
    """``source``, narrowed to the files vLLM reads under the engine arguments ``kwargs`` if it is a Hub
    source (any other source is fetched whole, as Ray fetches it); ``tree``: the commit's tree the
    replica listed, if it shared one."""
    if isinstance(source, HubSource):
        tokenizer = kwargs.get("tokenizer")
        own = not tokenizer or parse_hub_uri(hub_or_path(str(tokenizer)))[0] == source.repo
        source.engine = attrs.evolve(EngineFileArgs.of(kwargs), own_tokenizer=own)
        if tree is not None:
            source.tree = tree
    return source


def pin_hub_source(uri: str, cfg: HFConfig, *, bounds: Bounds) -> str:
    """``hf://org/name@<commit>`` for ``hf://org/name[@revision]``, resolved once (on the replica)."""
    repo, revision = parse_hub_uri(uri)
    if offline():
        return uri
    client = HubClient(cfg, bounds=bounds)
    commit = revision if COMMIT.match(revision) else client.commit(repo, revision)
    if commit != revision:
        _log.info("hub revision pinned", repo=repo, revision=revision, commit=commit)
    return f"hf://{repo}@{commit}"


def hub_tree(uri: str, cfg: HFConfig, *, bounds: Bounds) -> list[dict[str, Any]]:
    """The tree (every file, with its digests) of a pinned ``hf://org/name@<commit>``: listed once on the
    replica, which shares it with the nodes (``node_init.cluster``)."""
    repo, commit = parse_hub_uri(uri)
    return HubClient(cfg, bounds=bounds).tree(repo, commit)


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


# -- offline: this node's Hugging Face cache -----------------------------------------------------

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


def _open(uri: str, cfg: DownloadConfig) -> HubSource | HFCacheSource:
    if offline():  # HF_HUB_OFFLINE: this node's Hugging Face cache, as huggingface_hub reads it
        return HFCacheSource(uri)
    return HubSource(uri, cfg.hf, bounds=Bounds.of_download(cfg))


KIND = SourceKind(
    name="hf", schemes=("hf://",), remote=True, share="auto",
    checksums="the Hub's SHA-256 of an LFS file, the git blob SHA-1 of a small one (HF_HUB_OFFLINE=1: none, "
              "this node's Hugging Face cache, loaded where it is)",
    check=check_hub_uri, open=_open, here=lambda uri: offline(),
    credentials="download.hf.token, HF_TOKEN, the Hugging Face CLI's token file; the endpoint from HF_ENDPOINT or "
                "download.hf.endpoint_url",
)
