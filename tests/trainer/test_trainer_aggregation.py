"""The trainer passes its ``aggregation`` through: in-process rewards combine the tiny
scorers as divreward.core says, and the service backend sends it with every group."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo

from divreward.core import aggregate_quality, group_advantages
from divreward.trainer.config import load_config
from divreward.trainer.rewards import InProcessRewards, ServiceRewards

WEIGHTS = {"pickscore": 1.0, "clipscore": 0.5}


def _cfg(tiny_zoo: TinyZoo, aggregation: str, backend: str = "inprocess") -> Any:
    for name in WEIGHTS:
        tiny_zoo.build(name)
    return load_config(
        "tiny-cpu",
        [
            f"reward_backend={backend}",
            f"aggregation={aggregation}",
            "diversity=none",
            "eval_metrics=false",
            f"tiny_models_dir={tiny_zoo.root}",
        ],
    )


@pytest.mark.parametrize("aggregation", ["sum", "gdpo"])
def test_inprocess_rewards_aggregate_as_configured(tiny_zoo: TinyZoo, aggregation: str) -> None:
    cfg = _cfg(tiny_zoo, aggregation)
    assert cfg.quality == WEIGHTS
    rewards = InProcessRewards(cfg)
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = rewards._rewards("a red bicycle", images, "g0")
    scores = {n: out.quality[n] for n in WEIGHTS}
    expected = aggregate_quality(WEIGHTS, scores, 5, aggregation)
    np.testing.assert_allclose(out.quality["total"], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.advantages, group_advantages(expected, cfg.advantage_eps))
    rewards.close()


def test_service_rewards_send_the_aggregation(tiny_zoo: TinyZoo) -> None:
    sent: dict[str, Any] = {}

    class Client:
        def submit(self, group: Any, **kw: Any) -> Any:
            sent.update(kw)
            raise RuntimeError("stop here")

        def close(self) -> None:
            pass

    rewards = ServiceRewards(_cfg(tiny_zoo, "gdpo", "service"), client=Client())
    with pytest.raises(RuntimeError, match="stop here"):
        rewards._call("p", torch.zeros(2, 3, 8, 8), "g0", {"method": "none"})
    assert sent["aggregation"] == "gdpo" and sent["quality"] == WEIGHTS
    rewards.close()
