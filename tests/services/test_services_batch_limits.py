"""One batch setting per model deployment: the deployment's ``user_config`` sets the
forward-pass size of the model it serves, and ``ModelOutput.batch_images`` (what the
``divreward_batch_images`` metric observes) is the size of each pass the model ran."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures_models import TinyZoo

from divreward.models.registry import load_model
from divreward.schema import ModelCard
from divreward.services.config import BatchArgs, ModelDeploymentArgs
from divreward.services.model_deployments import ScorerServer, model_deployment_options

PROMPTS = [f"prompt {i}" for i in range(7)]
Served = Callable[[Callable[[ScorerServer, list[int]], Awaitable[None]]], None]


def _server(tiny_zoo: TinyZoo) -> tuple[ScorerServer, list[int]]:
    """A ScorerServer around a tiny PickScore (what its __init__ builds, without Serve's
    replica), and the batch sizes a counting hook on the vision tower sees."""
    server = object.__new__(ScorerServer)
    server.name = "pickscore"
    server.model = load_model("pickscore", tiny_zoo.options("pickscore"))
    server.card = ModelCard.from_info(server.model.info)
    server.batch = BatchArgs()
    seen: list[int] = []
    tower = server.model.bundle.model.vision_model  # type: ignore[attr-defined]
    tower.register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["pixel_values"].shape[0]),
        with_kwargs=True,
    )
    return server, seen


@pytest.fixture
def served(tiny_zoo: TinyZoo, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """``run(calls)``: ``calls(server, seen)`` on a tiny-PickScore ScorerServer, in one
    event loop (@serve.batch's queue lives on the loop it started on)."""
    # Outside a replica, @serve.batch's queue asks for the replica's max_ongoing_requests
    # (only to warn); answer as a replica configured with the defaults would.
    ctx = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr("ray.serve.get_replica_context", lambda: ctx)
    server, seen = _server(tiny_zoo)
    lazy = ScorerServer._batched.set_max_batch_size.__self__  # type: ignore[attr-defined]

    def run(calls: Callable[[ScorerServer, list[int]], Awaitable[None]]) -> None:
        asyncio.run(asyncio.wait_for(calls(server, seen), timeout=60))

    try:
        yield run
    finally:
        # In a replica the queue lives as long as the process; here it must not outlive
        # this test's event loop (Ray creates it again on first use).
        lazy._queue = None


def test_user_config_sets_the_forward_pass_and_the_metric(served: Served) -> None:
    served(_calls)


async def _calls(server: ScorerServer, seen: list[int]) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(7)]
    try:
        server.reconfigure({"max_batch_images": 3})
        assert (server.model.max_batch, server.model.max_batch_pixels) == (3, 64 * 1024 * 1024)
        out3 = await server.score(images, PROMPTS)
        assert sorted(seen) == [1, 3, 3]  # the queue may pack the 1-image chunk first
        assert sorted(out3.batch_images) == [1, 3, 3]  # the passes, as the metric sees them

        seen.clear()
        server.reconfigure({"max_batch_images": 16})
        out16 = await server.score(images, PROMPTS)
        assert seen == [7] and out16.batch_images == [7]

        seen.clear()  # the pixel limit too: 2 images of 40x40 per pass
        server.reconfigure({"max_batch_pixels": 2 * 40 * 40})
        out_px = await server.score(images, PROMPTS)
        assert sorted(seen) == sorted(out_px.batch_images) == [1, 2, 2, 2]
        assert server.model.max_batch_pixels == 3200
        np.testing.assert_allclose(out3.values, out16.values, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out_px.values, out16.values, rtol=1e-4, atol=1e-5)
    finally:
        server.reconfigure(BatchArgs().model_dump())  # the class-wide batch queue defaults


def test_model_batch_options_are_refused_in_a_deployment() -> None:
    args = ModelDeploymentArgs(options={"max_batch": 8})
    with pytest.raises(ValueError, match=r"'hpsv3'.*set batch\.max_batch_images"):
        model_deployment_options("hpsv3", args)


def test_ready_counts_a_recent_batch_and_probes_an_idle_or_failing_model(
    served: Served,
) -> None:
    """/readyz's call to a model: a replica whose batch is still running answers at once
    when a batch finished within READY_FRESH_S (the probe does not queue behind the work);
    an idle one, or one whose batches fail, gets a real one-image call."""
    served(_ready_calls)


async def _ready_calls(server: ScorerServer, seen: list[int]) -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    assert server._last_ok is None

    # Idle since start: a real call on one tiny image.
    assert await server.ready() == server.card
    assert seen == [1]
    seen.clear()

    # Real traffic finished just now: no call of its own.
    await server.score(images, PROMPTS[:3])
    assert seen == [3]
    assert await server.ready() == server.card
    assert seen == [3]

    # A batch in flight and a fresh one before it: the probe does not wait for it.
    release = threading.Event()
    started = threading.Event()
    real = server._forward_recorded

    def held(*args: object) -> tuple[np.ndarray, list[int]]:
        started.set()
        release.wait(30)
        return real(*args)  # type: ignore[arg-type]

    server._forward_recorded = held  # type: ignore[method-assign]
    busy = asyncio.create_task(server.score(images, PROMPTS[:3]))
    await asyncio.to_thread(started.wait, 30)
    assert await asyncio.wait_for(server.ready(), timeout=5) == server.card
    assert not busy.done()
    release.set()
    await busy
    del server._forward_recorded

    # Stale: a real call again.
    seen.clear()
    server._last_ok = time.monotonic() - server.READY_FRESH_S - 1
    assert await server.ready() == server.card
    assert seen == [1]

    # A model whose batches fail is not fresh, and the probe reports the failure.
    def broken(*args: object) -> tuple[np.ndarray, list[int]]:
        raise RuntimeError("CUDA error: device-side assert")

    server._forward_recorded = broken  # type: ignore[method-assign]
    server._last_ok = time.monotonic() - server.READY_FRESH_S - 1
    stale = server._last_ok
    with pytest.raises(RuntimeError, match="device-side assert"):
        await server.score(images, PROMPTS[:3])
    with pytest.raises(RuntimeError, match="device-side assert"):
        await server.ready()
    assert server._last_ok == stale

    # Non-finite scores are not a good batch either.
    def nan(imgs: list[np.ndarray], *args: object) -> tuple[np.ndarray, list[int]]:
        return np.full(len(imgs), np.nan), [len(imgs)]

    server._forward_recorded = nan  # type: ignore[method-assign]
    await server.score(images, PROMPTS[:3])
    assert server._last_ok == stale
    with pytest.raises(RuntimeError, match="on the probe"):
        await server.ready()
    del server._forward_recorded
