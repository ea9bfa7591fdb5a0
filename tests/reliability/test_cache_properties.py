"""A property test of the cache: whatever happens to it, the engine's directory is one listed version.

Random sequences of: a new version at the source, a download, a download cancelled part way, a
downloader SIGKILLed part way (a real process, killed for real), a blob corrupted on disk. After
every download that succeeds, its snapshot and the model directory are byte-identical to the
source's current version; after one that fails, the model directory is what it was before.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from node_init import DownloadConfig, DownloadError
from node_init.download import Downloader, LocalSource, Progress
from node_init.testing import iter_files
from tests.conftest import REPO

pytestmark = pytest.mark.reliability
MB = 1 << 20
KEYS = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "sub/extra.bin"]
SIZES = [0, 100, 3000, MB + 17, 2 * MB + 5]
CFG = DownloadConfig(part_size_mb=1, timeout_s=60, stall_timeout_s=10, retries=1, concurrency=4)

_KILLED = r"""
import sys, time
from pathlib import Path
from node_init import DownloadConfig
from node_init.download import Downloader, LocalSource

class Slow(LocalSource):
    def stream(self, file, start, end):
        for chunk in super().stream(file, start, end):
            time.sleep(0.02)  # a slow link, so the kill lands mid-file
            yield chunk

src = Slow(sys.argv[1])
cfg = DownloadConfig(part_size_mb=1, timeout_s=60, stall_timeout_s=10, retries=1, concurrency=4)
print("started", flush=True)
Downloader(src, Path(sys.argv[2]), cfg).run(src.list_files(), relist=src.list_files)
"""


def digest(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in iter_files(path)}


class _CancelAfter(Progress):
    def __init__(self, limit: int, cancel: threading.Event) -> None:
        super().__init__()
        self.limit, self.cancel = limit, cancel

    def add(self, n: int) -> None:
        super().add(n)
        if self.done >= self.limit:
            self.cancel.set()


class CacheMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32))
    def setup(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.root = Path(tempfile.mkdtemp(prefix="cache-prop-"))
        self.src, self.dest = self.root / "src", self.root / "cache" / "m"
        self.version: dict[str, str] = {}
        self.new_version()

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _before(self) -> Path | None:
        return self.dest.resolve() if self.dest.exists() else None

    def _check_success(self, path: str) -> None:
        assert digest(Path(path)) == self.version
        assert digest(self.dest) == self.version and self.dest.resolve() == Path(path)

    @rule()
    def new_version(self) -> None:
        if self.src.exists():
            shutil.rmtree(self.src)
        keys = self.rng.sample(KEYS, self.rng.randint(1, 3))
        for key in keys:
            (self.src / key).parent.mkdir(parents=True, exist_ok=True)
            (self.src / key).write_bytes(self.rng.randbytes(self.rng.choice(SIZES)))
        self.version = digest(self.src)

    @rule()
    def download(self) -> None:
        source = LocalSource(str(self.src))
        result = Downloader(source, self.dest, CFG).run(source.list_files(), relist=source.list_files)
        self._check_success(result.path)

    @rule(fraction=st.floats(0.0, 0.9))
    def cancelled_download(self, fraction: float) -> None:
        before = self._before()
        source = LocalSource(str(self.src))
        files = source.list_files()
        cancel = threading.Event()
        progress = _CancelAfter(int(sum(f.size for f in files) * fraction), cancel)
        try:
            result = Downloader(source, self.dest, CFG, progress=progress, cancel=cancel).run(
                files, relist=source.list_files)
        except DownloadError:
            assert self._before() == before  # a failed download changes nothing the engine sees
        else:
            self._check_success(result.path)

    @rule(delay=st.floats(0.0, 0.6))
    def killed_download(self, delay: float) -> None:
        before = self._before()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(self.src), str(self.dest)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        proc.stdout.readline()  # imported and about to download
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        after = self._before()
        if after != before:  # it finished before the kill: then it is exactly the current version
            assert after is not None and digest(after) == self.version

    @rule(data=st.data())
    def corrupt_a_blob(self, data: st.DataObject) -> None:
        blobs = sorted(p for p in (self.root / "cache" / ".node-init" / "m" / "blobs").glob("*") if p.stat().st_size)
        if not blobs:
            return
        blob = data.draw(st.sampled_from(blobs))
        with open(blob, "r+b") as f:  # a normal write: mtime moves, as with any real change
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 0xFF]))


TestCacheProperties = CacheMachine.TestCase
TestCacheProperties.settings = settings(max_examples=15, stateful_step_count=8, deadline=None)
