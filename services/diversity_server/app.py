"""The diversity application: an embedder deployment (DreamSim by default, batched) and
a FastAPI ingress serving /v1/embed, /v1/diversity, /v1/metrics, /v1/models, /healthz,
/readyz and /metrics.

Deployable on its own (``serve run divreward.services.diversity_server.app:build_app``
or a config file's ``import_path``) and composed into the reward application, which
calls this ingress's methods (``embed``, ``diversity``, ``metrics``, ``ready``) and its
embedder through deployment handles (names in
:mod:`divreward.services.common.deployments`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from divreward.schema import (
    DiversityRequest,
    DiversityResponse,
    EmbedRequest,
    EmbedResponse,
    MetricsRequest,
    MetricsResponse,
)
from divreward.services.common.api import Api
from divreward.services.common.deployments import (
    DIVERSITY_INGRESS,
    EMBEDDER,
    Overrides,
    ingress_app,
    ingress_options,
)
from divreward.services.common.errors import ServiceError
from divreward.services.common.routes import diversity_router, ops_router
from divreward.services.config import DiversityAppArgs
from divreward.services.diversity_server.serving import DiversityServing
from divreward.services.model_deployments import EmbedderDeployment, model_deployment_options
from divreward.services.profile import prepare_profile

__all__ = ["DiversityIngress", "build_app", "build_diversity_app"]

log = logging.getLogger("ray.serve")
T = TypeVar("T")

DESCRIPTION = (
    "Embeddings, group diversity (DiverseGRPO creativity bonus, DRIFT intra-group "
    "diversity) and evaluation metrics. JSON with base64 images, or msgpack with raw "
    "image bytes (Content-Type: application/msgpack)."
)


@serve.ingress()
class DiversityIngress:
    """Ingress of the diversity app; the logic lives in ``self.serving``."""

    def __init__(self, embedder: Any, args: DiversityAppArgs) -> None:
        self.args = args
        self.serving = DiversityServing(embedder, args)
        self.api = Api("diversity", args.limits, args.auth, args.ingress)
        self.serving.observe = self.api.metrics.observe_model
        if args.profile == "tiny":
            log.warning("diversity service runs the TINY profile: every response says so")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return ingress_app(
            "divreward diversity service",
            DESCRIPTION,
            self.api,
            [diversity_router, ops_router],
            [serve.get_replica_context().app_name],
            serving=self.serving,
        )

    # Methods called through deployment handles by the reward application. A request
    # error comes back as a returned ServiceError rather than raised, so that Serve does
    # not log a client's mistake as a failed call with a traceback.
    async def embed(self, req: EmbedRequest) -> EmbedResponse | ServiceError:
        return await _returning_errors(self.serving.embed(req))

    async def diversity(self, req: DiversityRequest) -> DiversityResponse | ServiceError:
        return await _returning_errors(self.serving.diversity(req))

    async def metrics(self, req: MetricsRequest) -> MetricsResponse | ServiceError:
        return await _returning_errors(self.serving.metrics(req))

    async def ready(self) -> dict[str, str]:
        return await self.serving.ready()


async def _returning_errors(call: Awaitable[T]) -> T | ServiceError:
    try:
        return await call
    except ServiceError as err:
        return err


def build_diversity_app(
    args: DiversityAppArgs, *, overrides: Overrides | None = None
) -> Application:
    """The diversity application from typed args (Python and config files alike), with a
    config file's ``deployments:`` overrides and ``runtime_env`` applied; an override
    naming a deployment it does not have is a ValueError, raised before anything is
    built."""
    overrides = overrides or Overrides()
    embedder_opts = model_deployment_options(EMBEDDER, args.embedder)
    ingress_opts = ingress_options(DIVERSITY_INGRESS, args.ingress)
    overrides.check([DIVERSITY_INGRESS, EMBEDDER])
    tiny_dir = prepare_profile(args, [] if args.embedder.plugin else [args.embedder.name])
    embedder = EmbedderDeployment.options(**overrides.apply(embedder_opts)).bind(
        args.embedder.name,
        args.embedder,
        args.profile,
        args.weights_dir,
        str(tiny_dir) if tiny_dir is not None else None,
    )
    ingress = serve.deployment()(DiversityIngress).options(**overrides.apply(ingress_opts))
    return ingress.bind(embedder, args)


def build_app(args: DiversityAppArgs) -> Application:
    """Builder for ``import_path: divreward.services.diversity_server.app:build_app``;
    the config file's ``args`` are validated into DiversityAppArgs here (unknown keys are
    errors). Serve (``serve deploy``, KubeRay) applies the file's overrides itself;
    ``divreward serve`` calls :func:`build_diversity_app` with them."""
    # Serve converts the args only when the annotation is a class; under
    # ``from __future__ import annotations`` it is a string, so a dict arrives.
    return build_diversity_app(
        DiversityAppArgs.model_validate(args) if isinstance(args, dict) else args
    )
