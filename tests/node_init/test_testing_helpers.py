"""The helpers tests and demos build models with."""

from __future__ import annotations

from pathlib import Path

from node_init.testing import build_tiny_llama


def test_the_tiny_model_has_a_chat_template_transformers_applies(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = build_tiny_llama(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|user|>\nhello world</s>\n<|assistant|>\n"
