"""The helpers tests and demos build models with."""

from __future__ import annotations

import contextlib
import http.client
import urllib.request
from pathlib import Path

import pytest

from node_init.testing import Fault, FaultProxy, S3Server, build_tiny_llama


def test_the_tiny_model_has_a_chat_template_transformers_applies(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = build_tiny_llama(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|user|>\nhello world</s>\n<|assistant|>\n"


def test_a_body_fault_waits_for_a_body_long_enough_to_hold_it(s3_server: S3Server) -> None:
    # A flip at byte 999 cannot happen in a 7-byte answer (a file's short last range): the fault stays
    # for the next matching request, and only a fault that happened is counted.
    client = s3_server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="proxy")
    long = bytes(range(256)) * 8
    client.put_object(Bucket="proxy", Key="short-x", Body=b"1234567", ACL="public-read")
    client.put_object(Bucket="proxy", Key="long-x", Body=long, ACL="public-read")
    proxy = FaultProxy(s3_server.endpoint).start()
    try:
        def get(key: str) -> bytes:  # plain GETs: boto3 would check the bytes itself
            with urllib.request.urlopen(f"{proxy.endpoint}/proxy/{key}", timeout=30) as answer:
                return bytes(answer.read())

        proxy.add(Fault(kind="corrupt", match="-x", after_bytes=999))
        assert get("short-x") == b"1234567"
        assert proxy.injected == []
        got = get("long-x")
        assert proxy.injected == ["corrupt:/proxy/long-x"]
        assert [i for i, (a, b) in enumerate(zip(got, long, strict=True)) if a != b] == [999]
        assert get("long-x") == long  # used up
        proxy.add(Fault(kind="truncate", match="-x", after_bytes=999))
        assert get("short-x") == b"1234567"
        with pytest.raises(http.client.IncompleteRead):
            get("long-x")
        assert proxy.injected == ["corrupt:/proxy/long-x", "truncate:/proxy/long-x"]
    finally:
        proxy.stop()
