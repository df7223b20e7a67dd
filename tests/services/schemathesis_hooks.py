"""Schemathesis hooks of the API contract test (loaded through SCHEMATHESIS_HOOKS).

The OpenAPI document states every constraint a JSON schema can state. A few that the
server enforces cannot be stated there: an image string must hold a decodable PNG,
JPEG or WebP file; scorer names are the server's configuration (listed by /v1/models);
lists that go together must have the same length (prompts, metadata and images, a
group's quality and images); the rows of an embedding matrix must have one length. For
the *positive* cases only (schema-valid requests, which must be accepted), this hook makes generated
bodies satisfy those too, so that they reach the models; negative cases are left as
generated and must be refused with a 4xx.

Environment: DIVREWARD_FUZZ_SCORERS, the comma-separated scorer names of the live app.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
from typing import Any

import msgpack
import numpy as np
import schemathesis
from PIL import Image

_SCORERS = [s for s in os.environ.get("DIVREWARD_FUZZ_SCORERS", "pickscore").split(",") if s]
_MAX_IMAGES = 3  # per group: keep the forward passes cheap


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


_PNGS = [_png(i) for i in range(_MAX_IMAGES)]
_B64 = [base64.b64encode(p).decode("ascii") for p in _PNGS]


def _images(value: Any) -> list[str]:
    n = min(max(len(value), 1), _MAX_IMAGES) if isinstance(value, list) else 1
    return _B64[:n]


def _method_only(params: Any) -> Any:
    """A method's parameters may be inconsistent with a tiny group (k > G, ...): keep the
    method, the server's defaults do the rest."""
    return (
        {"method": params["method"]} if isinstance(params, dict) and "method" in params else params
    )


def _weights(quality: Any) -> Any:
    if not isinstance(quality, dict):
        return quality
    return {name: 1.0 for name in _SCORERS[: max(1, min(len(quality), len(_SCORERS)))]}


def _matrix(rows: Any, n: int | None = None, dim: int = 4) -> list[list[float]]:
    count = n if n is not None else min(max(len(rows) if isinstance(rows, list) else 1, 1), 6)
    rng = np.random.default_rng(count)
    return [[float(v) for v in rng.normal(size=dim)] for _ in range(count)]


def _group(group: dict[str, Any]) -> dict[str, Any]:
    """A /v1/diversity or /v1/metrics group: images or embeddings, quality of its size."""
    out = dict(group)
    if isinstance(group.get("images"), list):
        out["images"] = _images(group["images"])
        out["embeddings"] = None
        size = len(out["images"])
    else:
        out["embeddings"] = _matrix(group.get("embeddings"))
        out.pop("images", None)
        size = len(out["embeddings"])
    if isinstance(group.get("quality"), list):
        out["quality"] = [0.5] * size
    return out


def _fix(path: str, body: dict[str, Any]) -> dict[str, Any]:
    b = dict(body)
    if path == "/v1/score":
        b["images"] = _images(b.get("images"))
        b["prompts"] = ["a prompt"] * len(b["images"])
        if isinstance(b.get("metadata"), list):  # one (free-form) object per image
            b["metadata"] = [{"k": 1}] * len(b["images"])
        if isinstance(b.get("scorers"), list):
            b["scorers"] = _SCORERS[:1]
    elif path == "/v1/embed":
        b["images"] = _images(b.get("images"))
    elif path == "/v1/rewards":
        b["groups"] = [
            {**g, "images": _images(g.get("images"))} for g in b.get("groups", [])[:2]
        ] or [{"prompt": "p", "images": _B64[:2]}]
        b["quality"] = _weights(b.get("quality"))
        b["diversity"] = _method_only(b.get("diversity"))
    elif path == "/v1/groups":
        b["images"] = _images(b.get("images"))
        if b.get("group_size") is not None:
            b["group_size"] = len(b["images"])  # complete in one part: nothing waits
        b["quality"] = _weights(b.get("quality"))
        b["diversity"] = _method_only(b.get("diversity"))
    elif path == "/v1/diversity":
        b["groups"] = [_group(g) for g in b.get("groups", [])[:2]]
        b["diversity"] = _method_only(b.get("diversity"))
    elif path == "/v1/metrics":
        # One kind for every group (image embeddings and given ones differ in length).
        # Generalized recall builds a k-NN manifold (k = the server's recall_k, 10): with
        # a reference, each side needs more than k samples.
        with_ref = isinstance(b.get("reference"), list)
        kind = "images" if any(isinstance(g.get("images"), list) for g in b["groups"]) else None
        for key in ("groups", "reference"):
            if isinstance(b.get(key), list):
                b[key] = [
                    {"embeddings": _matrix(None, n=6)}
                    if with_ref
                    else _group({"images": [""] * 2} if kind else {"embeddings": [[0.0]] * 3})
                    for _ in range(2 if with_ref else min(len(b[key]), 3))
                ]
                for g in b[key]:
                    g.pop("quality", None)
        b["recall_k"] = None
    elif path.endswith("/compute"):
        n = min(max(len(b.get("prompt") or []), 1), _MAX_IMAGES)
        b["prompt"] = ["a prompt"] * n
        b["image"] = _B64[:n]
    return b


@schemathesis.deserializer("application/msgpack")
def _msgpack(ctx: Any, response: Any) -> Any:
    """The binary wire form of every reply (responses carry no image bytes)."""
    return msgpack.unpackb(response.content, raw=False)


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    meta = getattr(case, "meta", None)
    if meta is None or meta.generation.mode.is_negative:
        return case
    path = case.operation.path
    if path in ("/", "/compat/pickle"):
        n = 2
        case.body = pickle.dumps({"images": _PNGS[:n], "prompts": ["p"] * n})
        case.query = {}
    elif isinstance(case.body, dict):
        case.body = _fix(path, case.body)
    return case
