"""The docs cannot drift from the code.

Every ``divreward ...`` command line shown in README.md and docs/*.md parses with the
CLI's own argparse definitions; every ``make`` target shown exists in the Makefile;
every ``DIVREWARD_*`` environment variable (and every variable set in front of a shown
command) is read somewhere in the source; and the defaults the docs quote for the trainer
and for ``divreward serve`` are the code's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Where an environment variable counts as read: the code and what deploys it.
SOURCES = [
    *(ROOT / d for d in ("divreward", "services", "trainer", "bench", "docker", "deploy")),
    ROOT / "Makefile",
    ROOT / "docker-compose.yml",
]
SOURCE_SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".toml", ""}
#: Variables read by the libraries the docs tell users to set (not by divreward's code).
LIBRARY_VARIABLES = {
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "CUDA_VISIBLE_DEVICES",
    "OMP_WAIT_POLICY",  # OpenMP's (docs/performance.md: a measured lead, not adopted)
}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code(path: Path) -> tuple[list[str], list[str]]:
    """(the lines of the fenced code blocks, the inline code spans) of a Markdown file;
    a line ending in a backslash is joined with the next."""
    text = _text(path)
    lines: list[str] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        lines += block.replace("\\\n", " ").splitlines()
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", outside)
    return lines, spans


def _commands(line: str, program: str) -> list[list[str]]:
    """The ``program ...`` commands of a shell line, as argument lists (comments, env
    assignments in front and ``&&``/``;``/``|`` chains handled)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    out: list[list[str]] = []
    current: list[str] | None = None
    start = True  # at a command's first word (after `VAR=value`s and a prompt `$`)
    prev = ""
    for w in words:
        if w in {"&&", ";", "|", "||"}:
            current, start = None, True
        elif current is not None:
            current.append(w)
        elif start and (w == program or w.endswith("/" + program)):  # or .venv/bin/divreward
            current = []
            out.append(current)
        elif program == "divreward" and w == "divreward.cli" and prev == "-m":
            current = []  # `accelerate launch ... -m divreward.cli train ...`, torchrun's
            out.append(current)
        elif not (start and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*|\$", w)):
            start = False  # another program's words
        prev = w
    return out


def _shown(program: str) -> list[tuple[str, list[str]]]:
    """Every ``program`` command in the docs: (where, its arguments)."""
    found = []
    for path in DOCS:
        lines, spans = _code(path)
        for text in lines + [s for s in spans if s.startswith(program + " ")]:
            found += [(f"{path.name}: {text.strip()}", args) for args in _commands(text, program)]
    return found


# ------------------------------------------------------------------ divreward commands
def _parser() -> argparse.ArgumentParser:
    from divreward.cli import build_parser

    return build_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _problem(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """Why the CLI refuses ``args`` (None: it parses them)."""
    subs = _subparsers(parser)
    if not args:
        return None
    if args[0] not in subs:
        return f"no sub-command {args[0]!r} (there are: {', '.join(sorted(subs))})"
    words = list(args)
    while words and words[-1] in {"...", "…"}:  # "and more"
        words.pop()
    actions = {o: a for a in subs[args[0]]._actions for o in a.option_strings}
    dangling = words[-1] in actions and actions[words[-1]].nargs != 0
    if dangling or any("[" in a or "|" in a for a in words):
        # a usage synopsis (`--profile real|tiny`, `[--seed N]`) or a flag named in prose
        # (`divreward serve --grpc-port`): its flags must exist
        known = set(actions)
        flags = [w.strip("[]").split("=")[0] for w in words if w.lstrip("[").startswith("-")]
        unknown = [f for f in flags if f not in known]
        return f"unknown flags {unknown}" if unknown else None
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(words)
        except SystemExit as exc:
            if exc.code not in (0, None):  # --help exits 0
                return err.getvalue().strip().splitlines()[-1]
    return None


def test_every_divreward_command_in_the_docs_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # paths shown are relative to the repository
    parser = _parser()
    shown = _shown("divreward")
    assert len(shown) > 20, "the extraction found too few commands"
    bad = [f"{where}\n    -> {p}" for where, args in shown if (p := _problem(parser, args))]
    assert not bad, "commands in the docs that the CLI refuses:\n" + "\n".join(bad)


def test_the_command_check_catches_a_stale_line() -> None:
    parser = _parser()
    assert _problem(parser, ["serve", "--profile", "tiny"]) is None
    assert _problem(parser, ["train", "--help"]) is None
    assert "unrecognized arguments: --no-such-flag" in str(
        _problem(parser, ["serve", "--no-such-flag"])
    )
    assert "no sub-command 'servee'" in str(_problem(parser, ["servee"]))
    assert "unknown flags ['--sed']" in str(_problem(parser, ["make-tiny-models", "[--sed", "N]"]))
    assert _commands(
        "DIVREWARD_API_TOKENS=x divreward serve --config a.yaml  # c", "divreward"
    ) == [["serve", "--config", "a.yaml"]]
    assert _commands("kubectl get rayservice divreward && make demo", "make") == [["demo"]]
    assert _commands("kubectl get rayservice divreward", "divreward") == []
    line = "torchrun --nproc_per_node 8 -m divreward.cli train --preset x"
    assert _commands(line, "divreward") == [["train", "--preset", "x"]]


# ------------------------------------------------------------------ make targets
def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", _text(ROOT / "Makefile"), re.M))


def test_every_make_target_in_the_docs_exists() -> None:
    targets = _make_targets()
    assert {"serve", "test", "demo", "lint"} <= targets
    shown: list[tuple[str, str]] = []
    for where, args in _shown("make"):
        names = [a for a in args if not a.startswith("-") and "=" not in a]
        shown += [(where, n) for n in names[:1]]  # `make TARGET [VAR=...]`
    assert len(shown) > 10, "the extraction found too few make commands"
    bad = [f"{where}: make {n}" for where, n in shown if n not in targets]
    assert not bad, "make targets in the docs that the Makefile lacks:\n" + "\n".join(bad)


# ------------------------------------------------------------------ environment variables
def _source_text() -> str:
    parts = []
    for src in SOURCES:
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for f in files:
            if f.suffix in SOURCE_SUFFIXES or f.name.startswith("Dockerfile"):
                with contextlib.suppress(UnicodeDecodeError):
                    parts.append(f.read_text(encoding="utf-8"))
    return "\n".join(parts)


def test_every_environment_variable_in_the_docs_is_read_by_the_code() -> None:
    shown: dict[str, str] = {}
    for path in DOCS:
        text = _text(path)
        for name in re.findall(r"\b(DIVREWARD_[A-Z0-9_]*[A-Z0-9])\b(?!\.json)", text):
            shown.setdefault(name, path.name)
        lines, spans = _code(path)
        for line in lines + spans:  # variables set in front of a shown command
            for name in re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]+)=\S", line):
                shown.setdefault(name, path.name)
    assert "DIVREWARD_WEIGHTS_DIR" in shown and "DIVREWARD_API_TOKENS" in shown
    source = _source_text()
    bad = [
        f"{where}: {name}"
        for name, where in sorted(shown.items())
        if name not in LIBRARY_VARIABLES and not re.search(rf"\b{name}\b", source)
    ]
    assert not bad, "environment variables in the docs that no code reads:\n" + "\n".join(bad)


# ------------------------------------------------------------------ quoted defaults
def _quoted(path: str, pattern: str) -> tuple[str, ...]:
    m = re.search(pattern, " ".join(_text(ROOT / path).split()))
    assert m, f"{path} no longer says {pattern!r}: update this test with the docs"
    return m.groups()


def test_the_trainer_defaults_the_docs_quote_are_the_codes() -> None:
    from divreward.core.config import NoisePromptConfig
    from divreward.trainer.config import TrainConfig

    cfg, noise = TrainConfig(), NoisePromptConfig()
    doc = "docs/trainer.md"
    decay, every = _quoted(doc, r"The EMA \(decay ([\d.]+), updated every (\d+) optimiser steps")
    assert (float(decay), int(every)) == (cfg.ema_decay, cfg.ema_every)
    (warm,) = _quoted(doc, r"warm-up `min\(\(1\+s\)/\(10\+s\), ([\d.]+)\)`")
    assert float(warm) == cfg.ema_decay
    (clamp,) = _quoted(doc, r"advantages clamped to ±(\d+)")
    assert float(clamp) == cfg.adv_clip_max
    (clip,) = _quoted(doc, r"clip range ([\de.-]+)\)")
    assert float(clip) == cfg.clip_range
    (norm,) = _quoted(doc, r"grad-norm clip at ([\d.]+)")
    assert float(norm) == cfg.max_grad_norm
    (k,) = _quoted(doc, r"first `sa_reg_k` \(K = (\d+)\)")
    assert int(k) == cfg.sa_reg_k
    (backend,) = _quoted(doc, r"`reward_backend: (\w+)` \(default\)")
    assert backend == cfg.reward_backend
    s, tau1, tau2, psi = _quoted(
        doc, r"paper values s = ([\d.]+), τ1 = ([\d.]+), τ2 = ([\d.]+), ψ = ([\d.]+)\)"
    )
    assert tuple(map(float, (s, tau1, tau2, psi))) == (noise.s, noise.tau1, noise.tau2, noise.psi)
    (token_env,) = _quoted(doc, r"`authorization: Bearer \$(\w+)` when that variable is set")
    assert token_env == cfg.reward_token_env
    (tb,) = _quoted(doc, r"TensorBoard \(`<output_dir>/(\w+)`")
    assert tb == "tb" and cfg.tensorboard


def test_the_serve_defaults_the_docs_quote_are_the_codes() -> None:
    from divreward.services.cli import prepare_config
    from divreward.services.config import DEFAULT_TINY_DIR

    args = _parser().parse_args(["serve"])
    config = prepare_config(args)
    http, grpc = config["http_options"], config["grpc_options"]
    host, port, grpc_port = _quoted(
        "README.md", r"HTTP listens on ([\d.]+):(\d+) \(OpenAPI at `/docs`\), gRPC on port (\d+)"
    )
    assert (host, int(port), int(grpc_port)) == (http["host"], http["port"], grpc["port"])
    host, port = _quoted("docs/serving.md", r"\| real weights, ([\d.]+):(\d+), diversity at")
    assert (host, int(port)) == (http["host"], http["port"])
    (timeout,) = _quoted("docs/serving.md", r"`--deploy-timeout` \(default (\d+) s\)")
    assert float(timeout) == args.deploy_timeout
    (tiny,) = _quoted("docs/serving.md", r"tiny random models \(built into `([^`]+)` on first use")
    assert tiny == DEFAULT_TINY_DIR


# ------------------------------------------------------------------ the README quickstart
def _quickstart() -> tuple[list[str], str]:
    """The README quickstart's shell blocks and its Python block."""
    text = _text(ROOT / "README.md")
    section = text.split("## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    bash = re.findall(r"```bash\n(.*?)```", section, re.S)
    (python,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return bash, python


def test_the_quickstart_shows_serve_then_score_then_train() -> None:
    bash, python = _quickstart()
    serve, score, train = bash
    assert "divreward serve --profile tiny" in serve and "curl" in score
    assert "client.score(" in python and "divreward train --preset tiny-cpu" in train


@pytest.mark.serve
def test_the_quickstart_scores_from_curl_and_python(
    serve_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart's curl and Python blocks, run as written against the session's tiny
    app (its URL in place of 127.0.0.1:8000), give the same scores."""
    import json
    import subprocess

    _, score, _ = _quickstart()[0]
    python = _quickstart()[1]
    monkeypatch.chdir(tmp_path)
    default = "http://127.0.0.1:8000"
    assert default in score and default in python
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", score.replace(default, serve_app.base_url)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert out.returncode == 0, out.stderr
    from_curl = json.loads(out.stdout)["scores"]
    scope: dict[str, Any] = {}
    exec(compile(python.replace(default, serve_app.base_url), "README.md", "exec"), scope)
    assert set(from_curl) == set(scope["scores"]) >= {"pickscore"}
    for name, values in from_curl.items():
        assert len(values) == 1
        assert values == pytest.approx(scope["scores"][name], rel=1e-6, abs=1e-9)


def test_the_method_defaults_and_presets_the_docs_quote_are_the_codes() -> None:
    """README's beta and lambda are the services' (and the in-process rewards') defaults;
    docs/trainer.md's preset table says what the preset files set."""
    from divreward.core.config import CoreConfig
    from divreward.trainer.config import load_config

    core = CoreConfig()
    (beta,) = _quoted("README.md", r"`R = Q \+ β·E` \(β = ([\d.]+)\)")
    (lam,) = _quoted("README.md", r"`A\(Q\) \+ λ·A\(R_int\)` \(λ = ([\d.]+)\)")
    assert (float(beta), float(lam)) == (core.diversegrpo.beta, core.drift.lam)
    doc = "docs/trainer.md"
    r, alpha, lr, acc, batch = _quoted(
        doc,
        r"`diversegrpo-sd35-pickscore` \| SD3.5-M \| PickScore \+ DiverseGRPO \(β [\d.]+\) \| "
        r"SA-Reg K \d+ \| LoRA (\d+)/(\d+), lr ([\de.-]+), accumulation (\d+), batch (\d+)",
    )
    cfg = load_config("diversegrpo-sd35-pickscore")
    assert (int(r), int(alpha), float(lr)) == (cfg.lora_rank, cfg.lora_alpha, cfg.learning_rate)
    assert (int(acc), int(batch)) == (cfg.gradient_accumulation_steps, cfg.train_batch_size)
    assert cfg.diversity == "diversegrpo" and cfg.regulariser == "sa_reg"
    g, pool, r, alpha, lr = _quoted(
        doc,
        r"`drift-sd35-pickscore` \|.*?\| G (\d+) from a pool of (\d+), prompt noise, "
        r"LoRA (\d+)/(\d+), lr ([\de.-]+)",
    )
    cfg = load_config("drift-sd35-pickscore")
    assert (int(g), int(pool)) == (cfg.group_size, cfg.derived().pool_size)
    assert (int(r), int(alpha), float(lr)) == (cfg.lora_rank, cfg.lora_alpha, cfg.learning_rate)
    assert cfg.prompt_noise and cfg.diversity == "drift"
    (flux_steps, flux_eval, guidance, noise) = _quoted(
        doc,
        r"`diversegrpo-flux-pickscore` \| Flux.1-dev, (\d+)/(\d+) steps, guidance ([\d.]+), "
        r"noise ([\d.]+)",
    )
    cfg = load_config("diversegrpo-flux-pickscore")
    assert (int(flux_steps), int(flux_eval)) == (cfg.num_steps, cfg.eval_num_steps)
    assert (float(guidance), float(noise)) == (cfg.guidance, cfg.noise_level)
