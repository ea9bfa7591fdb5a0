"""Small models built locally for tests and demos (no hub is needed or reachable).

Example:
    >>> from node_init.testing import write_model_files
    >>> files = write_model_files(tmp_path / "m", {"model.safetensors": 1 << 20})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: Files every synthetic model has besides its weights (config + tokenizer).
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")

#: The chat template the tiny models ship (one ``<|role|>`` line per message, then the assistant's turn).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_CORPUS = (
    "the quick brown fox jumps over the lazy dog. ray serve runs large language models. "
    "a replica downloads the model on every node, then boots the engine. "
    "hello world, this is a tiny model trained on a tiny corpus for tests. "
    "one two three four five six seven eight nine ten eleven twelve. "
)


def write_model_files(path: str | os.PathLike[str], weights: dict[str, int], *, seed: int = 0) -> dict[str, int]:
    """A synthetic model directory: small JSON files plus random weight files of the given sizes.

    Args:
        path: Directory to create.
        weights: ``{file name: size in bytes}`` of weight files (``model-00001.safetensors``...).
        seed: Makes the bytes reproducible.

    Returns:
        ``{relative key: size}`` of every file written.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for name in SMALL_FILES:
        data = json.dumps({"synthetic": True, "name": name}).encode()
        (root / name).write_bytes(data)
        sizes[name] = len(data)
    for i, (name, size) in enumerate(sorted(weights.items())):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            block = (bytes([(seed + i) % 251]) * 4096) + os.urandom(4096)
            left = size
            while left > 0:
                chunk = block[: min(left, len(block))]
                f.write(chunk)
                left -= len(chunk)
        sizes[name] = size
    return sizes


def build_tiny_llama(
    path: str | os.PathLike[str],
    *,
    tie_word_embeddings: bool = False,
    hidden_size: int = 128,
    num_layers: int = 2,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """A tiny random Llama vLLM can load on CPU, with a locally trained BPE tokenizer.

    4 attention heads (head_dim 32, the CPU backend's minimum), 2 KV heads,
    float32 weights in ``model.safetensors``. ``tie_word_embeddings=True``
    reproduces the tied-``lm_head`` case of weight reloading.

    Needs ``numpy``, ``safetensors`` and ``tokenizers`` (installed with vLLM).
    """
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 50, trainer=trainer)
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": 512, "clean_up_tokenization_spaces": False,
        # A plain role-tagged template, so /v1/chat/completions works on the tiny model.
        "chat_template": CHAT_TEMPLATE,
    }))
    heads, kv_heads, inter = 4, 2, hidden_size * 2
    head_dim = hidden_size // heads
    vocab = tok.get_vocab_size()
    config: dict[str, object] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden_size,
        "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "num_hidden_layers": num_layers, "vocab_size": vocab, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "torch_dtype": "float32",
        "tie_word_embeddings": tie_word_embeddings, "bos_token_id": 1, "eos_token_id": 2,
        "head_dim": head_dim,
    }
    (root / "config.json").write_text(json.dumps(config, indent=1))
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": w(vocab, hidden_size),
        "model.norm.weight": np.ones(hidden_size, np.float32),
    }
    for i in range(num_layers):
        p = f"model.layers.{i}"
        tensors |= {
            f"{p}.self_attn.q_proj.weight": w(heads * head_dim, hidden_size),
            f"{p}.self_attn.k_proj.weight": w(kv_heads * head_dim, hidden_size),
            f"{p}.self_attn.v_proj.weight": w(kv_heads * head_dim, hidden_size),
            f"{p}.self_attn.o_proj.weight": w(hidden_size, heads * head_dim),
            f"{p}.mlp.gate_proj.weight": w(inter, hidden_size),
            f"{p}.mlp.up_proj.weight": w(inter, hidden_size),
            f"{p}.mlp.down_proj.weight": w(hidden_size, inter),
            f"{p}.input_layernorm.weight": np.ones(hidden_size, np.float32),
            f"{p}.post_attention_layernorm.weight": np.ones(hidden_size, np.float32),
        }
    if not tie_word_embeddings:
        tensors["lm_head.weight"] = w(vocab, hidden_size)
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    return root


def build_tiny_sentence_transformer(path: str | os.PathLike[str], *, pooling: str = "mean", dense_out: int = 64,
                                    seed: int = 0) -> Path:
    """:func:`build_tiny_llama` laid out as a sentence-transformers embedding model on the Hub.

    ``modules.json`` names the Transformer (the root), a Pooling module in ``1_Pooling`` with
    ``pooling`` (``mean`` or ``cls``: not the tiny Llama's last-token default), a Dense module in
    ``2_Dense`` (a random ``hidden -> dense_out`` linear layer with its ``config.json`` and
    ``model.safetensors``) and a Normalize module in ``3_Normalize``; vLLM reads all of them.
    """
    import numpy as np
    from safetensors.numpy import save_file

    root = build_tiny_llama(path, seed=seed)
    hidden = int(json.loads((root / "config.json").read_text())["hidden_size"])
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (root / "modules.json").write_text(json.dumps(modules, indent=1))
    (root / "1_Pooling").mkdir(exist_ok=True)
    modes = ("cls_token", "mean_tokens", "max_tokens", "lasttoken")
    wanted = {"cls": "cls_token", "mean": "mean_tokens"}[pooling]
    (root / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, **{f"pooling_mode_{m}": m == wanted for m in modes}}))
    (root / "2_Dense").mkdir(exist_ok=True)
    (root / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": hidden, "out_features": dense_out, "bias": True,
         "activation_function": "torch.nn.modules.linear.Identity"}))
    rng = np.random.default_rng(seed + 1)
    save_file({"linear.weight": (rng.standard_normal((dense_out, hidden)) * 0.1).astype(np.float32),
               "linear.bias": (rng.standard_normal(dense_out) * 0.1).astype(np.float32)},
              str(root / "2_Dense" / "model.safetensors"), metadata={"format": "pt"})
    (root / "3_Normalize").mkdir(exist_ok=True)
    (root / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}))
    return root
