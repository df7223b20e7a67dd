"""Starting and stopping Ray, Serve and the applications: the one start-up path of the
CLI (``divreward serve``), the tests and the benchmarks, on Serve's public API only
(``serve.start``, ``serve.run``, ``serve.status``, ``serve.shutdown``).

``serve.run`` blocks until its application is RUNNING, and forever when a replica cannot
be scheduled (it only logs a warning every 30 s). So :func:`deploy` runs each
application's ``serve.run`` in a daemon thread, in order (the reward app's ingress looks
its diversity app up when it starts: each application is submitted once the previous
one is registered), and waits for them against one deadline: done when every
``serve.run`` has returned, failed at once when one raises (with every deployment's
message from ``serve.status()`` when the application failed to deploy), and failed at
the deadline, naming what is not running, instead of hanging.

A Serve config file (what ``divreward serve --config`` runs) becomes targets through
:func:`config_targets`: each application is built by its typed builder with the file's
``deployments:`` overrides and ``runtime_env`` applied the way Serve applies them
(:class:`~divreward.services.common.deployments.Overrides`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import ray
from ray import serve
from ray.serve import Application
from ray.serve.config import HTTPOptions

from divreward.services.common.deployments import Overrides
from divreward.services.config import DiversityAppArgs, RewardAppArgs

__all__ = [
    "DIVERSITY_APP",
    "DIVERSITY_ROUTE",
    "REWARD_APP",
    "DeployError",
    "Target",
    "config_start_options",
    "config_targets",
    "deploy",
    "deploy_services",
    "fit_problems",
    "init_local_ray",
    "resource_demands",
    "serve_start_options",
    "shutdown",
    "start",
]

log = logging.getLogger("divreward.services")

REWARD_APP = "reward"
DIVERSITY_APP = "diversity"
DIVERSITY_ROUTE = "/diversity"


class DeployError(RuntimeError):
    """An application failed to deploy (or did not become RUNNING in time)."""


class Target(NamedTuple):
    """One application to deploy: what ``serve.run`` gets, and (for a config's
    application, :func:`config_targets`) the final options of each of its deployments."""

    app: Application
    name: str
    route_prefix: str | None = "/"
    logging_config: Mapping[str, Any] | None = None
    deployments: tuple[Mapping[str, Any], ...] = ()


def serve_start_options(
    host: str = "127.0.0.1",
    http_port: int = 8000,
    request_timeout_s: float | None = None,
    grpc_port: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``serve.start``: where the HTTP proxy listens, and the gRPC
    proxy with the divreward servicer when ``grpc_port`` is given. One function, so the
    CLI, the tests and the benchmark start Serve the same way."""
    options: dict[str, Any] = {
        "http_options": HTTPOptions(host=host, port=http_port, request_timeout_s=request_timeout_s),
    }
    if grpc_port is not None:
        options["grpc_options"] = _grpc_options(grpc_port)
    return options


def _grpc_options(port: int) -> Any:
    """gRPC proxy options: the port and the divreward servicer."""
    from ray.serve.config import gRPCOptions

    from divreward.services.reward_server.grpc_methods import GRPC_SERVICER_FUNCTION

    return gRPCOptions(port=port, grpc_servicer_functions=[GRPC_SERVICER_FUNCTION])


def start(
    start_options: dict[str, Any],
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
) -> None:
    """A new local Ray instance (never someone else's cluster) and Serve on it."""
    if not ray.is_initialized():
        init_local_ray(num_cpus, num_gpus, logging_level=logging.WARNING, **(ray_init_kwargs or {}))
    serve.start(**start_options)


#: Ray starts its workers, and so every Serve replica, at this niceness unless told
#: otherwise (its default is 15): a model replica then yields the CPU to any process at
#: normal priority beside it (a client, a trainer, a data loader).
WORKER_NICENESS_ENV = "RAY_worker_niceness"


def init_local_ray(num_cpus: int | None, num_gpus: int | None, **kwargs: Any) -> None:
    """``ray.init`` of a new local instance whose workers run at normal priority
    (``RAY_worker_niceness=0`` unless the environment sets it; the raylet reads it at
    start-up), without the dashboard."""
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    ray.init(
        address="local", include_dashboard=False, num_cpus=num_cpus, num_gpus=num_gpus, **kwargs
    )


#: serve.run threads of this process (joined by :func:`shutdown`), and how long it waits.
_RUNS: list[_Run] = []
_RUN_JOIN_S = 10.0


class _Run:
    """``serve.run`` of one target in a daemon thread: whether it returned (the
    application is RUNNING) and what it raised, if anything."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.error: BaseException | None = None
        self.returned = False
        self.thread = threading.Thread(
            target=self._main, name=f"serve.run {target.name}", daemon=True
        )
        self.thread.start()
        _RUNS[:] = [*(r for r in _RUNS if r.thread.is_alive()), self]

    def _main(self) -> None:
        try:
            serve.run(
                self.target.app,
                name=self.target.name,
                route_prefix=self.target.route_prefix,
                logging_config=dict(self.target.logging_config)
                if self.target.logging_config
                else None,
            )
            self.returned = True
        except BaseException as exc:  # reported by the poller in the caller's thread
            self.error = exc


def deploy(
    targets: Sequence[Target | tuple[Any, str, str | None]],
    timeout_s: float = 300.0,
    poll_s: float = 0.5,
) -> None:
    """Deploy the targets (``Target`` or ``(application, name, route_prefix)``) in order
    and wait until all are RUNNING; raise DeployError naming each failed or unfinished
    deployment, at once when one fails, or at the deadline."""
    runs: list[_Run] = []
    deadline = time.monotonic() + timeout_s
    for target in targets:
        runs.append(_Run(Target(*target)))
        # The next application is submitted once this one is registered (or RUNNING).
        _poll(runs, deadline, timeout_s, poll_s, until_registered=True)
    _poll(runs, deadline, timeout_s, poll_s, until_registered=False)


def _poll(
    runs: Sequence[_Run], deadline: float, timeout_s: float, poll_s: float, until_registered: bool
) -> None:
    """Wait until the last run's application is registered, or until every run has
    returned (``serve.run`` returns once its application is RUNNING: a status of an
    earlier application of the same name cannot be mistaken for it)."""
    while True:
        status = serve.status()
        apps = {r.target.name: status.applications.get(r.target.name) for r in runs}
        for run in runs:
            if run.error is not None:
                raise _run_failed(run.target.name, run.error) from run.error
        if until_registered and (runs[-1].returned or apps[runs[-1].target.name] is not None):
            return
        if not until_registered and all(r.returned for r in runs):
            return
        if time.monotonic() > deadline:
            pending = {r.target.name: apps[r.target.name] for r in runs if not r.returned}
            raise DeployError(
                f"not RUNNING after {timeout_s:.0f}s (a replica that cannot be scheduled "
                "waits forever: check num_cpus/num_gpus and resources against the "
                "cluster):\n" + _describe(pending)
            )
        time.sleep(poll_s)


def _run_failed(name: str, exc: BaseException) -> DeployError:
    """The error of application ``name``'s ``serve.run``, which raised ``exc``, with the
    deployments' own messages (a replica constructor's exception is there, not in
    ``serve.run``'s text). The status is read after the exception: one read before it
    may still say DEPLOYING."""
    lines = [f"application {name!r}: serve.run raised {type(exc).__name__}: {exc}"]
    try:
        app = serve.status().applications.get(name)
    except Exception as status_exc:  # the controller is gone: serve.run's text is all there is
        lines.append(f"(serve.status failed: {type(status_exc).__name__}: {status_exc})")
    else:
        if app is not None:
            lines.append(_describe({name: app}))
    return DeployError("\n".join(lines))


def _describe(apps: dict[str, Any]) -> str:
    lines: list[str] = []
    for name, app in apps.items():
        if app is None:
            lines.append(f"application {name!r}: not created")
            continue
        lines.append(f"application {name!r}: {app.status} {app.message}".strip())
        for dname, dep in app.deployments.items():
            if dep.status != "HEALTHY":
                lines.append(f"  deployment {dname!r}: {dep.status} {dep.message}".strip())
    return "\n".join(lines)


def deploy_services(
    reward: RewardAppArgs,
    diversity: DiversityAppArgs,
    timeout_s: float = 300.0,
    diversity_route: str = DIVERSITY_ROUTE,
) -> None:
    """Both applications: diversity (named ``reward.diversity_app``) at
    ``diversity_route`` and reward at ``/``."""
    from divreward.services.diversity_server.app import build_diversity_app
    from divreward.services.reward_server.app import build_reward_app

    deploy(
        [
            (build_diversity_app(diversity), reward.diversity_app, diversity_route),
            (build_reward_app(reward), REWARD_APP, "/"),
        ],
        timeout_s=timeout_s,
    )


#: Application fields of a Serve config that ``serve.run`` has no way to apply.
_UNSUPPORTED_APP_FIELDS = ("autoscaling_policy", "external_scaler_enabled", "host", "port")


def _typed_builders() -> dict[Any, Callable[..., Application]]:
    """The config builders (``import_path``) and the typed builders that take overrides."""
    from divreward.services.diversity_server import app as diversity
    from divreward.services.reward_server import app as reward

    return {
        reward.build_app: reward.build_reward_app,
        diversity.build_app: diversity.build_diversity_app,
    }


def config_targets(config: Mapping[str, Any]) -> list[Target]:
    """The applications of a Serve config (a dict that passed
    :func:`~divreward.services.deploy_config.validate_config`), each built by its typed
    builder from its ``args`` with the file's ``deployments:`` overrides and
    ``runtime_env`` applied. Raises ValueError naming the application and what is wrong
    (an override of a deployment it does not have, a field ``serve.run`` cannot apply)
    before anything is deployed."""
    from ray.serve.schema import ServeDeploySchema

    from divreward.services.deploy_config import builder_args_model, import_builder

    schema = ServeDeploySchema.model_validate(config)
    if "target_capacity" in schema.model_fields_set:
        raise ValueError("target_capacity: not supported by divreward serve (use serve deploy)")
    builders = _typed_builders()
    targets: list[Target] = []
    for app in schema.applications:
        given = app.model_dump(exclude_unset=True)
        where = f"application {app.name!r}"
        bad = [f for f in _UNSUPPORTED_APP_FIELDS if f in given]
        if bad:
            raise ValueError(f"{where}: {bad} not supported by divreward serve")
        builder = builders.get(import_builder(app.import_path))
        model = builder_args_model(app.import_path)
        if builder is None or model is None:
            raise ValueError(
                f"{where}: import_path {app.import_path!r} is not a divreward application "
                f"builder (divreward serve runs "
                "divreward.services.reward_server.app:build_app and "
                "divreward.services.diversity_server.app:build_app)"
            )
        overrides = _RecordedOverrides.from_app_config(given)
        try:
            built = builder(model.model_validate(app.args or {}), overrides=overrides)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        logging_config = given.get("logging_config")
        recorded = tuple(overrides.seen)
        targets.append(Target(built, app.name, app.route_prefix, logging_config, recorded))
    return targets


def config_start_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``serve.start`` from a Serve config: proxy location, HTTP and
    gRPC options, and the global logging, tracing and controller settings it gives."""
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    options: dict[str, Any] = {
        "proxy_location": schema.proxy_location,
        "http_options": schema.http_options.model_dump(),
        "grpc_options": schema.grpc_options.model_dump(),
    }
    for key in ("logging_config", "tracing_config", "controller_options"):
        if key in schema.model_fields_set:
            value = getattr(schema, key)
            options[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return options


@dataclass(frozen=True)
class Demand:
    """What one deployment asks of the cluster: per replica, and how many replicas it
    starts with (``num_replicas``, or an autoscaled deployment's initial/min replicas)."""

    app: str
    deployment: str
    replicas: int
    per_replica: dict[str, float]


def resource_demands(targets: Sequence[Target]) -> list[Demand]:
    """The resources every deployment of ``targets`` (from :func:`config_targets`) asks
    for, from the options its builder gave it with the config's overrides applied:
    ``ray_actor_options`` (``num_cpus``, Serve's default 1; ``num_gpus``; ``memory``;
    custom ``resources``) times ``num_replicas`` (autoscaled: the initial, else minimum,
    replicas)."""
    out: list[Demand] = []
    for target in targets:
        for options in target.deployments:
            actor = dict(options.get("ray_actor_options") or {})
            need: dict[str, float] = {"CPU": float(actor.get("num_cpus", 1) or 0.0)}
            need["GPU"] = float(actor.get("num_gpus", 0) or 0.0)
            need["memory"] = float(actor.get("memory", 0) or 0.0)
            need.update({k: float(v) for k, v in (actor.get("resources") or {}).items()})
            auto = options.get("autoscaling_config")
            if auto:
                auto = dict(auto) if isinstance(auto, Mapping) else auto.model_dump()
                replicas = int(auto.get("initial_replicas") or auto.get("min_replicas") or 0)
            else:
                replicas = int(options.get("num_replicas") or 1)
            need = {k: v for k, v in need.items() if v > 0}
            out.append(Demand(target.name, str(options["name"]), replicas, need))
    return out


@dataclass(frozen=True)
class _RecordedOverrides(Overrides):
    """A config's overrides that keep each deployment's final options as the builder
    applies them (every deployment's options pass through :meth:`Overrides.apply`)."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, options: Mapping[str, Any]) -> dict[str, Any]:
        out = super().apply(options)
        self.seen.append(out)
        return out


def _amount(resource: str, value: float) -> str:
    if resource == "memory":
        return f"{value / 2**30:.3g} GiB of memory"
    return f"{resource} {value:g}"


def fit_problems(
    demands: Sequence[Demand], totals: Mapping[str, float], nodes: Sequence[Mapping[str, float]]
) -> list[str]:
    """Why ``demands`` cannot be placed on a cluster with these total resources
    (``ray.cluster_resources()``) and nodes (each alive node's resources): a replica
    that no single node can hold, or more of a resource than the cluster has in all.
    Empty when they fit (as far as totals tell: fragmentation across nodes is not
    modelled). Each problem names the deployment and the resource."""
    eps = 1e-9
    problems: list[str] = []
    for d in demands:
        for res, amount in d.per_replica.items():
            largest = max((float(n.get(res, 0.0)) for n in nodes), default=0.0)
            if amount > largest + eps:
                problems.append(
                    f"deployment {d.deployment!r} of application {d.app!r} asks for "
                    f"{_amount(res, amount)} per replica, but no node of this Ray cluster "
                    f"has that much (largest node: {_amount(res, largest)}; cluster total: "
                    f"{_amount(res, float(totals.get(res, 0.0)))})"
                )
    if problems:
        return problems
    summed: dict[str, float] = {}
    for d in demands:
        for res, amount in d.per_replica.items():
            summed[res] = summed.get(res, 0.0) + amount * d.replicas
    for res, amount in summed.items():
        have = float(totals.get(res, 0.0))
        if amount > have + eps:
            who = ", ".join(
                f"{d.app}/{d.deployment} {d.replicas} x {d.per_replica[res]:g}"
                for d in demands
                if res in d.per_replica and d.replicas
            )
            problems.append(
                f"the deployments ask for {_amount(res, amount)} in all ({who}), but this Ray "
                f"cluster has {_amount(res, have)}"
            )
    return problems


@dataclass
class ShutdownReport:
    serve_ok: bool
    ray_ok: bool


def shutdown() -> ShutdownReport:
    """serve.shutdown then ray.shutdown; each attempted even if the other fails.

    In between, the ``serve.run`` threads still waiting (an application that failed or
    timed out) are given time to see Serve gone and end: one that touched Ray after
    ray.shutdown would start a new local Ray instance from that thread."""
    serve_ok = ray_ok = True
    try:
        if ray.is_initialized():
            serve.shutdown()
    except Exception:
        log.exception("serve.shutdown failed")
        serve_ok = False
    deadline = time.monotonic() + _RUN_JOIN_S
    for run in _RUNS:
        run.thread.join(timeout=max(0.0, deadline - time.monotonic()))
    _RUNS[:] = [r for r in _RUNS if r.thread.is_alive()]
    if _RUNS:
        log.warning(
            "serve.run threads still waiting at shutdown: %s", [r.target.name for r in _RUNS]
        )
    try:
        ray.shutdown()
    except Exception:
        log.exception("ray.shutdown failed")
        ray_ok = False
    return ShutdownReport(serve_ok, ray_ok)
