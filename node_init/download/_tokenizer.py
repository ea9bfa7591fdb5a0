"""A tokenizer named by the engine arguments in another Hub repo (``tokenizer``, ``tokenizer_revision``).

vLLM would fetch it from the Hub inside its boot, unchecked. The replica fetches it instead, before the
engine boots (while the weights download): pinned to one commit, every byte checked against the Hub's
digest like the model's, into this node's cache; the engine is then pointed at the local copy and never
asks the Hub. Only the replica's node needs it: vLLM's front end and engine core read the tokenizer,
its workers on other nodes do not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._config import DownloadConfig
from .._errors import DownloadError
from ._cache import cache_root, model_dir_name
from ._downloader import Downloader
from ._hub import HubSource, hub_or_path, offline, parse_hub_uri, remote_file
from ._open import open_source, source_errors
from ._vllm_files import EngineFileArgs, select_tokenizer_files


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


def fetch_tokenizer(uri: str, cfg: DownloadConfig, kwargs: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Download what vLLM reads of the tokenizer repo ``uri`` (configs, tokenizer files, templates; no
    weights: ``select_tokenizer_files``); ``(the local snapshot's path, the tokenizer mode vLLM decides
    on the whole repo)``.

    Raises:
        DownloadError: the Hub refused or failed, the repo holds no tokenizer file, or a byte differed
            from the Hub's digest.
    """
    args = EngineFileArgs.of(kwargs or {})
    with source_errors(uri):
        source = open_source(uri, cfg)
        if not isinstance(source, HubSource):  # hub_tokenizer_uri names Hub repos only
            raise ValueError(f"{uri} is not read from the Hub")
        tree = source.client.tree(source.repo, source.commit)
        keys, mode = select_tokenizer_files([str(e["path"]) for e in tree], args)
        entries = {str(e["path"]): e for e in tree}
        files = [remote_file(entries[k]) for k in keys]
    if not any(f.key.rsplit("/", 1)[-1].startswith(("tokenizer", "tekken", "vocab")) for f in files):
        raise DownloadError(f"the tokenizer {uri} holds no tokenizer files (engine_kwargs.tokenizer names a repo "
                            "with no tokenizer*, tekken.json or vocab* file)", source=uri)
    repo, _ = parse_hub_uri(uri)
    # A leading dot: no model id can name this directory (model_dir_name refuses one).
    dest = cache_root(cfg) / ".tokenizers" / model_dir_name(repo)
    return Downloader(source, dest, cfg).run(files).path, mode
