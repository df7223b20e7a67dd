"""Starting and stopping Ray, Serve and the two applications, for the CLI, the tests and
the benchmark alike.

``serve.run`` blocks forever when a replica cannot be scheduled (it only logs a warning
every 30 s), so :func:`deploy` submits the applications without waiting and polls their
status with a deadline, failing with every deployment's message instead of hanging.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve.config import HTTPOptions

from divreward.services.config import DiversityAppArgs, RewardAppArgs

__all__ = [
    "DIVERSITY_APP",
    "DIVERSITY_ROUTE",
    "REWARD_APP",
    "DeployError",
    "deploy",
    "deploy_services",
    "serve_start_options",
    "shutdown",
    "start",
    "wait_running",
]

log = logging.getLogger("divreward.services")

REWARD_APP = "reward"
DIVERSITY_APP = "diversity"
DIVERSITY_ROUTE = "/diversity"


class DeployError(RuntimeError):
    """An application failed to deploy (or did not become RUNNING in time)."""


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
        ray.init(
            address="local",
            include_dashboard=False,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            logging_level=logging.WARNING,
            **(ray_init_kwargs or {}),
        )
    serve.start(**start_options)


def deploy(
    targets: list[tuple[Any, str, str | None]], timeout_s: float = 300.0, poll_s: float = 0.5
) -> None:
    """Deploy ``(application, name, route_prefix)`` targets and wait until all are
    RUNNING; raise DeployError naming each failed or unfinished deployment."""
    from ray.serve.api import RunTarget, run_many

    run_many(
        [RunTarget(target=app, name=name, route_prefix=prefix) for app, name, prefix in targets],
        wait_for_ingress_deployment_creation=False,
        wait_for_applications_running=False,
    )
    wait_running([name for _, name, _ in targets], timeout_s, poll_s)


def wait_running(names: list[str], timeout_s: float = 300.0, poll_s: float = 0.5) -> None:
    """Poll ``serve.status()`` until every named application is RUNNING; raise
    DeployError as soon as one is DEPLOY_FAILED, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status()
        apps = {n: status.applications.get(n) for n in names}
        failed = {n: a for n, a in apps.items() if a is not None and a.status == "DEPLOY_FAILED"}
        if failed:
            raise DeployError(_describe(failed))
        if all(a is not None and a.status == "RUNNING" for a in apps.values()):
            return
        if time.monotonic() > deadline:
            pending = {n: a for n, a in apps.items() if a is None or a.status != "RUNNING"}
            raise DeployError(
                f"not RUNNING after {timeout_s:.0f}s (a replica that cannot be scheduled "
                "waits forever: check num_cpus/num_gpus against the cluster):\n"
                + _describe(pending)
            )
        time.sleep(poll_s)


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


@dataclass
class ShutdownReport:
    serve_ok: bool
    ray_ok: bool


def shutdown() -> ShutdownReport:
    """serve.shutdown then ray.shutdown; each attempted even if the other fails."""
    serve_ok = ray_ok = True
    try:
        if ray.is_initialized():
            serve.shutdown()
    except Exception:
        log.exception("serve.shutdown failed")
        serve_ok = False
    try:
        ray.shutdown()
    except Exception:
        log.exception("ray.shutdown failed")
        ray_ok = False
    return ShutdownReport(serve_ok, ray_ok)
