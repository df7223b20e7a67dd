"""Weight resolution (weights dir -> local dir -> HF cache), its errors, the tiny marker,
dtype/device policy and the weights hash."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from fixtures_models import TinyZoo, make_images

from divreward.models.base import LoadOptions
from divreward.models.registry import load_model
from divreward.models.weights import (
    ENV_WEIGHTS_DIR,
    TINY_MARKER,
    WeightsNotFoundError,
    check_device,
    copy_into_hub_cache,
    file_sha256_prefix,
    find_tiny_root,
    is_hub_id,
    resolve_dir,
    resolve_dtype,
    resolve_file,
    resolve_first,
)


@pytest.fixture(autouse=True)
def _no_env_weights_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)


def test_is_hub_id() -> None:
    assert is_hub_id("yuvalkirstain/PickScore_v1")
    assert is_hub_id("laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    for not_hub in ("/abs/dir", "./rel/dir", "dreamsim", "a/b/c", "org/", ""):
        assert not is_hub_id(not_hub), not_hub


def test_weights_dir_missing_files_names_each_file_and_how_to_provide(tmp_path: Path) -> None:
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "config.json").write_text("{}")
    opts = LoadOptions(weights_dir=str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_dir("org/name", opts, ["config.json", "model.safetensors", "sub/x.bin"])
    msg = str(err.value)
    assert str(tmp_path / "org" / "name" / "model.safetensors") in msg
    assert str(tmp_path / "org" / "name" / "sub" / "x.bin") in msg
    in_dir = msg.split("; ")[0]  # the weights directory's part (then the HF cache's)
    assert "config.json" not in in_dir  # the file that exists is not reported missing
    assert "the Hugging Face cache" in msg  # looked there too, after the weights dir
    assert f"`divreward weights pull <model> --weights-dir {tmp_path}`" in msg
    assert "huggingface-cli" not in msg


def test_weights_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "org" / "name"
    target.mkdir(parents=True)
    (target / "w.bin").write_bytes(b"abc")
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(tmp_path))
    got = resolve_file("org/name", "w.bin", LoadOptions())
    assert got.path == target / "w.bin"
    assert (got.source, got.revision, got.tiny) == (str(target), None, False)
    # The explicit option wins over the environment.
    other = tmp_path / "other"
    with pytest.raises(WeightsNotFoundError, match=str(other / "org" / "name" / "w.bin")):
        resolve_file("org/name", "w.bin", LoadOptions(weights_dir=str(other)))


def test_local_directory_source(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    got = resolve_dir(str(tmp_path), LoadOptions(), ["a.txt"])
    assert got.path == tmp_path and got.source == str(tmp_path)
    with pytest.raises(WeightsNotFoundError, match=r"missing .*b\.txt"):
        resolve_dir(str(tmp_path), LoadOptions(), ["a.txt", "b.txt"])


def test_source_neither_dir_nor_hub_id() -> None:
    with pytest.raises(WeightsNotFoundError, match="neither an existing local directory"):
        resolve_file("/no/such/dir", "x.bin", LoadOptions())


def test_offline_hub_miss_names_repo_files_and_both_remedies(tmp_path: Path) -> None:
    opts = LoadOptions(cache_dir=str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_file("someorg/not-cached", "model.safetensors", opts)
    msg = str(err.value)
    assert "'someorg/not-cached'" in msg and "model.safetensors" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "Hugging Face cache" in msg
    assert "divreward weights pull" in msg and "\n" not in msg  # one line
    both = r"model\.safetensors / pytorch_model\.bin not available"
    with pytest.raises(WeightsNotFoundError, match=both):
        resolve_first("someorg/not-cached", ("model.safetensors", "pytorch_model.bin"), opts)


def test_hub_id_resolves_through_the_hf_cache_offline(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    """The real profile's path: hub ids resolved by huggingface_hub from its cache with
    HF_HUB_OFFLINE=1 (tiny files under the real repository ids)."""
    tiny_zoo.build("pickscore")
    cache = tmp_path / "hf" / "hub"
    copy_into_hub_cache(
        tiny_zoo.root / "yuvalkirstain" / "PickScore_v1",
        cache,
        "yuvalkirstain/PickScore_v1",
        "a" * 40,
    )
    copy_into_hub_cache(
        tiny_zoo.root / "laion" / "CLIP-ViT-H-14-laion2B-s32B-b79K",
        cache,
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "b" * 40,
    )
    model = load_model("pickscore", LoadOptions(cache_dir=str(cache)))
    assert model.info.source == "yuvalkirstain/PickScore_v1"
    assert model.info.revision == "a" * 40
    assert model.info.profile == "real"  # no tiny marker anywhere above this cache
    reference = tiny_zoo.load("pickscore")
    assert model.info.weights_hash == reference.info.weights_hash
    images, prompts = make_images(2), ["a cat", "a dog"]
    assert (model.score(images, prompts) == reference.score(images, prompts)).all()
    # With the marker at the cache root, the same files report the tiny profile.
    (tmp_path / "hf" / TINY_MARKER).write_text("{}")
    assert load_model("pickscore", LoadOptions(cache_dir=str(cache))).info.profile == "tiny"


def test_no_fallback_to_tiny_models(tiny_zoo: TinyZoo, tmp_path: Path) -> None:
    tiny_zoo.build("pickscore")  # tiny models exist, but are never used implicitly
    with pytest.raises(WeightsNotFoundError) as err:
        load_model("pickscore", LoadOptions(weights_dir=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "yuvalkirstain" / "PickScore_v1" / "model.safetensors") in msg
    assert str(tmp_path / "yuvalkirstain" / "PickScore_v1" / "pytorch_model.bin") in msg


def test_tiny_marker_detection_and_warning(
    tiny_zoo: TinyZoo, caplog: pytest.LogCaptureFixture
) -> None:
    tiny_zoo.build("hpsv2")
    assert find_tiny_root(tiny_zoo.root / "xswu" / "HPSv2" / "x.pt") == tiny_zoo.root
    assert find_tiny_root(Path("/")) is None
    with caplog.at_level(logging.WARNING, logger="divreward.models.weights"):
        model = load_model("hpsv2", tiny_zoo.options("hpsv2"))
    assert model.info.profile == "tiny"
    assert any("TINY RANDOM MODELS" in r.getMessage() for r in caplog.records)
    marker = json.loads((tiny_zoo.root / TINY_MARKER).read_text())
    assert "TESTING THE MACHINERY ONLY" in marker["warning"]


def test_sha256_prefix(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"divreward" * 1000)
    assert file_sha256_prefix(f) == hashlib.sha256(b"divreward" * 1000).hexdigest()[:16]
    assert file_sha256_prefix(f, 8) == hashlib.sha256(b"divreward" * 1000).hexdigest()[:8]


def test_dtype_policy_and_device_check() -> None:
    assert resolve_dtype(LoadOptions(device="cpu")) == torch.float32
    assert resolve_dtype(LoadOptions(device="cuda")) == torch.float16
    assert resolve_dtype(LoadOptions(device="cuda"), prefer_bf16=True) == torch.bfloat16
    assert resolve_dtype(LoadOptions(dtype="bf16")) == torch.bfloat16
    assert resolve_dtype(LoadOptions(dtype="float16")) == torch.float16
    with pytest.raises(ValueError, match=r"dtype must be one of .* got 'int8'"):
        resolve_dtype(LoadOptions(dtype="int8"))
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda:0")
