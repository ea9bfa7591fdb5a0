"""A tokenizer named by the engine arguments in another Hub repo (``tokenizer``, ``tokenizer_revision``).

vLLM would fetch it from the Hub inside its boot, unchecked. The replica fetches it instead, before the
engine boots (while the weights download): pinned to one commit, every byte checked against the Hub's
digest like the model's, into this node's cache; the engine is then pointed at the local copy and never
asks the Hub. Only the replica's node needs it: vLLM's front end and engine core read the tokenizer,
its workers on other nodes do not.
"""

from __future__ import annotations

from typing import Any

from .._config import DownloadConfig
from .._errors import DownloadError
from ._cache import cache_root, model_dir_name
from ._downloader import Downloader
from ._hub import WEIGHT_PATTERNS, hub_or_path, offline, parse_hub_uri
from ._sources import list_source


def hub_tokenizer_uri(kwargs: dict[str, Any]) -> str | None:
    """``hf://org/name[@revision]`` for a ``tokenizer`` engine argument that names a Hub repo, else
    ``None`` (none named, a local path, or ``HF_HUB_OFFLINE``: vLLM reads its cache then)."""
    name = kwargs.get("tokenizer")
    if not isinstance(name, str) or offline():
        return None
    uri = hub_or_path(name)
    if not uri.startswith("hf://"):
        return None
    revision = kwargs.get("tokenizer_revision")
    return f"{uri}@{revision}" if isinstance(revision, str) and revision and "@" not in uri else uri


def fetch_tokenizer(uri: str, cfg: DownloadConfig) -> str:
    """Download every file of ``uri`` but its weights (a tokenizer repo may be a whole model); the
    local snapshot's path.

    Raises:
        DownloadError: the Hub refused or failed, or a byte differed from the Hub's digest.
    """
    source, listing = list_source(uri, cfg)
    files = [f for f in listing if not f.key.endswith(tuple(suffix for suffix, _ in WEIGHT_PATTERNS))]
    if not files:
        raise DownloadError(f"the tokenizer {uri} holds nothing but weights (engine_kwargs.tokenizer names a "
                            "repo with no tokenizer files)", source=uri)
    repo, _ = parse_hub_uri(uri)
    # A leading dot: no model id can name this directory (model_dir_name refuses one).
    dest = cache_root(cfg) / ".tokenizers" / model_dir_name(repo)
    return Downloader(source, dest, cfg).run(files).path
