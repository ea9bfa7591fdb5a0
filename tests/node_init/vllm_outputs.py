"""Runs vLLM (CPU, float32, offline) on each model directory named on the command line and prints
``{directory: outputs}`` as JSON: ``embed`` (``runner="pooling"``, ``convert="embed"``): each prompt's
embedding; ``generate``: each prompt's greedy token ids.

A separate process (the engine tests' own engines run in the test process):
``python vllm_outputs.py embed|generate DIR...``.
"""

from __future__ import annotations

import json
import os
import sys

PROMPTS = ["the quick brown fox", "ray serve runs large", "a"]


def main(mode: str, paths: list[str]) -> None:
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                      VLLM_CPU_KVCACHE_SPACE="1")
    from vllm import LLM, SamplingParams

    out: dict[str, object] = {}
    for path in paths:
        if mode == "embed":
            llm = LLM(model=path, runner="pooling", convert="embed", dtype="float32", enforce_eager=True,
                      max_model_len=128, seed=0)
            out[path] = [list(map(float, r.outputs.embedding)) for r in llm.embed(PROMPTS, use_tqdm=False)]
        else:
            llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
            greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
            out[path] = [list(r.outputs[0].token_ids) for r in llm.generate(PROMPTS, greedy, use_tqdm=False)]
        del llm
    print("OUTPUTS " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
