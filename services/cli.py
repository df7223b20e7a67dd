"""``divreward serve``: a local Ray instance and both applications, until Ctrl-C.

    divreward serve [--config FILE] [--profile real|tiny] [--host H] [--port P]
                    [--token-file F] [--tiny-dir D] [--weights-dir D] [--address ADDR]

Without ``--config`` it runs :func:`~divreward.services.deploy_config.default_config`
(diversity app at /diversity, reward app at /, on 127.0.0.1:8000). A config file is
validated strictly (unknown keys are errors); each application is built by its builder
with the file's ``deployments:`` overrides and ``runtime_env`` applied as Serve applies
them, and deployed with ``serve.run`` (an override naming a deployment the application
does not have stops it before anything starts, exit 2). Flags override the file:
``--profile``/``--tiny-dir``/``--weights-dir``/``--token-file`` every application's args,
``--host``/``--port`` the HTTP options.

Without ``--address`` it starts a local Ray instance; with it (``--address
127.0.0.1:6379``, or ``auto``) it joins an existing cluster, and Ctrl-C shuts Serve down
and disconnects, leaving the cluster running.

Listening beyond loopback requires bearer-token auth (``--token-file`` or
``DIVREWARD_API_TOKENS``); without tokens the services answer loopback callers only.
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
        help="enable bearer-token auth with the tokens in this file (one per line)",
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
    for app in config.get("applications", []):
        app_args = app.setdefault("args", {})
        if args.profile:
            app_args["profile"] = args.profile
        if args.tiny_dir:
            app_args["tiny_models_dir"] = str(args.tiny_dir.expanduser().resolve())
        if args.weights_dir:
            app_args["weights_dir"] = str(args.weights_dir.expanduser().resolve())
        auth = app_args.setdefault("auth", {})
        if args.token_file:
            auth["enabled"] = True
            auth["token_file"] = str(args.token_file.expanduser().resolve())
        elif env_tokens:
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
                f"for {off}: pass --token-file FILE or set DIVREWARD_API_TOKENS"
            )
    from divreward.services.tls import GRPC_WITHOUT_TLS, apply_tls

    if apply_tls(args, config):
        log.info("TLS on: %s", GRPC_WITHOUT_TLS)
    validate_config(config)
    # Auth that is on must have tokens now, not fail later inside a replica.
    from divreward.services.config import AuthArgs

    for app in config.get("applications", []):
        AuthArgs.model_validate(app.get("args", {}).get("auth", {})).load_tokens()
    return config


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
