"""``divreward serve``: a local Ray instance and both applications, until Ctrl-C.

    divreward serve [--config FILE] [--profile real|tiny] [--host H] [--port P]
                    [--tenants F] [--token-file F] [--tiny-dir D] [--weights-dir D]
                    [--address ADDR]

Without ``--config`` it runs :func:`~divreward.services.deploy_config.default_config`
(diversity app at /diversity, reward app at /, on 127.0.0.1:8000). A config file is
validated strictly (unknown keys are errors); each application is built by its builder
with the file's ``deployments:`` overrides and ``runtime_env`` applied as Serve applies
them, and deployed with ``serve.run`` (an override naming a deployment the application
does not have stops it before anything starts, exit 2). Flags override the file:
``--profile``/``--tiny-dir``/``--weights-dir``/``--tenants``/``--token-file`` every
application's args,
``--host``/``--port`` the HTTP options.

Without ``--address`` it starts a local Ray instance; with it (``--address
127.0.0.1:6379``, or ``auto``) it joins an existing cluster, and Ctrl-C shuts Serve down
and disconnects, leaving the cluster running.

Before anything is deployed it checks, and stops within seconds naming what is wrong:

- real models that would run on the CPU (no ``num_gpus`` in the config) need
  ``--device cpu``, an explicit choice (they are slow there); without ``--config`` on a
  machine with GPUs the two default models share its first GPU;
- with ``HF_HUB_OFFLINE=1`` on a local instance, every real model's weights must be
  present (``divreward weights check``); the error names the repository and the
  ``divreward weights pull`` command;
- the config's resources (GPUs, CPUs, memory, custom resources) must fit the cluster
  (``ray.cluster_resources()`` and its nodes); ``--no-fit-check`` skips this, e.g. on an
  autoscaling cluster whose nodes are not up yet.

Listening beyond loopback requires bearer-token auth (``--tenants FILE`` or
``DIVREWARD_TENANTS_FILE``: tenants with weights and quotas; or ``--token-file`` /
``DIVREWARD_API_TOKENS``: each token a tenant of weight 1); without tokens the services
answer loopback callers only.
Ctrl-C (or SIGTERM) shuts Serve and Ray down and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["prepare_config", "register", "run_serve"]

log = logging.getLogger("divreward.services")

LOOPBACK_NAMES = {"localhost"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "serve",
        help="run the reward and diversity services (Ray Serve) on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="Serve config file (e.g. deploy/serve-tiny.yaml)")
    p.add_argument(
        "--profile",
        choices=["real", "tiny"],
        help="real: real weights (hub cache or --weights-dir); tiny: tiny random test models "
        "(scores meaningless, marked in every response). Default: the config's, else real.",
    )
    p.add_argument("--host", help="HTTP host (default: the config's, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's, else 8000)")
    p.add_argument(
        "--grpc-port",
        type=int,
        help="gRPC port (default: the config's, else 9000); Serve's gRPC proxy listens on "
        "all interfaces",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="enable bearer-token auth with the tokens in this file (one per line; each a "
        "tenant of weight 1)",
    )
    p.add_argument(
        "--tenants",
        type=Path,
        help="enable bearer-token auth with the tenants of this YAML file (name, token or "
        "token_sha256, weight, max_queued_images; docs/operations.md); default: "
        "$DIVREWARD_TENANTS_FILE",
    )
    p.add_argument("--tiny-dir", type=Path, help="where the tiny models are (built if missing)")
    p.add_argument("--weights-dir", type=Path, help="root of local real weights")
    p.add_argument(
        "--address",
        help="join this Ray cluster (e.g. 127.0.0.1:6379, or 'auto') instead of starting a "
        "local instance; Ctrl-C then shuts Serve down and leaves the cluster running",
    )
    p.add_argument("--num-cpus", type=int, help="logical CPUs for the local Ray instance")
    p.add_argument("--num-gpus", type=int, help="GPUs for the local Ray instance")
    p.add_argument(
        "--device",
        choices=["cpu"],
        help="run the models on the CPU: required for real models without GPUs (slow; "
        "the tiny profile needs no flag)",
    )
    p.add_argument(
        "--no-fit-check",
        action="store_true",
        help="deploy even when the config's resources exceed what the cluster has now "
        "(an autoscaling cluster adds nodes on demand)",
    )
    p.add_argument(
        "--deploy-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for every deployment to be RUNNING (default 900)",
    )
    from divreward.services.tls import add_tls_args

    add_tls_args(p)
    p.set_defaults(func=run_serve)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config to deploy: the file (or the default) with the flags applied, checked
    strictly; raises ValueError with a message for the user."""
    from divreward.services.deploy_config import default_config, load_config, validate_config

    if args.config is not None:
        config = copy.deepcopy(load_config(args.config))
    else:
        # A local instance has this machine's CPUs (or --num-cpus): the models get
        # whole cores. A cluster's nodes are sized by `ray start`: the args' defaults.
        local_cpus = getattr(args, "num_cpus", None) or os.cpu_count()
        cpus = None if getattr(args, "address", None) else local_cpus
        config = default_config(args.profile or "real", cpus=cpus)
        if (args.profile or "real") == "real" and getattr(args, "device", None) != "cpu":
            gpus = None if getattr(args, "address", None) else getattr(args, "num_gpus", None)
            if gpus is None and not getattr(args, "address", None):
                gpus = _local_gpus()
            if gpus:  # the two default models share the first GPU
                for app in config["applications"]:
                    for entry in _model_entries(app["args"]).values():
                        entry["num_gpus"] = 0.5
    http = config.setdefault("http_options", {})
    http["host"] = args.host or http.get("host") or "127.0.0.1"
    http["port"] = args.port or http.get("port") or 8000
    # gRPC front door: the divreward servicer on --grpc-port.
    from divreward.services.reward_server.grpc_methods import GRPC_SERVICER_FUNCTION

    grpc = config.setdefault("grpc_options", {})
    grpc["port"] = getattr(args, "grpc_port", None) or grpc.get("port") or 9000
    servicers = grpc.setdefault("grpc_servicer_functions", [])
    if GRPC_SERVICER_FUNCTION not in servicers:
        servicers.append(GRPC_SERVICER_FUNCTION)
    env_tokens = os.environ.get("DIVREWARD_API_TOKENS", "").strip()
    env_tenants = os.environ.get("DIVREWARD_TENANTS_FILE", "").strip()
    tenants_file = getattr(args, "tenants", None)
    for app in config.get("applications", []):
        app_args = app.setdefault("args", {})
        if args.profile:
            app_args["profile"] = args.profile
        if args.tiny_dir:
            app_args["tiny_models_dir"] = str(args.tiny_dir.expanduser().resolve())
        if args.weights_dir:
            app_args["weights_dir"] = str(args.weights_dir.expanduser().resolve())
        if getattr(args, "device", None) == "cpu":
            for entry in _model_entries(app_args).values():
                entry["device"] = "cpu"
                entry["num_gpus"] = 0
        auth = app_args.setdefault("auth", {})
        if tenants_file:
            auth["enabled"] = True
            auth["tenants_file"] = str(tenants_file.expanduser().resolve())
        if args.token_file:
            auth["enabled"] = True
            auth["token_file"] = str(args.token_file.expanduser().resolve())
        if env_tokens or env_tenants:
            auth["enabled"] = True
    if not _is_loopback(str(http["host"])):
        off = [
            a.get("name", "?")
            for a in config.get("applications", [])
            if not a.get("args", {}).get("auth", {}).get("enabled")
        ]
        if off:
            raise ValueError(
                f"refusing to listen on {http['host']} (not a loopback address) without auth "
                f"for {off}: pass --tenants FILE or --token-file FILE, or set "
                "DIVREWARD_TENANTS_FILE or DIVREWARD_API_TOKENS"
            )
    from divreward.services.tls import GRPC_WITHOUT_TLS, apply_tls

    if apply_tls(args, config):
        log.info("TLS on: %s", GRPC_WITHOUT_TLS)
    validate_config(config)
    # Auth that is on must have tokens now, not fail later inside a replica.
    from divreward.services.config import AuthArgs

    for app in config.get("applications", []):
        AuthArgs.model_validate(app.get("args", {}).get("auth", {})).load_tenants()
    return config


def _local_gpus() -> int:
    """CUDA devices of this machine (what a local Ray instance detects)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _model_entries(app_args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An application's model deployment args by deployment name (``scorer-<name>``,
    ``embedder``), as mutable dicts of the config."""
    entries = {f"scorer-{n}": s for n, s in (app_args.get("scorers") or {}).items()}
    if "embedder" in app_args or "scorers" not in app_args:
        entries["embedder"] = app_args.setdefault("embedder", {})
    return entries


def cpu_models(config: dict[str, Any], targets: list[Any]) -> list[str]:
    """The real models that would run on the CPU without being told to: no GPU among
    their deployment's resources and no explicit ``device``."""
    from divreward.services.launch import resource_demands

    by_app = {a["name"]: a.get("args") or {} for a in config.get("applications", [])}
    out = []
    for d in resource_demands(targets):
        app_args = by_app.get(d.app, {})
        if app_args.get("profile", "real") != "real" or d.per_replica.get("GPU"):
            continue
        entry = _model_entries(dict(app_args)).get(d.deployment)
        if entry is not None and not entry.get("device"):
            out.append(f"{d.app}/{d.deployment}")
    return out


def missing_weights(config: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """With HF_HUB_OFFLINE=1 on this machine: each real model whose weights are not where
    its loader looks (one line each, with the command that fetches them)."""
    from divreward.models.weights_cli import Selection, add_serve_config, check_selection

    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return []  # online, the replicas fetch what is missing from the hub
    lines = []
    for app in config.get("applications", []):
        sel = Selection()
        add_serve_config(sel, {"applications": [app]}, "config")
        root = (app.get("args") or {}).get("weights_dir") or os.environ.get("DIVREWARD_WEIGHTS_DIR")
        for found in check_selection(sel, Path(root) if root else None, None):
            if not found.ok:
                fetch = "divreward weights pull " + (
                    f"--serve-config {args.config}" if args.config else "--profile real"
                )
                fetch += f" --weights-dir {root}" if root else ""
                lines.append(
                    f"weights of {found.repo} missing ({', '.join(found.missing[:4])}; looked in "
                    f"{' and '.join(found.looked)}; HF_HUB_OFFLINE=1): fetch them with `{fetch}`"
                )
    return lines


def explain_failure(message: str) -> str:
    """The lines of a deployment failure a user needs first (missing weights, etc.)."""
    wanted = re.compile(r"(WeightsNotFoundError|FileNotFoundError|ValueError|ImportError)[:]")
    lines = list(dict.fromkeys(ln.strip() for ln in message.splitlines() if wanted.search(ln)))
    # Serve's status message repeats the error, sometimes cut short: keep the full copy.
    full = [ln for ln in lines if not any(o != ln and o.startswith(ln.rstrip(":")) for o in lines)]
    return "\n".join(full)


class _StopRequestedError(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequestedError()


def run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if getattr(args, "address", None) and (args.num_cpus or args.num_gpus):
            raise ValueError(
                "--num-cpus/--num-gpus size a local Ray instance; with --address they "
                "belong to `ray start` on the cluster's nodes"
            )
        config = prepare_config(args)
        from divreward.services.launch import config_start_options, config_targets

        # Built here, before Ray starts: a bad override or args stop it at once.
        targets = config_targets(config)
        start_options = config_start_options(config)
        on_cpu = cpu_models(config, targets)
        if on_cpu and getattr(args, "device", None) != "cpu":
            raise ValueError(
                f"real models would run on the CPU: {', '.join(on_cpu)} (no num_gpus in the "
                "config, and no GPU found for the default one). That is slow (seconds per "
                "image for PickScore's ViT-H) and rarely what you want: give them GPUs "
                "(e.g. --config deploy/serve-1gpu.yaml), pass --device cpu to run them on "
                "the CPU anyway, or --profile tiny to try the machinery"
            )
        if not getattr(args, "address", None):
            missing = missing_weights(config, args)
            if missing:
                print("divreward serve: " + "\ndivreward serve: ".join(missing), file=sys.stderr)
                return 1
    except (ValueError, OSError) as exc:
        print(f"divreward serve: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from divreward.services.launch import DeployError, deploy, init_local_ray, shutdown

    names = [t.name for t in targets]
    apps = config.get("applications", [])
    profiles = {a.get("args", {}).get("profile", "real") for a in apps}
    if "tiny" in profiles:
        from divreward.services.profile import tiny_banner

        log.warning(tiny_banner("divreward serve"))
    host, port = config["http_options"]["host"], config["http_options"]["port"]
    # A process started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Ray installs its own SIGTERM handler in ray.init (it only logs):
    # (re)install both so that Ctrl-C and SIGTERM always mean a clean shutdown.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        address = getattr(args, "address", None)
        if address:  # an existing cluster: its nodes were sized by `ray start`
            ray.init(address=address)
        else:
            init_local_ray(args.num_cpus, args.num_gpus)
        signal.signal(signal.SIGTERM, _raise_stop)
        if not getattr(args, "no_fit_check", False):
            from divreward.services.launch import fit_problems, resource_demands

            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            problems = fit_problems(resource_demands(targets), ray.cluster_resources(), nodes)
            if problems:
                print(
                    "divreward serve: the config does not fit this Ray cluster:\n  "
                    + "\n  ".join(problems)
                    + "\n(--no-fit-check deploys anyway, for an autoscaling cluster)",
                    file=sys.stderr,
                )
                return 2
        serve.start(**start_options)
        deploy(targets, timeout_s=args.deploy_timeout)
        scheme = "https" if config["http_options"].get("ssl_certfile") else "http"
        print(
            f"divreward: serving {names} on {scheme}://{host}:{port} (profile "
            f"{'/'.join(sorted(profiles))}); Ctrl-C to stop",
            flush=True,
        )
        while True:
            time.sleep(1.0)
    except DeployError as exc:
        first = explain_failure(str(exc))
        weights = [ln for ln in first.splitlines() if "WeightsNotFoundError:" in ln]
        if weights:  # one short error: the repository and the command, no traceback
            # the outermost error comes last in a traceback (the one with the command)
            short = weights[-1][weights[-1].index("WeightsNotFoundError:") :]
            print(f"divreward serve: deployment failed: {short}", file=sys.stderr)
            log.debug("deployment failed:\n%s", exc)
            return 1
        print(f"divreward serve: deployment failed\n{first}\n\n{exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _StopRequestedError):
        print("divreward: shutting down", flush=True)
        return 0
    finally:
        # A second Ctrl-C (impatient user, or a wrapper forwarding the signal) must not
        # abort the shutdown halfway and leave Ray processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutdown()
