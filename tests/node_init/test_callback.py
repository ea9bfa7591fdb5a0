"""Import-path loading, the class-style callback and get_or_create_callback."""

from __future__ import annotations

import pickle

import pytest

from eventbus import EventBus
from node_init import (
    BeforeInit,
    CallbackCtx,
    CallbackLoadError,
    NodeInitConfig,
    get_or_create_callback,
    load_handler_set,
    load_object,
    wire,
)

H = "tests.node_init.hooks"


@pytest.mark.parametrize("path", [f"{H}:Metrics", f"{H}.Metrics"])
def test_both_import_path_forms(path: str) -> None:
    from tests.node_init.hooks import Metrics

    assert load_object(path) is Metrics


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("no_such_pkg.mod:thing", "no module named 'no_such_pkg'"),
        (f"{H}:Nope", "has no attribute 'Nope'"),
        ("justaname", "expected 'pkg.module:attr'"),
        ("", "non-empty"),
        (f"{H}:a:b", "expected"),
    ],
)
def test_bad_paths(path: str, words: str) -> None:
    with pytest.raises(CallbackLoadError, match=words) as info:
        load_object(path, node_id="n1")
    assert info.value.path == path and info.value.node_id == "n1"
    back = pickle.loads(pickle.dumps(info.value))
    assert (back.path, back.node_id, str(back)) == (path, "n1", str(info.value))


def test_not_a_handler_set_and_not_a_class() -> None:
    with pytest.raises(CallbackLoadError, match="HandlerSet"):
        load_handler_set(f"{H}:Metrics")
    with pytest.raises(CallbackLoadError, match="expected a class"):
        get_or_create_callback(NodeInitConfig(model_id="m", callback=f"{H}:not_a_class"))


def test_kwargs_the_class_does_not_take() -> None:
    with pytest.raises(CallbackLoadError, match="do not fit NeedsKwargs"):
        get_or_create_callback(NodeInitConfig(model_id="m", callback=f"{H}:NeedsKwargs",
                                              callback_kwargs={"treshold": 1}))


def test_one_instance_per_process_per_path_and_kwargs() -> None:
    a = get_or_create_callback(NodeInitConfig(model_id="m", callback=f"{H}:Metrics", callback_kwargs={"label": "a"}))
    b = get_or_create_callback(NodeInitConfig(model_id="x", callback=f"{H}:Metrics", callback_kwargs={"label": "a"}))
    c = get_or_create_callback(NodeInitConfig(model_id="m", callback=f"{H}:Metrics", callback_kwargs={"label": "c"}))
    assert a is b and a is not c and c.label == "c"
    assert get_or_create_callback(NodeInitConfig(model_id="m")) is None


@pytest.mark.anyio
async def test_class_hooks_run_on_the_bus_and_can_veto() -> None:
    config = NodeInitConfig(model_id="m", callback=f"{H}:SkipInit")
    bus = wire(config, EventBus())
    ctx = CallbackCtx.for_config(config)
    outcome = await bus.publish(BeforeInit(model_id="m"), ctx)
    assert outcome.vetoed and outcome.vetoed_by == (f"{H}.SkipInit.on_before_init",)


@pytest.mark.anyio
async def test_hook_timeout_runs_sync_hooks_in_a_thread() -> None:
    config = NodeInitConfig(model_id="m", callback=f"{H}:Metrics", callback_timeout_s=5,
                            callback_kwargs={"label": "timed"})
    bus = wire(config, EventBus())
    subs = bus.subscribers(BeforeInit)
    assert len(subs) == 1 and subs[0].to_thread and subs[0].timeout == 5
