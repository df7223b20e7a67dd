"""GenEval training: Flow-GRPO's metadata JSONL as a prompt source whose lines travel
with each group to the reward request (service and in-process), and the GenEval preset."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from divreward.trainer.config import MetaPrompt, load_config, prompt_metadata, read_prompts

LINES = [
    {"tag": "counting", "include": [{"class": "dog", "count": 3}],
     "exclude": [{"class": "dog", "count": 4}], "prompt": "a photo of three dogs"},
    {"tag": "single_object", "include": [{"class": "car", "count": 1}],
     "prompt": "a photo of a car"},
]  # fmt: skip


def _jsonl(tmp_path: Path, lines: list[Any]) -> Path:
    path = tmp_path / "train_metadata.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    return path


def test_the_geneval_preset_is_flow_grpos() -> None:
    cfg = load_config("flowgrpo-sd35-geneval")
    assert cfg.quality == {"geneval": 1.0} and cfg.diversity == "none"
    assert (cfg.regulariser, cfg.reg_weight, cfg.group_size) == ("kl", 0.04, 24)
    assert (cfg.num_steps, cfg.eval_num_steps, cfg.guidance) == (10, 40, 4.5)
    assert cfg.prompts_path() == Path("dataset/geneval/train_metadata.jsonl")
    assert cfg.eval_prompts_path() == Path("dataset/geneval/test_metadata.jsonl")


def test_jsonl_prompts_carry_their_line(tmp_path: Path) -> None:
    prompts = read_prompts(_jsonl(tmp_path, LINES))
    assert prompts == ["a photo of three dogs", "a photo of a car"]
    assert all(isinstance(p, MetaPrompt) for p in prompts)
    assert [prompt_metadata(p) for p in prompts] == LINES
    assert prompt_metadata("a plain prompt") is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(LINES[0]) + "\n{nope\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        read_prompts(bad)
    bad.write_text(json.dumps({"tag": "counting"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .* with a 'prompt' str"):
        read_prompts(bad)


class _RecordingClient:
    """Records the submissions the trainer makes, as the real client builds them."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def submit(self, group: Any, **params: Any) -> concurrent.futures.Future[Any]:
        from divreward.client import RewardClientError
        from divreward.client._requests import ImageOptions, group_submission

        self.sent.append(group_submission(group, namespace=None, opts=ImageOptions(), **params))
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        fut.set_exception(RewardClientError("recorded"))
        return fut

    def close(self) -> None:
        pass


def test_metadata_reaches_the_service_request(tmp_path: Path) -> None:
    from divreward.trainer.rewards import RewardsUnavailableError, ServiceRewards

    overrides = [f"prompts_file={_jsonl(tmp_path, LINES)}", "reward_retries=1"]
    cfg = load_config("flowgrpo-sd35-geneval", overrides)
    prompt = read_prompts(cfg.prompts_path())[0]
    client = _RecordingClient()
    source = ServiceRewards(cfg, client=client)
    try:
        fut = source.submit(prompt, torch.rand(24, 3, 8, 8), "s1/r0/p0")
        with pytest.raises(RewardsUnavailableError):
            fut.result(timeout=30)
    finally:
        source.close()
    (sub,) = client.sent
    assert sub.prompt == "a photo of three dogs" and sub.metadata == LINES[0]
    assert sub.quality == {"geneval": 1.0}


def test_metadata_reaches_the_in_process_scorer(tmp_path: Path, tiny_zoo: Any) -> None:
    from divreward.trainer.rewards import InProcessRewards

    tiny_zoo.build("geneval")
    cfg = load_config(
        "tiny-cpu",
        ["quality={geneval: 1.0}", "diversity=none", f"tiny_models_dir={tiny_zoo.root}",
         "eval_metrics=false"],
    )  # fmt: skip
    source = InProcessRewards(cfg)
    prompt = read_prompts(_jsonl(tmp_path, LINES))[1]
    images = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    try:
        got = source.submit(prompt, images, "g", select=False).result(timeout=120)
    finally:
        source.close()
    arrays = list((images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
    want = tiny_zoo.load("geneval").score_with_metadata(arrays, [str(prompt)] * 4, [LINES[1]] * 4)
    np.testing.assert_array_equal(got.quality["geneval"], want)
