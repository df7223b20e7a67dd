"""The reward application: one deployment per configured quality scorer (each batched,
each with its own replicas and GPU fraction) and a FastAPI ingress, the front door at
``/``: /v1/score, /v1/rewards, /v1/models, /healthz, /readyz, /metrics, /docs, and
/v1/embed, /v1/diversity, /v1/metrics delegated to the diversity application through
deployment handles.

The diversity application is deployed beside it (same Serve instance, its own route
prefix, default ``/diversity``, submitted in the same deploy) and found by name
(``RewardAppArgs.diversity_app``) when the reward ingress starts: a wrong name fails the
deploy. The group assembler is a deployment of this app, bound into the ingress.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from divreward.methods import METHODS
from divreward.services.common.api import Api
from divreward.services.common.deployments import (
    Overrides,
    connect_diversity,
    ingress_app,
    ingress_options,
)
from divreward.services.common.routes import diversity_router, ops_router
from divreward.services.config import RewardAppArgs
from divreward.services.model_deployments import ScorerDeployment, model_deployment_options
from divreward.services.profile import prepare_profile
from divreward.services.reward_server.assembler import ASSEMBLER, assembler_deployment
from divreward.services.reward_server.compat import compat_router
from divreward.services.reward_server.groups import GroupService
from divreward.services.reward_server.grpc_methods import RewardGrpcMethods
from divreward.services.reward_server.router import reward_router
from divreward.services.reward_server.serving import RewardServing

__all__ = ["REWARD_INGRESS", "RewardIngress", "build_app", "build_reward_app", "scorer_name"]

log = logging.getLogger("ray.serve")

REWARD_INGRESS = "RewardIngress"

DESCRIPTION = (
    "Quality scores, group diversity (DiverseGRPO, DRIFT), combined rewards and group "
    "advantages for GRPO fine-tuning of text-to-image models. JSON with base64 images, or "
    "msgpack with raw image bytes (Content-Type: application/msgpack)."
)


def scorer_name(name: str) -> str:
    """Deployment name of a scorer (one deployment per configured scorer)."""
    return f"scorer-{name}"


@serve.ingress()
class RewardIngress(RewardGrpcMethods):
    """Ingress of the reward app; the logic lives in ``self.serving`` (shared with the
    gRPC methods of :class:`RewardGrpcMethods`)."""

    def __init__(self, scorers: dict[str, Any], args: RewardAppArgs, assembler: Any) -> None:
        self.args = args
        # Raises (and so fails the deploy) if the diversity app is missing or misnamed,
        # unless the default method needs no embeddings (a quality-only reward app).
        needs = METHODS[args.default_diversity].needs_embeddings
        diversity = connect_diversity(args.diversity_app, required=needs)
        own = serve.get_replica_context().app_name
        self.serve_apps = [own, *([diversity.app_name] if diversity.deployed else [])]
        self.api = Api("reward", args.limits, args.auth, args.ingress)
        self.serving = RewardServing(scorers, diversity, args, self.api.auth.tenants)
        self.groups = GroupService(self.serving, assembler)
        self.serving.observe = self.api.metrics.observe_model
        if args.profile == "tiny":
            log.warning("reward service runs the TINY profile: every response says so")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return ingress_app(
            "divreward reward service",
            DESCRIPTION,
            self.api,
            [reward_router, diversity_router, ops_router, compat_router],
            self.serve_apps,
            serving=self.serving,
            groups=self.groups,
        )


def build_reward_app(args: RewardAppArgs, *, overrides: Overrides | None = None) -> Application:
    """The reward application from typed args (Python and config files alike), with a
    config file's ``deployments:`` overrides and ``runtime_env`` applied; an override
    naming a deployment it does not have is a ValueError, raised before anything is
    built."""
    overrides = overrides or Overrides()
    scorer_options = {
        name: model_deployment_options(scorer_name(name), s) for name, s in args.scorers.items()
    }
    ingress_opts = ingress_options(REWARD_INGRESS, args.ingress)
    overrides.check([REWARD_INGRESS, *(o["name"] for o in scorer_options.values()), ASSEMBLER])
    tiny_dir = prepare_profile(args, [n for n, s in args.scorers.items() if s.plugin is None])
    scorers = {
        name: ScorerDeployment.options(**overrides.apply(scorer_options[name])).bind(
            name, s, args.profile, args.weights_dir, str(tiny_dir) if tiny_dir else None
        )
        for name, s in args.scorers.items()
    }
    ingress = serve.deployment()(RewardIngress).options(**overrides.apply(ingress_opts))
    return ingress.bind(scorers, args, assembler_deployment(args.assembly, overrides))


def build_app(args: RewardAppArgs) -> Application:
    """Builder for ``import_path: divreward.services.reward_server.app:build_app``;
    the config file's ``args`` are validated into RewardAppArgs here (unknown keys are
    errors). Serve (``serve deploy``, KubeRay) applies the file's overrides itself;
    ``divreward serve`` calls :func:`build_reward_app` with them."""
    # Serve converts the args only when the annotation is a class; under
    # ``from __future__ import annotations`` it is a string, so a dict arrives.
    return build_reward_app(RewardAppArgs.model_validate(args) if isinstance(args, dict) else args)
