"""Config mistakes are found at parse time, before any Ray call: a ConfigError naming file and field."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from node_init import ConfigError, DownloadConfig, DownloadError, load_config
from node_init.download import list_source
from tests.conftest import REPO

pytestmark = pytest.mark.reliability

CASES = [
    ("model_id: tiny\nmodel_source: ftp://bucket/m\n", "model_source", "unsupported scheme"),
    ("model_id: tiny\nmodel_source: s3:///x\n", "model_source", "no bucket"),
    ("model_id: tiny\nmodel_source: ''\n", "model_source", "must not be empty"),
    ("model_id: '..'\n", "model_id", "cannot name a cache directory"),
    ("model_id: tiny\nplacement: {bundles: [{CPU: -1}]}\n", "placement.bundles[0].CPU", ">= 0"),
    ("model_id: tiny\ndownload: {s3: {endpoint_url: not a url}}\n", "download.s3.endpoint_url", "not an http"),
    ("model_id: tiny\nengine: {overlap: maybe}\n", "engine.overlap", "expected one of auto, on, off"),
    ("model_id: tiny\ndownload: {local_node: ALL}\n", "download.local_node", "MODEL_AND_TOKENIZER"),
    ("model_id: tiny\nengin: {kind: vllm}\n", None, "unknown field `engin`"),
    ("model_id: tiny\nhandlers: [not-a-path]\n", "handlers[0]", "pkg.module:attr"),
    ("model_id: tiny\ndownload: {part_size_mb: 0}\n", "download.part_size_mb", ">= 1"),
    ("model_id: tiny\ninit_timeout_s: 0\n", "init_timeout_s", "> 0"),
]


@pytest.mark.parametrize(("text", "field", "words"), CASES)
def test_a_bad_config_is_refused_at_parse_time_naming_its_field(tmp_path: Path, text: str, field: str | None,
                                                                 words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path) and info.value.field == field and words in str(info.value)


def test_the_cli_refuses_a_bad_config_before_starting_ray(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(CASES[0][0])
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "node_init._cli", "run", str(path)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "field model_source" in done.stderr and str(path) in done.stderr
    assert "Ray" not in done.stderr and time.monotonic() - start < 20  # no Ray was started


def test_a_cache_root_that_is_a_file_is_a_download_error_naming_node_and_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eventbus import EventBus
    from node_init import CallbackCtx, parse_config
    from node_init.cluster import node_download

    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (tmp_path / "root").write_text("a file, not a directory")
    monkeypatch.delenv("NODE_INIT_CACHE_DIR", raising=False)  # the config's root, not the session's
    config = parse_config({"model_id": "m", "model_source": str(source),
                           "download": {"cache_dir": str(tmp_path / "root")}})
    with pytest.raises(DownloadError) as info:
        node_download(config, CallbackCtx.for_config(config), EventBus(), node_id="node-x", is_local=True)
    assert info.value.node_id == "node-x" and str(tmp_path / "root") in str(info.value)


def test_an_empty_local_source_is_an_error_like_an_empty_s3_prefix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DownloadError, match="holds no files") as info:
        list_source(str(tmp_path / "empty"), DownloadConfig(), node_id="n")
    assert info.value.node_id == "n"


def test_a_fifo_in_a_local_source_is_refused_not_waited_on(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.mkfifo(model / "weights.safetensors")
    start = time.monotonic()
    with pytest.raises(DownloadError, match="not a regular file") as info:
        list_source(str(model), DownloadConfig())
    assert "weights.safetensors" in str(info.value) and time.monotonic() - start < 2


_UNREADABLE = r"""
import os, sys
from node_init import DownloadConfig, DownloadError
from node_init.download import list_source
# Everything a listing imports lazily is imported now, as root: the other user may not be able to reach
# this environment (a checkout under a mode-0700 directory, as `mktemp -d` makes).
list_source(os.path.join(sys.argv[1], "readable"), DownloadConfig(), node_id="n")
try:  # and what its error path imports
    list_source(os.path.join(sys.argv[1], "missing"), DownloadConfig(), node_id="n")
except DownloadError:
    pass
os.setgid(65534); os.setuid(65534)  # drop root: as root the directory would be readable
try:
    list_source(sys.argv[1], DownloadConfig(), node_id="n")
except DownloadError as exc:
    print("DownloadError", exc)
else:
    print("listed")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_an_unreadable_directory_is_an_error_not_skipped() -> None:
    root = Path(tempfile.mkdtemp(prefix="unreadable-"))
    try:
        root.chmod(0o755)
        (root / "config.json").write_text("{}")
        (root / "readable").mkdir()
        (root / "readable" / "config.json").write_text("{}")
        (root / "shards").mkdir()
        (root / "shards" / "model-00001.safetensors").write_bytes(b"x")
        (root / "shards").chmod(0)
        for p in (root / "config.json",):
            p.chmod(0o644)
        done = subprocess.run([sys.executable, "-c", _UNREADABLE, str(root)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        out = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
        assert out.startswith("DownloadError") and "shards" in out and "Permission denied" in out, out
    finally:
        (root / "shards").chmod(stat.S_IRWXU)
        import shutil

        shutil.rmtree(root, ignore_errors=True)
