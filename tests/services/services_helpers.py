"""Helpers of the service tests: images on the wire, the same tiny models in-process,
and the reference computation (the core math on the models' own outputs)."""

from __future__ import annotations

import base64
import dataclasses
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from divreward.core import (
    AdvantageConfig,
    DiverseGRPOConfig,
    DRIFTConfig,
    GARDOConfig,
    diversegrpo_rewards,
    drift_rewards,
    gardo_rewards,
    group_advantages,
)
from divreward.images import encode_image
from divreward.models.base import Embedder, Scorer
from divreward.models.registry import load_model
from divreward.models.tiny import tiny_load_options


def make_group(n: int, seed: int, size: int = 48) -> list[np.ndarray]:
    """``n`` distinct smooth-ish (size, size+8, 3) uint8 images."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(0, 256, size=(1, 1, 3))
        grad = np.linspace(0, 1, size + 8)[None, :, None] * rng.integers(-128, 128, size=(1, 1, 3))
        noise = rng.integers(-30, 30, size=(size, size + 8, 3))
        out.append(np.clip(base + grad + noise, 0, 255).astype(np.uint8))
    return out


def png(images: list[np.ndarray]) -> list[bytes]:
    return [encode_image(img, "PNG") for img in images]


def b64(files: list[bytes]) -> list[str]:
    return [base64.b64encode(f).decode("ascii") for f in files]


@cache
def local_model(name: str, tiny_dir: str, options: tuple[tuple[str, Any], ...] = ()) -> Any:
    """The same tiny model the service runs, loaded in this process by the same loader."""
    opts = tiny_load_options(name, Path(tiny_dir))
    if options:
        opts = dataclasses.replace(opts, options=dict(options))
    return load_model(name, opts)


def local_scores(
    names: list[str], tiny_dir: Path, images: list[np.ndarray], prompt: str
) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        model = local_model(name, str(tiny_dir))
        assert isinstance(model, Scorer)
        out[name] = model.score(images, [prompt] * len(images))
    return out


def local_embed(
    name: str, options: dict[str, Any], tiny_dir: Path, images: list[np.ndarray]
) -> np.ndarray:
    model = local_model(name, str(tiny_dir), tuple(sorted(options.items())))
    assert isinstance(model, Embedder)
    return model.embed(images)


def reference_group(
    method: str,
    quality: dict[str, np.ndarray],
    weights: dict[str, float],
    embeddings: np.ndarray | None,
    params: dict[str, Any],
    eps: float,
) -> dict[str, Any]:
    """What /v1/rewards must return for one group, from the core math directly:
    Q = sum(weight * score) in the weights' order, then the method."""
    n = len(next(iter(quality.values())))
    total = np.zeros(n)
    for name, w in weights.items():
        total += w * np.asarray(quality[name], dtype=np.float64)
    adv = AdvantageConfig(eps=eps)
    cfg = {k: v for k, v in params.items() if k != "method"}
    core = {
        "diversegrpo": (diversegrpo_rewards, DiverseGRPOConfig),
        "drift": (drift_rewards, DRIFTConfig),
        "gardo": (gardo_rewards, GARDOConfig),
    }
    if method in core:
        run, config = core[method]
        # the core result's fields: rewards, advantages and the method's own terms
        return {"total": total, **vars(run(total, embeddings, config(**cfg), adv))}
    return {"total": total, "rewards": total, "advantages": group_advantages(total, eps)}


class StubServing:
    """A serving layer without models: ready and /v1/models only (front-door tests)."""

    async def ready(self) -> dict[str, str]:
        return {"stub": "ok"}

    async def models(self) -> Any:
        from divreward.schema import ModelsResponse, NoDiversityParams, RewardParams

        return ModelsResponse(
            scorers={},
            defaults=RewardParams(
                quality={}, diversity=NoDiversityParams(), advantage=AdvantageConfig()
            ),
            limits={},
        )


def deploy_extra_reward_app(
    serve_app: Any,
    tiny_zoo: Any,
    app: str,
    route: str,
    scorers: dict[str, float],
    max_batch_images: int = 16,
) -> dict[str, str]:
    """A second reward app on the session's Serve instance (beside its diversity app),
    with ``scorers`` (name -> weight) built as tiny twins, each its own deployment; the
    HTTP and gRPC addresses to reach it. The caller deletes ``app`` when done."""
    from fixtures_serve import mark_built

    from divreward.services import launch
    from divreward.services.config import RewardAppArgs
    from divreward.services.reward_server.app import build_reward_app

    for name in scorers:
        tiny_zoo.build(name)
    mark_built(tiny_zoo.root, list(scorers))
    model = {
        "num_cpus": 0.1,
        "batch": {"max_batch_images": max_batch_images, "batch_wait_timeout_s": 0.005},
    }
    args = RewardAppArgs(
        profile="tiny",
        tiny_models_dir=str(tiny_zoo.root),
        ingress={"num_cpus": 0.1},
        scorers={name: {**model, "weight": w} for name, w in scorers.items()},
    )
    launch.deploy([(build_reward_app(args), app, route)], timeout_s=240.0)
    return {"http": serve_app.base_url + route, "grpc": serve_app.extra["grpc_url"]}


def quality_only_app(name: str, prefix: str, tiny_dir: Path) -> dict[str, Any]:
    """A config file's entry: a reward app on the tiny PickScore, without diversity."""
    return {
        "name": name,
        "route_prefix": prefix,
        "import_path": "divreward.services.reward_server.app:build_app",
        "args": {
            "profile": "tiny",
            "tiny_models_dir": str(tiny_dir),
            "default_diversity": "none",
            "diversity_app": "no-diversity-here",
            "scorers": {"pickscore": {"num_cpus": 0.1}},
            "ingress": {"num_cpus": 0.1},
        },
    }
