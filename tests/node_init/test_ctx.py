"""CallbackCtx: read-only fields, mode conversion, JSON-only custom data, snapshots."""

from __future__ import annotations

import attrs
import pytest

from node_init import CallbackCtx, DownloadMode, NodeInitConfig


@pytest.fixture
def ctx() -> CallbackCtx:
    return CallbackCtx.for_config(NodeInitConfig(model_id="m"))


def test_configs_are_read_only(ctx: CallbackCtx) -> None:
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        ctx.llm_config = NodeInitConfig(model_id="other")  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        ctx.ray_llm_config = object()  # type: ignore[misc]


@pytest.mark.parametrize("value", ["TOKENIZER_ONLY", "tokenizer_only", DownloadMode.TOKENIZER_ONLY])
def test_modes_convert(ctx: CallbackCtx, value: object) -> None:
    ctx.worker_node_download_model = value  # type: ignore[assignment]
    assert ctx.worker_node_download_model is DownloadMode.TOKENIZER_ONLY


def test_modes_convert_from_rays_enum(ctx: CallbackCtx) -> None:
    ray_enum = pytest.importorskip("ray.llm._internal.common.utils.download_utils").NodeModelDownloadable
    ctx.local_node_download_model = ray_enum.EXCLUDE_SAFETENSORS  # type: ignore[assignment]
    assert ctx.local_node_download_model is DownloadMode.EXCLUDE_SAFETENSORS


@pytest.mark.parametrize("value", ["EVERYTHING", 3, None, object()])
def test_bad_modes_raise_value_error(ctx: CallbackCtx, value: object) -> None:
    with pytest.raises(ValueError, match="invalid download mode"):
        ctx.local_node_download_model = value  # type: ignore[assignment]
    assert ctx.local_node_download_model is DownloadMode.MODEL_AND_TOKENIZER


def test_custom_data_rejects_what_cannot_cross_processes(ctx: CallbackCtx) -> None:
    ctx.custom_data["ok"] = {"a": [1, 2.5, "x", None]}
    with pytest.raises(TypeError, match=r"ctx.custom_data\['bad'\] must be JSON-encodable"):
        ctx.custom_data["bad"] = object()
    with pytest.raises(TypeError, match="extra_init_kwargs"):
        ctx.extra_init_kwargs.update(fn=lambda: 1)
    with pytest.raises(TypeError, match="custom_data"):
        ctx.custom_data = {"s": object()}
    with pytest.raises(TypeError, match="mapping"):
        ctx.custom_data = [1]  # type: ignore[assignment]
    ctx.custom_data = {"replaced": True}
    assert dict(ctx.custom_data) == {"replaced": True}
    assert "bad" not in ctx.custom_data


def test_snapshot_round_trips(ctx: CallbackCtx) -> None:
    ctx.worker_node_download_model = "NONE"  # type: ignore[assignment]
    ctx.custom_data["k"] = 1
    ctx.extra_init_kwargs["max_model_len"] = 128
    again = CallbackCtx.from_snapshot(ctx.llm_config, ctx.snapshot())
    assert again.worker_node_download_model is DownloadMode.NONE
    assert dict(again.custom_data) == {"k": 1}
    assert dict(again.extra_init_kwargs) == {"max_model_len": 128}
