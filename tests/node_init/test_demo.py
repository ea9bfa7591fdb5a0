"""``node-init demo`` (what ``make demo`` runs) reads as a story: every line on the terminal is one of ours.

vLLM, its EngineCore child, Ray and torch write to the demo's log file; the terminal gets a line per
phase, the timeline, the reports and the completion. ``--json-logs`` gives our structured logs instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._procs import Tree

pytestmark = pytest.mark.engine
BOUND_S = 600

PHASE = r"\s*\d+\.\ds  (logs|events|model|ray|init|download|engine|complete|ready)\s+\S.*"
#: Every shape a line of the demo's terminal output may have.
ALLOWED = [re.compile(p) for p in (
    r"node-init demo: node init of a tiny Llama on a local Ray(, then one completion| \(no engine\))",
    PHASE,
    r"timeline \(s since start\):",
    r"  \s*\d+\.\d{3}  [A-Z]\w+\s+\S.*",  # an event of the timeline
    r"model path: /\S+",
    r"nodes:",
    r"  [0-9a-f]{16}  mode=\S+\s+fetched=\d+ files .*",
    r"timings: (\w+=\d+\.\d{3}s(, )?)+",
    r"completion for 'the quick brown fox': '.*'",
)]


def demo(workdir: Path, *flags: str) -> tuple[str, str]:
    """``node-init demo`` as a user runs it (a terminal of its own); its stdout and stderr."""
    # A user's environment: not this session's Ray, cache root or node name.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "NODE_INIT_CACHE_DIR", "NODE_NAME", "NODE_INIT_EVENT_LOG")}
    run = Tree([str(Path(sys.executable).parent / "node-init"), "demo", "--workdir", str(workdir), *flags],
               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = run.proc.communicate(timeout=BOUND_S)
    finally:
        run.stop()  # its Ray's processes too
    assert run.proc.returncode == 0, (out + err)[-3000:] + (workdir / "demo.log").read_text()[-3000:]
    return out, err


def test_the_demo_prints_only_its_own_lines_then_with_json_logs_only_json(tmp_path: Path) -> None:
    out, err = demo(tmp_path)
    lines = (out + err).splitlines()
    strays = [line for line in lines if not any(p.fullmatch(line) for p in ALLOWED)]
    assert not strays, "lines not of the demo's own shapes:\n" + "\n".join(strays[:20])
    phases = {m[1] for line in err.splitlines() if (m := re.fullmatch(PHASE, line))}
    assert {"init", "download", "engine", "complete", "ready"} <= phases
    (completion,) = [line for line in out.splitlines() if line.startswith("completion for ")]
    assert completion != "completion for 'the quick brown fox': ''"
    # What left the terminal is in the log file: vLLM's own lines (its EngineCore child's included) and ours.
    log = (tmp_path / "demo.log").read_text()
    assert "EngineCore" in log and '"event": "node init finished"' in log

    # Again, warm, without the engine, asking for our structured logs: JSON on stderr and nothing else.
    out, err = demo(tmp_path, "--no-engine", "--json-logs")
    records = [json.loads(line) for line in err.splitlines()]
    assert any(r["event"] == "node init finished" for r in records)
    assert all({"event", "level", "timestamp"} <= r.keys() for r in records)
    assert out.startswith("timeline (s since start):") and "completion" not in out
