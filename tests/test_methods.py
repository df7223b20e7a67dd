"""The diversity-method table (divreward/methods.py): everything that names the methods
agrees with it, and a new method is one table entry away from being served."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from divreward import schema
from divreward.methods import METHODS, embedding_methods, method_names
from divreward.proto import divreward_pb2 as pb
from divreward.schema_stream import GroupSubmission


def _members(annotation: object) -> set[str]:
    """The method names of a (possibly Optional, Annotated) union of params models."""
    names: set[str] = set()
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and "method" in getattr(arg, "model_fields", {}):
            names.add(arg.model_fields["method"].default)
        else:
            names |= _members(arg)
    return names


def test_schema_unions_and_results_come_from_the_table() -> None:
    everything, embedding = set(method_names()), {m.name for m in embedding_methods()}
    assert _members(schema.RewardDiversityParams) == everything
    assert _members(schema.DiversityParams) == embedding == {"diversegrpo", "drift", "gardo"}
    for model, field, names in [
        (schema.RewardsRequest, "diversity", everything),
        (GroupSubmission, "diversity", everything),
        (schema.RewardParams, "diversity", everything),
        (schema.DiversityRequest, "diversity", embedding),
        (schema.DiversityResolvedParams, "diversity", embedding),
    ]:
        assert _members(model.model_fields[field].annotation) == names, model
        # the .proto (static) carries one oneof member per method of the same union
        oneof = pb.DESCRIPTOR.message_types_by_name[model.__name__].oneofs_by_name[field]
        assert {f.name for f in oneof.fields} == names, model
    result = schema.DiversityGroupResult.model_fields
    assert typing.get_args(result["method"].annotation) == method_names()
    for m in METHODS.values():
        assert set(m.result.model_fields) <= set(result), m.name


def test_config_literals_compat_modes_and_error_tags_come_from_the_table() -> None:
    from divreward.services.common.errors import _UNION_TAGS
    from divreward.services.config import DiversityAppArgs, RewardAppArgs
    from divreward.services.reward_server.compat import MODES

    default = RewardAppArgs.model_fields["default_diversity"].annotation
    assert typing.get_args(default) == method_names()
    default = DiversityAppArgs.model_fields["default_method"].annotation
    assert set(typing.get_args(default)) == {m.name for m in embedding_methods()}
    assert set(METHODS) == _UNION_TAGS
    # GARDO shapes advantages only: Flow-Factory, which makes its own from the rewards,
    # would lose it, so it has no groupwise mode
    assert MODES == ("pointwise", "groupwise", "groupwise-diversegrpo", "groupwise-drift")
    assert [m.name for m in METHODS.values() if not m.in_rewards] == ["gardo"]


_THIRD_METHOD = r"""
import base64, json, numpy as np
from typing import Literal
from pydantic import BaseModel, ConfigDict, Field

import divreward.methods as M
from divreward.core import group_advantages


# -- the new method: one module's worth of code and one table line -------------------
class ShiftParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["shift"] = "shift"
    c: float = Field(default=1.0, description="Added to every reward.")


class ShiftFields(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    offset: float


def shift(quality, embeddings, params, adv):
    rewards = quality + params.c
    return M.MethodOutput(rewards, group_advantages(rewards, adv.eps), ShiftFields(offset=params.c))


M.METHODS["shift"] = M.DiversityMethod("shift", ShiftParams, ShiftFields, shift, False)

# -- served: the reward app's HTTP front door and serving layer, over a stub scorer ----
from fastapi.testclient import TestClient

from divreward.images import encode_image
from divreward.schema import ModelCard
from divreward.services.common.api import Api
from divreward.services.common.app import make_app
from divreward.services.common.decode import decode_group
from divreward.services.common.deployments import DiversityHandles
from divreward.services.common.routes import diversity_router, ops_router
from divreward.services.config import RewardAppArgs
from divreward.services.model_deployments import ModelOutput
from divreward.services.reward_server import serving as rs
from divreward.services.reward_server.router import reward_router

# the object store is Ray's: in-process, the decoded arrays themselves stand for it
rs.decode_and_put = lambda images, g, max_pixels, field="groups", offset=0: (
    decode_group(images, g, max_pixels, field, offset), len(images))
CARD = ModelCard(name="pickscore", kind="scorer", source="stub")


class Call:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def go():
            return self.fn(*args)
        return go()


class Scorer:  # score = mean pixel value / 255
    score = Call(lambda arrays, prompts, metadata=None: ModelOutput(
        np.array([a.mean() / 255.0 for a in arrays]), CARD))


args = RewardAppArgs(scorers={"pickscore": {}}, default_diversity="shift")
serving = rs.RewardServing({"pickscore": Scorer()}, DiversityHandles("d", None, None), args)
app = make_app("t", "d", Api("reward", args.limits, args.auth, args.ingress),
               [reward_router, diversity_router, ops_router])
app.state.serving = serving
client = TestClient(app, client=("127.0.0.1", 1))
images = [np.full((8, 8, 3), v, np.uint8) for v in (51, 102, 204)]
b64 = [base64.b64encode(encode_image(i)).decode() for i in images]
out = {}
for diversity in ({"method": "shift", "c": 2.5}, None):
    body = {"groups": [{"prompt": "p", "images": b64}]}
    if diversity:
        body["diversity"] = diversity
    r = client.post("/v1/rewards", json=body)
    assert r.status_code == 200, r.text
    out[str(diversity)] = r.json()
r = client.post("/v1/rewards", json={"groups": [{"prompt": "p", "images": b64}],
                                    "diversity": {"method": "nope"}})
out["unknown"] = r.json()
r = client.post("/v1/diversity", json={"groups": [{"embeddings": [[1.0]]}],
                                      "method": "shift"})
out["diversity_route"] = r.json()

# -- trained: one in-process step of the trainer with it (tiny SD3, tiny PickScore) -----
import sys
from divreward.trainer.config import load_config
from divreward.trainer.loop import train

root, run_dir = sys.argv[1], sys.argv[2]
cfg = load_config("tiny-cpu", [
    f"tiny_models_dir={root}", f"output_dir={run_dir}", "progress=false",
    "reward_backend=inprocess", "max_steps=1", "eval_every=0", "eval_metrics=false",
    "quality={pickscore: 1.0}", "diversity=shift", "diversity_params={c: 2.5}", "ema=false",
    "prompts_per_step=1",
])
out["trained"] = train(cfg, print_fn=lambda s: None).history[0]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_third_method_is_one_table_entry_and_is_served_and_trained(
    tiny_zoo: Any, tmp_path: Path
) -> None:
    """A new method (rewards = Q + c), added to the table before the schema is imported,
    is accepted and answered by /v1/rewards with its own result field, is the valid
    default of the config, is listed by the unknown-method error, and is refused by
    /v1/diversity (it needs no embeddings); and the trainer's in-process rewards train a
    step with it, through the same functions. In a fresh interpreter: the schema's models
    are built from the table at import."""
    import json

    root = tiny_zoo.build("pickscore")
    out = subprocess.run(
        [sys.executable, "-c", _THIRD_METHOD, str(root), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    q = [51 / 255, 102 / 255, 204 / 255]
    for key, c in [("{'method': 'shift', 'c': 2.5}", 2.5), ("None", 1.0)]:
        group = res[key]["groups"][0]
        assert group["diversity"]["method"] == "shift"
        assert group["diversity"]["offset"] == c
        assert group["diversity"]["bonus"] is None
        assert group["quality"]["total"] == [float(v) for v in q]
        assert group["rewards"] == [v + c for v in q]
        mean = sum(v + c for v in q) / 3
        std = (sum((v + c - mean) ** 2 for v in q) / 3) ** 0.5
        for a, v in zip(group["advantages"], q, strict=True):
            assert abs(a - (v + c - mean) / (std + 1e-6)) < 1e-9
        assert res[key]["params"]["diversity"] == {"method": "shift", "c": c}
    err = res["unknown"]["error"]
    assert err["status"] == 400 and err["valid"] == [
        "diversegrpo",
        "drift",
        "gardo",
        "none",
        "shift",
    ]
    assert res["diversity_route"]["error"]["status"] == 400
    assert "shift" not in res["diversity_route"]["error"]["valid"]
    # trained in-process: rewards = Q + 2.5 over the step's group, and an update was made
    trained = res["trained"]
    assert trained["reward/mean"] == pytest.approx(trained["reward/pickscore"] + 2.5, abs=1e-9)
    assert trained["reward/total"] == pytest.approx(trained["reward/pickscore"], abs=1e-12)
    assert trained["train/optimizer_steps"] >= 1 and "diversity/bonus" not in trained


def test_the_trainer_imports_nothing_from_the_services() -> None:
    """The trainer reaches the rewards through divreward.rewards and divreward.client only
    (every import in trainer/, lazy ones included)."""
    import ast

    trainer = Path(__file__).resolve().parents[1] / "trainer"
    bad = []
    for path in sorted(trainer.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [f"{path.name}: {n}" for n in names if n.startswith("divreward.services")]
    assert not bad, bad
