"""``divreward weights pull|check`` against a local stand-in of the hub's HTTP API
(tests/models/fake_hub.py, reached through HF_ENDPOINT) serving the tiny random weights,
then loaded through the real loaders offline; and the zoo's ``hub_files`` contract:
every registered model's patterns cover what its tiny twin's loader reads.

CI exports HF_HUB_OFFLINE=1: the pull tests switch it off (environment and
huggingface_hub's constants, which are read at import) for their own duration only."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fake_hub import FakeHub
from fixtures_models import TinyZoo, make_images

from divreward.cli import main
from divreward.models import registry
from divreward.models.base import LoadOptions
from divreward.models.hub import select_files
from divreward.models.registry import REGISTRY, load_model
from divreward.models.weights import ENV_WEIGHTS_DIR, TINY_MARKER, WeightsNotFoundError

PICK = "yuvalkirstain/PickScore_v1"
LAION = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


@dataclass
class Hub:
    fake: FakeHub
    cache: Path
    monkeypatch: pytest.MonkeyPatch

    def offline(self) -> None:
        """Back to HF_HUB_OFFLINE=1: what is loaded now must have been pulled."""
        from huggingface_hub import constants

        self.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    from huggingface_hub import constants

    fake = FakeHub()
    cache = tmp_path / "hf-cache"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", ENV_WEIGHTS_DIR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    try:
        yield Hub(fake, cache, monkeypatch)
    finally:
        fake.close()


def _serve_tiny(hub: Hub, tiny_zoo: TinyZoo, name: str, tmp_path: Path) -> None:
    """Serve copies of ``name``'s tiny repositories (without the tiny marker, which
    lives at the zoo's root), under their real ids."""
    tiny_zoo.build(name)
    for repo, _ in registry.hub_files(name):
        if repo not in hub.fake.repos:
            copy = tmp_path / "served" / repo
            shutil.copytree(tiny_zoo.root / repo, copy)
            hub.fake.add(repo, copy)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pull_into_the_cache_then_load_offline(
    hub: Hub, tiny_zoo: TinyZoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _serve_tiny(hub, tiny_zoo, "pickscore", tmp_path)
    # A .bin twin of the weights: the loader prefers safetensors, so it is not fetched.
    (hub.fake.repos[PICK] / "pytorch_model.bin").write_bytes(b"x" * 1000)
    assert main(["weights", "check", "pickscore"]) == 1
    assert "missing  config.json" in capsys.readouterr().out
    assert main(["weights", "pull", "pickscore"]) == 0
    assert not hub.fake.served(PICK, "pytorch_model.bin")
    assert len(hub.fake.served(PICK, "model.safetensors")) == 1
    hub.offline()
    assert main(["weights", "check", "pickscore"]) == 0
    model = load_model("pickscore")  # the real loader, from the cache, offline
    reference = tiny_zoo.load("pickscore")
    assert model.info.source == PICK and model.info.revision == "c" * 40
    assert model.info.weights_hash == reference.info.weights_hash
    images, prompts = make_images(3), ["a cat", "a dog", "a fox"]
    np.testing.assert_array_equal(model.score(images, prompts), reference.score(images, prompts))


def test_pull_into_a_weights_dir_that_the_resolver_then_finds(
    hub: Hub, tiny_zoo: TinyZoo, tmp_path: Path
) -> None:
    _serve_tiny(hub, tiny_zoo, "clipscore", tmp_path)
    weights = tmp_path / "weights"
    assert main(["weights", "pull", "clipscore", "--weights-dir", str(weights)]) == 0
    target = weights / "openai" / "clip-vit-base-patch32"
    assert _sha(target / "model.safetensors") == _sha(
        hub.fake.repos[target.relative_to(weights).as_posix()] / "model.safetensors"
    )
    hub.offline()
    assert main(["weights", "check", "clipscore", "--weights-dir", str(weights)]) == 0
    model = load_model("clipscore", LoadOptions(weights_dir=str(weights)))
    assert model.info.source == str(target)  # found in the weights dir, not the cache
    assert not list(hub.cache.glob("models--*/snapshots/*/*"))  # nothing in the cache


def test_an_interrupted_transfer_is_resumed_with_a_range_request(
    hub: Hub, tiny_zoo: TinyZoo, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    _serve_tiny(hub, tiny_zoo, "pickscore", tmp_path)
    hub.fake.interrupt.add(f"{PICK}/model.safetensors")
    # The hub writes in chunks of DOWNLOAD_CHUNK_SIZE (10 MB): smaller than the tiny
    # file, so that the half that came through is kept (real weights are GBs).
    hub.monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    assert main(["weights", "pull", "pickscore"]) == 0
    gets = hub.fake.served(PICK, "model.safetensors")
    assert len(gets) == 2 and "range" not in gets[0]
    start = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    size = (hub.fake.repos[PICK] / "model.safetensors").stat().st_size
    assert 0 < start <= size // 2  # it asked only for what it did not have
    hub.offline()
    assert main(["weights", "check", "pickscore"]) == 0
    snapshot = next(hub.cache.glob("models--yuvalkirstain--PickScore_v1/snapshots/*"))
    assert _sha(snapshot / "model.safetensors") == _sha(hub.fake.repos[PICK] / "model.safetensors")


def test_a_gated_repository_says_so_and_how_to_get_access(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gated").mkdir()
    (tmp_path / "gated" / "config.json").write_text("{}")
    hub.fake.add("someorg/gated-model", tmp_path / "gated", gated=True)
    rc = main(["weights", "pull", "clipscore", "--source", "someorg/gated-model"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "someorg/gated-model is a gated repository (HF_TOKEN is not set)" in err
    assert f"{hub.fake.endpoint}/someorg/gated-model" in err and "export HF_TOKEN" in err
    hub.monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert main(["weights", "pull", "clipscore", "--source", "someorg/gated-model"]) == 1
    assert "that token has no access yet" in capsys.readouterr().err
    assert any(h.get("authorization") == "Bearer hf_test" for _, _, h in hub.fake.requests)


def test_a_missing_repository_is_named(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "pull", "clipscore", "--source", "someorg/nothing-here"]) == 1
    err = capsys.readouterr().err
    assert f"someorg/nothing-here was not found on {hub.fake.endpoint}" in err


def test_a_repository_without_a_required_file_is_an_error(
    hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text("{}")
    hub.fake.add("someorg/half", tmp_path / "r")
    assert main(["weights", "pull", "clipscore", "--source", "someorg/half"]) == 1
    assert "someorg/half has no model.safetensors or pytorch_model.bin" in capsys.readouterr().err


# ---------------------------------------------------------------- the hub_files contract


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_hub_files_cover_what_the_tiny_twin_loader_reads(
    tiny_zoo: TinyZoo, tmp_path: Path, name: str
) -> None:
    """Copy only the files that ``hub_files`` selects from the tiny twin's repositories
    into a fresh weights directory: the real loader loads from there, and gives the
    same numbers as from the full tiny directory."""
    module = registry._module(registry.get_spec(name))
    assert callable(getattr(module, "hub_files", None)), f"{name}: no hub_files(opts)"
    pairs = registry.hub_files(name)
    if not pairs:
        if hasattr(module, "pull"):  # weights not on the hub: fetched and checked by the module
            assert callable(module.pull) and callable(module.local_files), name
        else:  # weights inside a pip package (ocr): it loads with nothing in the weights dir
            assert load_model(name, LoadOptions(weights_dir=str(tmp_path))).info.name == name
        return
    tiny_zoo.build(name)
    weights = tmp_path / "weights"
    for repo, patterns in pairs:
        src = tiny_zoo.root / repo
        files = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
        chosen, absent = select_files(files, patterns)
        assert not absent, f"{name}: the tiny {repo} lacks required {absent}"
        for f in chosen:
            (weights / repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, weights / repo / f)
    (weights / TINY_MARKER).write_text("{}")  # they are tiny weights (the profile says so)
    model = load_model(name, LoadOptions(weights_dir=str(weights)))
    reference = tiny_zoo.load(name)
    assert model.info.weights_hash == reference.info.weights_hash
    images = make_images(2)
    if reference.info.kind == "scorer":
        prompts = ["a cat", "a dog"]
        meta = [reference.probe_metadata] * 2 if reference.needs_metadata else None  # type: ignore[union-attr]
        np.testing.assert_array_equal(
            model.score_with_metadata(images, prompts, meta),  # type: ignore[union-attr]
            reference.score_with_metadata(images, prompts, meta),  # type: ignore[union-attr]
        )
    else:
        np.testing.assert_array_equal(model.embed(images), reference.embed(images))  # type: ignore[union-attr]


def test_missing_weights_name_every_place_and_the_exact_pull_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "weights"
    with pytest.raises(WeightsNotFoundError) as err:
        load_model("hpsv21", LoadOptions(weights_dir=str(empty), cache_dir=str(tmp_path / "c")))
    msg = str(err.value)
    assert str(empty / "xswu" / "HPSv2" / "HPS_v2.1_compressed.pt") in msg  # the weights dir
    assert f"the Hugging Face cache {tmp_path / 'c'}" in msg  # then the cache
    assert msg.endswith(f"`divreward weights pull hpsv21 --weights-dir {empty}`")
    assert "\n" not in msg


# ---------------------------------------------------------------- the trainer's policy

SD35 = "stabilityai/stable-diffusion-3.5-medium"


def _serve_tiny_sd3(hub: Hub, tmp_path: Path) -> Path:
    """A tiny SD3 pipeline served as SD3.5-Medium, with what the trainer must not fetch:
    a T5 component (listed in model_index.json), an fp16 variant and a root single-file
    checkpoint."""
    import json

    from divreward.trainer.models.sd3 import SD3Adapter

    served = tmp_path / "served-sd3"
    shutil.copytree(SD3Adapter.build_tiny(tmp_path / "tiny-sd3"), served)
    index = json.loads((served / "model_index.json").read_text())
    index["text_encoder_3"] = ["transformers", "T5EncoderModel"]
    index["tokenizer_3"] = ["transformers", "T5TokenizerFast"]
    (served / "model_index.json").write_text(json.dumps(index))
    for f in (
        "text_encoder_3/config.json",
        "text_encoder_3/model.safetensors",
        "tokenizer_3/spiece.model",
    ):
        (served / f).parent.mkdir(exist_ok=True)
        (served / f).write_bytes(b"{}")
    shutil.copy(
        served / "text_encoder/model.safetensors", served / "text_encoder/model.fp16.safetensors"
    )
    (served / "sd3.5_medium.safetensors").write_bytes(b"0" * 1000)
    hub.fake.add(SD35, served)
    return served


def test_pull_preset_fetches_only_what_the_policy_loads_then_trains_from_it(
    hub: Hub, tmp_path: Path
) -> None:
    import yaml

    from divreward.trainer.config import load_config
    from divreward.trainer.models.hub import MODEL_INDEX, policy_hub_files, resolve_policy
    from divreward.trainer.models.sd3 import SD3Adapter

    served = _serve_tiny_sd3(hub, tmp_path)
    train = tmp_path / "train.yaml"
    train.write_text(
        yaml.safe_dump({"model": SD35, "family": "sd3", "model_options": {"text_encoder_3": False}})
    )
    weights = tmp_path / "weights"
    assert (
        main(["weights", "pull", "--train-config", str(train), "--weights-dir", str(weights)]) == 0
    )
    got = sorted(
        p.relative_to(weights / SD35).as_posix()
        for p in (weights / SD35).rglob("*")
        if p.is_file() and ".cache" not in p.parts
    )
    expected = sorted(
        p.relative_to(served).as_posix()
        for p in served.rglob("*")
        if p.is_file()
        and not p.relative_to(served).as_posix().startswith(("text_encoder_3/", "tokenizer_3/"))
        and p.name
        not in (
            "model.fp16.safetensors",
            "sd3.5_medium.safetensors",
            "divreward-tiny-pipeline.json",
        )
    )
    assert got == expected
    # The preset that loads T5 asks for it (and still for no variant).
    index = yaml.safe_load((served / MODEL_INDEX).read_text())
    ((_, with_t5),) = policy_hub_files(load_config("diversegrpo-sd35-pickscore"), index)
    assert "text_encoder_3/config.json" in with_t5
    hub.offline()
    hub.monkeypatch.setenv(ENV_WEIGHTS_DIR, str(weights))
    assert main(["weights", "check", "--train-config", str(train)]) == 0
    cfg = load_config(None, [], train)
    path = resolve_policy(cfg, "--train-config x")
    assert path == str(weights / SD35)
    import torch

    adapter = SD3Adapter.from_pretrained(
        path, device="cpu", dtype=torch.float32, text_encoder_3=False
    )
    assert adapter.pipeline.text_encoder_3 is None and adapter.transformer is not None


def test_train_without_the_policy_weights_is_one_short_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["train", "--preset", "diversegrpo-sd35-pickscore"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"the policy pipeline '{SD35}'" in err
    assert "`divreward weights pull --preset diversegrpo-sd35-pickscore`" in err


def test_check_selects_by_serve_config_and_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a Serve config and ``--profile real`` select (offline, nothing there): every
    repository its models read, with where it looked; ``--profile tiny`` selects nothing."""
    import json

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    config = Path(__file__).resolve().parents[2] / "deploy" / "serve-1gpu.yaml"
    for selection in (["--serve-config", str(config)], ["--profile", "real"]):
        assert main(["weights", "check", *selection, "--json"]) == 1
        out, err = capsys.readouterr()
        found = {r["repo"]: r for r in json.loads(out)}
        assert set(found) == {PICK, LAION, "dreamsim"}
        assert not any(r["ok"] for r in found.values())
        assert "model.safetensors or pytorch_model.bin" in found[PICK]["missing"]
        assert found[PICK]["looked"] == [f"the Hugging Face cache {tmp_path / 'hf'}"]
        assert f"fetch with `divreward weights pull {' '.join(selection)}`" in err
    assert main(["weights", "pull", "--profile", "tiny"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out


def test_a_hub_error_deep_in_diffusers_chain_becomes_one_line_with_the_pull() -> None:
    """Online, diffusers raises its own OSError from the hub's: the trainer names the
    repository, that it is gated, and the pull command; other errors pass through."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    from divreward.trainer.cli import weights_error

    response = httpx2.Response(403, request=httpx2.Request("GET", "http://hub/x"))
    try:
        try:
            raise GatedRepoError(
                "403 Client Error: access to model x is restricted", response=response
            )
        except GatedRepoError as inner:
            raise OSError(f"Cannot load model {SD35}: ...") from inner
    except OSError as exc:
        message = weights_error(exc, SD35, "--preset diversegrpo-sd35-pickscore")
    assert message is not None and "\n" not in message
    assert message.startswith(f"the weights of '{SD35}' could not be loaded (a gated repository")
    assert message.endswith(
        "Fetch them with `divreward weights pull --preset diversegrpo-sd35-pickscore`"
    )
    assert weights_error(OSError("disk full"), SD35, "--preset x") is None
