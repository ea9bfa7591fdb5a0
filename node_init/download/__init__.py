"""Model sources and the downloader that fills a node's cache from them (no Ray here).

- Sources (:func:`open_source`, :func:`list_source`), one registry of kinds (:data:`SOURCES`,
  :class:`SourceKind`: schemes, config-time check, opening, capabilities), each kind in one module
  (its URI forms, check, credentials, listing and reads): a local directory or ``file://`` URI
  (``_local``), ``s3://`` on any S3-compatible endpoint (``_s3``), ``gs://`` (``_gcs``),
  ``azure://``/``abfss://`` (``_azure``), the Hugging Face Hub (``hf://``; the node's cache under
  ``HF_HUB_OFFLINE``: ``_hub``). Each lists its files
  (:class:`RemoteFile`, with a version tag) and streams byte ranges pinned to that version
  (:class:`SourceChanged` when it moved on). A tokenizer the engine arguments name in another Hub
  repo: :func:`hub_tokenizer_uri`, :func:`fetch_tokenizer`.
- :class:`Downloader`: fetches the files a :class:`~node_init.DownloadMode` wants into
  the node's cache: verified, version-pinned, resumable, one downloader per node and
  model, retried with backoff, bounded, progress in :class:`Progress`.
- :class:`ModelCache`: the cache on disk (blobs, immutable snapshots, the journal);
  :func:`hold_snapshot` keeps the snapshot an engine reads from being collected.

Example:
    >>> from node_init import DownloadConfig, DownloadMode
    >>> from node_init.download import Downloader, cache_root, list_source, model_dir_name, select
    >>> cfg = DownloadConfig()
    >>> source, files = list_source("/models/tiny", cfg)  # doctest: +SKIP
    >>> wanted = select(files, DownloadMode.MODEL_AND_TOKENIZER)  # doctest: +SKIP
    >>> Downloader(source, cache_root(cfg) / model_dir_name("tiny"), cfg).run(wanted).path  # doctest: +SKIP
"""

from ._azure import AZURE_API_VERSION as AZURE_API_VERSION
from ._azure import AzureSource as AzureSource
from ._azure import azure_parts as azure_parts
from ._azure import azure_shared_key as azure_shared_key
from ._cache import BlobEntry as BlobEntry
from ._cache import ModelCache as ModelCache
from ._cache import SnapshotHold as SnapshotHold
from ._cache import cache_root as cache_root
from ._cache import file_digest as file_digest
from ._cache import hold_snapshot as hold_snapshot
from ._cache import model_dir_name as model_dir_name
from ._cache import range_sum as range_sum
from ._cache import read_rate as read_rate
from ._cache import select as select
from ._checksums import OriginChecksum as OriginChecksum
from ._checksums import RangeCrc as RangeCrc
from ._checksums import combine as combine_crcs
from ._checksums import crc as crc
from ._downloader import Downloader as Downloader
from ._downloader import DownloadResult as DownloadResult
from ._downloader import Progress as Progress
from ._gcs import GCSSource as GCSSource
from ._hub import HFCacheSource as HFCacheSource
from ._hub import HubSource as HubSource
from ._hub import for_engine as for_engine
from ._hub import hub_or_path as hub_or_path
from ._hub import hub_tree as hub_tree
from ._hub import parse_hub_uri as parse_hub_uri
from ._hub import pin_hub_source as pin_hub_source
from ._local import LocalSource as LocalSource
from ._local import local_path as local_path
from ._open import check_source as check_source
from ._open import is_remote_source as is_remote_source
from ._open import list_source as list_source
from ._open import open_source as open_source
from ._open import shares as shares
from ._open import source_errors as source_errors
from ._open import source_kind as source_kind
from ._registry import SOURCES as SOURCES
from ._registry import register_source as register_source
from ._s3 import HeadFailed as HeadFailed
from ._s3 import S3Source as S3Source
from ._s3 import s3_credentials as s3_credentials
from ._s3 import s3_head as s3_head
from ._source import RemoteFile as RemoteFile
from ._source import Source as Source
from ._source import SourceChanged as SourceChanged
from ._source import SourceKind as SourceKind
from ._source import UnsafeKeyError as UnsafeKeyError
from ._source import check_key as check_key
from ._tokenizer import fetch_tokenizer as fetch_tokenizer
from ._tokenizer import hub_tokenizer_uri as hub_tokenizer_uri
from ._vllm_files import LOAD_FORMATS as LOAD_FORMATS
from ._vllm_files import EngineFileArgs as EngineFileArgs
from ._vllm_files import Selection as Selection
from ._vllm_files import check_load_format as check_load_format
from ._vllm_files import pinned_kwargs as pinned_kwargs
from ._vllm_files import select_files as select_files
from ._vllm_files import select_tokenizer_files as select_tokenizer_files

__all__ = [
    "LOAD_FORMATS",
    "EngineFileArgs",
    "Selection",
    "check_load_format",
    "pinned_kwargs",
    "select_files",
    "select_tokenizer_files",
    "AZURE_API_VERSION",
    "SOURCES",
    "AzureSource",
    "GCSSource",
    "HeadFailed",
    "HubSource",
    "OriginChecksum",
    "RangeCrc",
    "BlobEntry",
    "DownloadResult",
    "Downloader",
    "HFCacheSource",
    "LocalSource",
    "ModelCache",
    "Progress",
    "RemoteFile",
    "S3Source",
    "SnapshotHold",
    "Source",
    "SourceChanged",
    "SourceKind",
    "UnsafeKeyError",
    "cache_root",
    "check_key",
    "check_source",
    "combine_crcs",
    "crc",
    "fetch_tokenizer",
    "file_digest",
    "azure_parts",
    "azure_shared_key",
    "hold_snapshot",
    "hub_or_path",
    "hub_tokenizer_uri",
    "is_remote_source",
    "list_source",
    "local_path",
    "model_dir_name",
    "open_source",
    "pin_hub_source",
    "for_engine",
    "hub_tree",
    "parse_hub_uri",
    "range_sum",
    "read_rate",
    "register_source",
    "s3_credentials",
    "s3_head",
    "select",
    "shares",
    "source_errors",
    "source_kind",
]
