"""How the two applications are put together: the ingress deployment's options, a
config file's per-deployment overrides (:class:`Overrides`, applied by the builders),
the names of the diversity application's deployments (its contract with the reward
app), and the reward app's link to them, resolved when the reward ingress starts.

Two Serve applications cannot ``.bind()`` each other's deployments, so the reward app
gets handles to the diversity app by name. The names are checked in the reward
ingress's constructor, which Serve runs during the deploy: a misnamed or missing
diversity application fails the deploy with a message that says so, instead of the
first request.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Self

from fastapi import APIRouter, FastAPI
from ray.serve.config import BackpressureConfig
from ray.serve.schema import ReplicaState

from divreward.services.common.api import Api
from divreward.services.common.app import make_app
from divreward.services.config import IngressArgs

__all__ = [
    "DIVERSITY_INGRESS",
    "EMBEDDER",
    "DiversityHandles",
    "Overrides",
    "connect_diversity",
    "ingress_app",
    "ingress_options",
    "merge_options",
    "unavailable_deployments",
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


def ingress_app(
    title: str,
    description: str,
    api: Api,
    routers: list[APIRouter],
    serve_apps: list[str],
    **state: Any,
) -> FastAPI:
    """An ingress's FastAPI app: ``state`` (its serving layer, ...) on ``app.state``, and
    the Serve applications it needs (its own first), which /readyz checks have a running
    replica of every deployment before it probes them."""
    app = make_app(title, description, api, routers)
    app.state.serve_apps = tuple(serve_apps)
    for key, value in state.items():
        setattr(app.state, key, value)
    return app


async def unavailable_deployments(state: Any) -> dict[str, str]:
    """``{"app/deployment": why}`` for each deployment of the applications in
    ``state.serve_apps`` that has no running replica (from ``serve.status()``); empty
    when all have one, or when ``state`` names no applications (an app outside Serve).
    /readyz answers 503 with these at once instead of waiting for a call to time out."""
    names: tuple[str, ...] = getattr(state, "serve_apps", ())
    if not names:
        return {}
    from ray import serve

    apps = (await asyncio.to_thread(serve.status)).applications
    down: dict[str, str] = {}
    for name in names:
        app = apps.get(name)
        if app is None:
            down[name] = "application not deployed"
            continue
        for dep_name, dep in app.deployments.items():
            if not dep.replica_states.get(ReplicaState.RUNNING):
                why = f"{dep.status}: {dep.message}" if dep.message else str(dep.status)
                down[f"{name}/{dep_name}"] = f"no running replica ({why})"[:500]
    return down


@cache
def _option_names() -> frozenset[str]:
    """What ``Deployment.options`` accepts (its public keywords)."""
    from ray.serve import Deployment

    params = inspect.signature(Deployment.options).parameters
    return frozenset(
        n for n in params if not n.startswith("_") and n not in {"self", "func_or_class", "version"}
    )


def merge_options(
    options: Mapping[str, Any],
    override: Mapping[str, Any] | None = None,
    runtime_env: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``Deployment.options`` of one deployment: the code's ``options`` with a config
    file's ``deployments:`` entry and the application's ``runtime_env`` applied, with the
    semantics of Serve's own config deploys:

    - each field the entry gives replaces the code's; ``ray_actor_options`` replaces the
      code's whole dict, ``user_config`` the whole config;
    - ``num_replicas`` and ``autoscaling_config`` are one choice: ``num_replicas: auto``
      autoscales (with the entry's ``autoscaling_config``, else the code's, over Serve's
      defaults), a number fixes the count, ``autoscaling_config`` alone autoscales;
    - the application's ``runtime_env`` lies under the deployment's own: the
      deployment's keys win, except ``env_vars``, which are merged (its own win).

    Raises ValueError for a field ``Deployment.options`` does not take.
    """
    merged = copy.deepcopy(dict(options))
    given = {k: copy.deepcopy(v) for k, v in (override or {}).items() if k != "name"}
    unknown = sorted(set(given) - _option_names())
    if unknown:
        raise ValueError(
            f"deployment {merged.get('name')!r}: {unknown} cannot be set per deployment "
            f"here (settable: {', '.join(sorted(_option_names()))})"
        )
    if "num_replicas" in given or "autoscaling_config" in given:
        code_autoscaling = merged.pop("autoscaling_config", None)
        merged.pop("num_replicas", None)
        replicas = given.pop("num_replicas", None)
        autoscaling = given.pop("autoscaling_config", None)
        if replicas == "auto":
            merged["num_replicas"] = "auto"
            if autoscaling or code_autoscaling:
                merged["autoscaling_config"] = autoscaling or code_autoscaling
        elif replicas is not None and autoscaling is not None:
            raise ValueError(
                f"deployment {merged.get('name')!r}: num_replicas {replicas} and "
                "autoscaling_config exclude each other (use num_replicas: auto)"
            )
        elif replicas is not None:
            merged["num_replicas"] = replicas
        else:
            merged["autoscaling_config"] = autoscaling
    merged.update(given)
    if runtime_env:
        actor = dict(merged.get("ray_actor_options") or {})
        own = dict(actor.get("runtime_env") or {})
        env = {**runtime_env, **own}
        env_vars = {**runtime_env.get("env_vars", {}), **own.get("env_vars", {})}
        if env_vars:
            env["env_vars"] = env_vars
        actor["runtime_env"] = env
        merged["ray_actor_options"] = actor
    _check_packages(merged)
    return merged


def _check_packages(options: Mapping[str, Any]) -> None:
    """Raise ValueError for a local path in a replica's ``working_dir`` or
    ``py_modules``: Ray uploads local directories and modules only for a job
    (``ray.init``), so a replica given one fails to start, again and again, with
    "Expected URI but received path"."""
    env = (options.get("ray_actor_options") or {}).get("runtime_env") or {}
    given = [("working_dir", env["working_dir"])] if env.get("working_dir") else []
    given += [("py_modules", m) for m in env.get("py_modules") or []]
    local = [f"{key} {value!r}" for key, value in given if "://" not in str(value)]
    if local:
        raise ValueError(
            f"deployment {options.get('name')!r}: runtime_env {', '.join(local)} is a local "
            "path; a replica's runtime_env takes only URIs (https://.../code.zip, s3://..., "
            "gs://..., or local:// for a directory on every node). For local code, install "
            "it where the replicas run or start divreward serve from the directory that "
            "holds it"
        )


@dataclass(frozen=True)
class Overrides:
    """A config file's overrides of one application: its ``deployments:`` entries (the
    fields each one gives, by deployment name) and its ``runtime_env``. The builders
    take them (``overrides=``), check the names against their deployments before
    building anything, and pass each deployment's options through :meth:`apply`."""

    deployments: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    runtime_env: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_app_config(cls, app: Mapping[str, Any]) -> Self:
        """From one entry of a config's ``applications`` (the keys it sets)."""
        by_name: dict[str, Mapping[str, Any]] = {}
        for entry in app.get("deployments") or []:
            name = entry["name"]
            if name in by_name:
                raise ValueError(f"deployments: {name!r} is listed twice")
            by_name[name] = entry
        return cls(by_name, dict(app.get("runtime_env") or {}))

    def check(self, names: Iterable[str]) -> None:
        """Raise ValueError if an entry names a deployment the application lacks."""
        have = list(names)
        unknown = sorted(set(self.deployments) - set(have))
        if unknown:
            raise ValueError(
                f"deployments: no deployment named {', '.join(map(repr, unknown))} in this "
                f"application (its deployments: {', '.join(have)})"
            )

    def apply(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` (with its ``name``) with this application's overrides applied."""
        return merge_options(options, self.deployments.get(options["name"]), self.runtime_env)


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
