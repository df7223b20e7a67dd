"""One batch setting per model deployment: the deployment's ``user_config`` sets the
forward-pass size of the model it serves, and ``ModelOutput.batch_images`` (what the
``divreward_batch_images`` metric observes) is the size of each pass the model ran."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures_models import TinyZoo

from divreward.models.registry import load_model
from divreward.schema import ModelCard
from divreward.services.config import BatchArgs, ModelDeploymentArgs
from divreward.services.model_deployments import ScorerServer, model_deployment_options

PROMPTS = [f"prompt {i}" for i in range(7)]


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


def test_user_config_sets_the_forward_pass_and_the_metric(
    tiny_zoo: TinyZoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Outside a replica, @serve.batch's queue asks for the replica's max_ongoing_requests
    # (only to warn); answer as a replica configured with the defaults would.
    ctx = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr("ray.serve.get_replica_context", lambda: ctx)
    server, seen = _server(tiny_zoo)
    # One event loop for every call: @serve.batch's queue lives on the loop it started on.
    lazy = ScorerServer._batched.set_max_batch_size.__self__  # type: ignore[attr-defined]
    try:
        asyncio.run(asyncio.wait_for(_calls(server, seen), timeout=60))
    finally:
        # In a replica the queue lives as long as the process; here it must not outlive
        # this test's event loop (Ray creates it again on first use).
        lazy._queue = None


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
