"""The trainer's config: presets hold the papers' values, --set overrides, derived values,
clear errors, and the CLI's config paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from divreward.cli import main
from divreward.trainer.config import TrainConfig, list_presets, load_config, read_prompts

PRESETS = {
    "flowgrpo-sd35-pickscore",
    "flowgrpo-sd35-geneval",
    "diversegrpo-sd35-pickscore",
    "diversegrpo-sd35-hpsv3",
    "diversegrpo-flux-pickscore",
    "drift-sd35-pickscore",
    "flowgrpo-sd35-ocr",
    "flowgrpo-sd35-ocr-pickscore-gdpo",
    "tiny-cpu",
}


def test_every_named_preset_exists_and_validates() -> None:
    assert set(list_presets()) == PRESETS
    for name in PRESETS:
        assert isinstance(load_config(name), TrainConfig)


def test_presets_carry_the_papers_values() -> None:
    fg = load_config("flowgrpo-sd35-pickscore")
    assert (fg.regulariser, fg.reg_weight, fg.kl_form) == ("kl", 0.01, "eq6")
    assert (fg.num_steps, fg.eval_num_steps, fg.guidance, fg.noise_level) == (10, 40, 4.5, 0.7)
    assert (fg.group_size, fg.learning_rate, fg.clip_range) == (24, 3e-4, 1e-4)
    assert fg.derived().num_train_timesteps == 9  # int(10 * 0.99)
    dg = load_config("diversegrpo-sd35-pickscore")
    assert (dg.regulariser, dg.sa_reg_k, dg.diversity) == ("sa_reg", 4, "diversegrpo")
    assert dg.diversity_params == {"beta": 0.7}
    assert (dg.lora_rank, dg.lora_alpha, dg.gradient_accumulation_steps) == (32, 64, 12)
    assert dg.derived().backward_per_optimizer_step == 12 * 9
    assert load_config("diversegrpo-sd35-hpsv3").quality == {"hpsv3": 1.0}
    fx = load_config("diversegrpo-flux-pickscore")
    assert (fx.family, fx.num_steps, fx.eval_num_steps, fx.guidance) == ("flux", 6, 28, 3.5)
    dr = load_config("drift-sd35-pickscore")
    assert (dr.subset, dr.pool_factor, dr.prompt_noise, dr.group_size) == (
        "concentrated",
        2,
        True,
        8,
    )
    assert (dr.lora_rank, dr.lora_alpha, dr.learning_rate, dr.guidance) == (8, 16, 1e-4, 5.0)
    assert dr.derived().pool_size == 16
    assert dr.derived().noise_prompt.s == 0.05
    assert dr.diversity_request() == {"method": "drift", "lam": 0.5, "num_steps": 10}


def test_set_overrides_parse_yaml_values_and_reach_into_dicts() -> None:
    cfg = load_config(
        "tiny-cpu",
        ["group_size=8", "diversity_params.beta=1.5", "quality.hpsv3=2", "lora_targets=[a, b]"],
    )
    assert cfg.group_size == 8
    assert cfg.diversity_params == {"beta": 1.5}
    assert cfg.quality == {"pickscore": 1.0, "clipscore": 0.5, "hpsv3": 2.0}
    assert cfg.lora_targets == ["a", "b"]
    # a dict field the preset leaves at its default
    assert load_config("tiny-cpu", ["prompt_noise_params.s=0.1"]).prompt_noise_params == {"s": 0.1}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["nope=1"], "unknown field 'nope'"),
        (["group_size"], "expected key=value"),
        (["group_size=0"], "group_size"),
        (["regulariser=kl", "reg_weight=0"], "reg_weight"),
        (["subset=concentrated", "pool_factor=1"], "pool_factor"),
        (["reward_url=localhost:8000"], "reward_url"),
        (["prompt_noise_params.tau1=2"], "tau1"),
        (["timestep_fraction=0.1"], "trains no timestep"),
    ],
)
def test_bad_config_names_the_field(overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config("tiny-cpu", overrides)


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*tiny-cpu"):
        load_config("nope")


def test_shipped_prompts_and_prompt_file_rules(tmp_path: Path) -> None:
    cfg = load_config("tiny-cpu")
    train, held_out = read_prompts(cfg.prompts_path()), read_prompts(cfg.eval_prompts_path())
    assert len(train) >= 32 and len(held_out) >= 8
    assert not set(train) & set(held_out)  # evaluation prompts are held out
    f = tmp_path / "p.txt"
    f.write_text("# comment\n\na cat\n  a dog  \n")
    assert read_prompts(f) == ["a cat", "a dog"]
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompts(f)
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_flow_grpo_ocr_presets_and_prompt_files(tmp_path: Path) -> None:
    ocr = load_config("flowgrpo-sd35-ocr")
    assert (ocr.quality, ocr.aggregation, ocr.diversity) == ({"ocr": 1.0}, "sum", "none")
    assert (ocr.regulariser, ocr.reg_weight, ocr.group_size) == ("kl", 0.04, 24)
    assert (ocr.prompts_file, ocr.eval_prompts_file, ocr.prompts_format) == (
        "dataset/ocr/train.txt",
        "dataset/ocr/test.txt",
        "flow_grpo_txt",
    )
    both = load_config("flowgrpo-sd35-ocr-pickscore-gdpo")
    assert (both.quality, both.aggregation) == ({"ocr": 1.0, "pickscore": 1.0}, "gdpo")
    with pytest.raises(ValueError, match="aggregation"):
        load_config("flowgrpo-sd35-ocr", ["aggregation=mean"])
    # Flow-GRPO's TextPromptDataset: every line stripped is a prompt, '#' included
    f = tmp_path / "train.txt"
    f.write_text('A sign that says "OPEN" \n# "No. 1" on a jersey\n  "Hi"\n')
    assert read_prompts(f, "flow_grpo_txt") == [
        'A sign that says "OPEN"',
        '# "No. 1" on a jersey',
        '"Hi"',
    ]
    assert read_prompts(f) == ['A sign that says "OPEN"', '"Hi"']  # 'lines': '#' is a comment
    f.write_text('"a"\n\n"b"\n')
    with pytest.raises(ValueError, match="line 2 is blank"):
        read_prompts(f, "flow_grpo_txt")


def test_cli_show_config_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "tiny-cpu", "--set", "group_size=6", "--show-config"]) == 0
    assert '"group_size": 6' in capsys.readouterr().out
    assert main(["train", "--preset", "tiny-cpu", "--set", "nope=1"]) == 2
    assert "unknown field 'nope'" in capsys.readouterr().err
    assert main(["train", "--list-presets"]) == 0
    assert "drift-sd35-pickscore" in capsys.readouterr().out


def test_trackers_and_diversity_fields_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    from accelerate.tracking import TensorBoardTracker

    from divreward.trainer.metrics import JSONLTracker, trackers

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # as if mlflow were missing and wandb installed
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None if name == "mlflow" else object() if name == "wandb" else real_find_spec(name, *a)
        ),
    )
    with pytest.raises(
        ValueError, match=r"log_with: 'mlflow' needs its package: pip install mlflow"
    ):
        load_config("tiny-cpu", ["log_with=[mlflow]"])
    with pytest.raises(ValueError, match="log_with"):
        load_config("tiny-cpu", ["log_with=[comet]"])  # not one accelerate tracker we offer
    cfg = load_config("tiny-cpu", ["log_with=[wandb]", f"output_dir={tmp_path}"])
    jsonl, tb, wandb = trackers(cfg.output_dir, cfg.tensorboard, cfg.log_with)
    assert isinstance(jsonl, JSONLTracker) and jsonl.path == tmp_path / "metrics.jsonl"
    assert (
        isinstance(tb, TensorBoardTracker)
        and Path(tb.logging_dir_param) / tb.run_name == tmp_path / "tb"
    )
    assert wandb == "wandb"
    assert [type(t) for t in trackers(tmp_path, False, [])] == [JSONLTracker]
    # the method's parameters are validated against its params model, naming the field
    with pytest.raises(ValueError, match=r"diversity_params of 'drift': lam: Input should be"):
        load_config("tiny-cpu", ["diversity=drift", "diversity_params={lam: -1}"])
    with pytest.raises(ValueError, match=r"diversity_params of 'none': beta: Extra inputs"):
        load_config("tiny-cpu", ["diversity=none", "diversity_params={beta: 0.5}"])
    # switching the preset's method drops the preset's params (tiny-cpu's beta is DiverseGRPO's)
    assert load_config("tiny-cpu").diversity_params
    switched = load_config("tiny-cpu", ["diversity=none"])
    assert switched.diversity == "none" and switched.diversity_params == {}
    kept = load_config("tiny-cpu", ["diversity=diversegrpo"])  # not a switch: params stay
    assert kept.diversity_params == load_config("tiny-cpu").diversity_params
