"""Embeds a few prompts with vLLM (``runner="pooling"``, ``convert="embed"``, CPU, float32) for each model
directory named on the command line, offline; prints ``{directory: [[float, ...], ...]}`` as JSON.

A separate process (the engine tests' own engines run in the test process): ``python embed_models.py DIR...``.
"""

from __future__ import annotations

import json
import os
import sys

PROMPTS = ["the quick brown fox", "ray serve runs large", "a"]


def main(paths: list[str]) -> None:
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                      VLLM_CPU_KVCACHE_SPACE="1")
    from vllm import LLM

    out = {}
    for path in paths:
        llm = LLM(model=path, runner="pooling", convert="embed", dtype="float32", enforce_eager=True,
                  max_model_len=128, seed=0)
        out[path] = [list(map(float, r.outputs.embedding)) for r in llm.embed(PROMPTS, use_tqdm=False)]
        del llm
    print("EMBEDDINGS " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
