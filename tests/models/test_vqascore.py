"""VQAScore and UnifiedReward on a tiny random Qwen2.5-VL through the real loader: the
score is the softmax (full vocabulary) of a hand-run forward at the "Yes" token, with the
checkpoint's repetition penalty as generate() applies it; batched equals one by one;
UnifiedReward parses Flow-GRPO's "Final Score" from its greedy answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images
from transformers import RepetitionPenaltyLogitsProcessor

from divreward.models import vqascore
from divreward.models.base import LoadOptions
from divreward.models.registry import load_model
from divreward.models.weights import optional

PROMPTS = ["a red bicycle leaning on a wall", "two cats asleep on a sofa", "a bowl of ramen"]


@pytest.fixture(scope="module")
def judge(tiny_zoo: TinyZoo) -> vqascore.QwenJudge:
    m = tiny_zoo.load("vqascore")
    assert isinstance(m, vqascore.QwenJudge)
    return m


def _hand_inputs(judge: vqascore.QwenJudge, image: np.ndarray, prompt: str) -> dict:
    messages = [{"role": "user", "content": [
        {"type": "image"},
        {"type": "text", "text": f'Does this image show "{prompt}"? Please answer Yes or No.'},
    ]}]  # fmt: skip
    text = judge.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    return judge.processor(
        text=[text], images=[judge.resize(image, 0)], do_resize=False, return_tensors="pt"
    )


def test_score_is_softmax_of_a_hand_run_forward_at_yes(judge: vqascore.QwenJudge) -> None:
    images = make_images(3, seed=4)
    got = judge.score(images, PROMPTS)
    yes = judge.tokenizer.encode("Yes")
    assert len(yes) == 1 and yes[0] == judge.answer_id
    assert judge.penalty == 1.05  # from the tiny generation_config.json, as Qwen2.5-VL's
    for image, prompt, score in zip(images, PROMPTS, got, strict=True):
        inputs = _hand_inputs(judge, image, prompt)
        with torch.no_grad():
            logits = judge.model(**inputs).logits[:, -1, :].float()
        # what generate(do_sample=False, output_scores=True) reports for the first step
        processed = RepetitionPenaltyLogitsProcessor(1.05)(inputs["input_ids"], logits)
        expected = torch.softmax(processed, dim=-1)[0, judge.answer_id].item()
        assert score == pytest.approx(expected, rel=1e-5)
        plain = torch.softmax(logits, dim=-1)[0, judge.answer_id].item()
        assert plain != pytest.approx(
            expected, rel=1e-9
        )  # the penalty does act ("Yes" is in the input)


def test_score_equals_generates_first_step_scores(judge: vqascore.QwenJudge) -> None:
    image, prompt = make_images(1, seed=9)[0], PROMPTS[1]
    inputs = _hand_inputs(judge, image, prompt)
    with torch.no_grad():
        out = judge.model.generate(
            **inputs, max_new_tokens=1, do_sample=False, output_scores=True,
            return_dict_in_generate=True,
        )  # fmt: skip
    expected = torch.softmax(out.scores[0].float(), dim=-1)[0, judge.answer_id].item()
    assert judge.score([image], [prompt])[0] == pytest.approx(expected, rel=1e-5)


def test_batched_left_padding_equals_one_by_one(judge: vqascore.QwenJudge) -> None:
    images = make_images(4, seed=6)
    prompts = ["a dog", "two cats asleep on a sofa under a red blanket", "ramen", "a fox"]
    batched = judge.score(images, prompts)
    single = [judge.score([i], [p])[0] for i, p in zip(images, prompts, strict=True)]
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-9)
    assert np.ptp(batched) > 0


def test_question_template_and_penalty_options(tiny_zoo: TinyZoo, judge) -> None:
    image = make_images(1, seed=2)
    opts = {"question": 'Is this "{prompt}"?', "repetition_penalty": 1.0}
    other = load_model("vqascore", tiny_zoo.options("vqascore", options=opts))
    assert isinstance(other, vqascore.QwenJudge)
    assert other.render("a cat").count('Is this "a cat"?') == 1
    assert other.score(image, ["a cat"])[0] != judge.score(image, ["a cat"])[0]
    with pytest.raises(ValueError, match="must contain '\\{prompt\\}'"):
        load_model("vqascore", tiny_zoo.options("vqascore", options={"question": "Is it?"}))
    with pytest.raises(ValueError, match="'mode' must be one of"):
        load_model("vqascore", tiny_zoo.options("vqascore", options={"mode": "judge"}))


def test_penalise_is_transformers_repetition_penalty() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    ids = torch.tensor([[0, 1, 1], [2, 3, 2]])
    np.testing.assert_allclose(
        vqascore.penalise(logits, ids, 1.3).numpy(),
        RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone()).numpy(),
    )


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("The image matches well.\nFinal Score: 4", 0.8),
        ("Final Score:5", 1.0),
        ("Final Score: 3.5 and later Final Score: 1", 0.7),
        ("Final Score: 5.5", 1.1),  # the reference's regex takes it
        ("Final Score: 10", 0.2),  # reads the 1 of 10, as the reference
        ("Final Score: 0", 0.0),
        ("score 4/5", 0.0),
    ],
)
def test_unifiedreward_parsing_is_flow_grpos(text: str, score: float) -> None:
    assert vqascore.unified_score(text) == pytest.approx(score)


def test_unifiedreward_prompt_and_generation(tiny_zoo: TinyZoo) -> None:
    m = tiny_zoo.load("unifiedreward")
    assert isinstance(m, vqascore.QwenJudge) and m.mode == "unifiedreward"
    user = m.render("a cat on a mat")
    assert "Text Caption: [a cat on a mat]<|im_end|>" in user
    assert user.count("<|image_pad|>") == 1 and "<image>" not in user
    assert vqascore.UNIFIED_PROMPT.startswith("You are given a text caption")
    image = make_images(1, seed=1)[0]
    # the image is squashed to 512x512 first (Flow-GRPO), then fetch_image's resize
    assert m.resize(image, 0).shape == (56, 56, 3)
    inputs = m.encode([m.resize(image, 0)], ["a cat on a mat"])
    with torch.no_grad():
        out = m.model.generate(**inputs, max_new_tokens=m.max_new_tokens, do_sample=False)
    text = m.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert m.generate(inputs) == [text]
    assert m.score([image], ["a cat on a mat"])[0] == vqascore.unified_score(text)


def test_hub_files_follow_the_mode() -> None:
    patterns = [*vqascore.REQUIRED, *(optional(f) for f in vqascore.OPTIONAL)]
    assert vqascore.hub_files(LoadOptions()) == [(vqascore.VQA_REPO, patterns)]
    assert vqascore.hub_files(LoadOptions(options={"mode": "unifiedreward"})) == [
        (vqascore.UNIFIED_REPO, patterns)
    ]
