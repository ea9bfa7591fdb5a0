"""Model sources and the downloader that fills a node's cache from them (no Ray here).

- Sources (:func:`open_source`): a local directory or ``file://`` URI, ``s3://`` on
  any S3-compatible endpoint, ``hf://`` from the node's Hugging Face cache. Each
  lists its files (:class:`RemoteFile`) and reads byte ranges.
- :class:`Downloader`: fetches the files a :class:`~node_init.DownloadMode` wants
  into ``<cache root>/<model>`` on this node: atomic, one downloader per node and
  model, retried with backoff, bounded, progress in :class:`Progress`.
- The cache layout helpers (:func:`cache_root`, :func:`model_dir_name`,
  :func:`load_manifest`, :func:`missing`) tell what a node already holds.

Example:
    >>> from node_init import DownloadConfig, DownloadMode
    >>> from node_init.download import Downloader, cache_root, model_dir_name, open_source, select
    >>> cfg = DownloadConfig()
    >>> source = open_source("/models/tiny", cfg.s3, request_timeout_s=cfg.stall_timeout_s)  # doctest: +SKIP
    >>> files = select(source.list_files(), DownloadMode.MODEL_AND_TOKENIZER)  # doctest: +SKIP
    >>> Downloader(source, cache_root(cfg) / model_dir_name("tiny"), cfg).run(files).path  # doctest: +SKIP
"""

from ._cache import MANIFEST as MANIFEST
from ._cache import PARTIAL as PARTIAL
from ._cache import Manifest as Manifest
from ._cache import ManifestEntry as ManifestEntry
from ._cache import cache_root as cache_root
from ._cache import load_manifest as load_manifest
from ._cache import missing as missing
from ._cache import model_dir_name as model_dir_name
from ._cache import read_rate as read_rate
from ._cache import select as select
from ._downloader import Downloader as Downloader
from ._downloader import DownloadResult as DownloadResult
from ._downloader import Progress as Progress
from ._sources import HFCacheSource as HFCacheSource
from ._sources import LocalSource as LocalSource
from ._sources import RemoteFile as RemoteFile
from ._sources import S3Source as S3Source
from ._sources import Source as Source
from ._sources import UnsafeKeyError as UnsafeKeyError
from ._sources import check_key as check_key
from ._sources import list_source as list_source
from ._sources import local_path as local_path
from ._sources import open_source as open_source
from ._sources import source_errors as source_errors

__all__ = [
    "MANIFEST",
    "PARTIAL",
    "DownloadResult",
    "Downloader",
    "HFCacheSource",
    "LocalSource",
    "Manifest",
    "ManifestEntry",
    "Progress",
    "RemoteFile",
    "S3Source",
    "Source",
    "UnsafeKeyError",
    "cache_root",
    "check_key",
    "list_source",
    "load_manifest",
    "local_path",
    "missing",
    "model_dir_name",
    "open_source",
    "read_rate",
    "select",
    "source_errors",
]
