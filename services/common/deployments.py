"""How the two applications are put together: the ingress deployment's options, the
names of the diversity application's deployments (its contract with the reward app),
and the reward app's link to them, resolved when the reward ingress starts.

Two Serve applications cannot ``.bind()`` each other's deployments, so the reward app
gets handles to the diversity app by name. The names are checked in the reward
ingress's constructor, which Serve runs during the deploy: a misnamed or missing
diversity application fails the deploy with a message that says so, instead of the
first request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ray.serve.config import BackpressureConfig

from divreward.services.config import IngressArgs

__all__ = [
    "DIVERSITY_INGRESS",
    "EMBEDDER",
    "DiversityHandles",
    "connect_diversity",
    "ingress_options",
]

log = logging.getLogger("ray.serve")

#: Deployment names inside the diversity application.
DIVERSITY_INGRESS = "DiversityIngress"
EMBEDDER = "embedder"

#: How long the reward ingress waits for the diversity app's deployments to be
#: registered (both applications are submitted together; building one takes seconds).
CONNECT_TIMEOUT_S = 120.0


def ingress_options(name: str, ingress: IngressArgs) -> dict[str, Any]:
    """Serve options of an ingress deployment (replicas, CPU, queue and backpressure)."""
    return {
        "name": name,
        "num_replicas": ingress.num_replicas,
        "ray_actor_options": {
            "num_cpus": ingress.num_cpus,
            **({"resources": dict(ingress.resources)} if ingress.resources else {}),
        },
        "max_ongoing_requests": ingress.max_ongoing_requests,
        "max_queued_requests": ingress.max_queued_requests,
        "backpressure_config": BackpressureConfig(
            status_code=ingress.backpressure_status, retry_after_s=ingress.retry_after_s
        ),
    }


@dataclass(frozen=True)
class DiversityHandles:
    """Handles to the diversity application's ingress and embedder (both None when a
    quality-only reward app runs without one)."""

    app_name: str
    ingress: Any
    embedder: Any

    @property
    def deployed(self) -> bool:
        return self.ingress is not None


def connect_diversity(
    app_name: str, required: bool = True, timeout_s: float = CONNECT_TIMEOUT_S
) -> DiversityHandles:
    """Handles to the diversity application ``app_name``, checked to exist.

    Raises RuntimeError at once when Serve has no application of that name (unless not
    ``required``: a reward app whose default method needs no embeddings then runs
    quality-only, and refuses requests for a diversity term), or when it has not
    registered both deployments within ``timeout_s`` (or failed to deploy).
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        app = apps.get(app_name)
        if app is None and not required:
            log.warning(
                "no diversity application %r: this reward app serves quality only", app_name
            )
            return DiversityHandles(app_name, None, None)
        if app is None:
            raise RuntimeError(
                f"diversity_app: Serve has no application named {app_name!r} (it runs "
                f"{sorted(apps)}); deploy the diversity application with the reward "
                "application, under that name"
            )
        if app.status == "DEPLOY_FAILED":
            raise RuntimeError(
                f"diversity_app: the application {app_name!r} failed to deploy: {app.message}"
            )
        try:
            return DiversityHandles(
                app_name,
                serve.get_deployment_handle(DIVERSITY_INGRESS, app_name),
                serve.get_deployment_handle(EMBEDDER, app_name),
            )
        except (RayServeException, KeyError, ValueError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"diversity_app: the application {app_name!r} has no deployments "
                    f"{DIVERSITY_INGRESS!r} and {EMBEDDER!r} after {timeout_s:g} s ({exc}); "
                    "is it a divreward diversity application?"
                ) from None
        time.sleep(0.25)
