"""DreamSim through the unmodified dreamsim package: the embedding equals the DreamSim
formula computed by hand from the (LoRA-merged) backbones; the squash resize; missing
files name themselves; torch.hub's global directory is restored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_models import TinyZoo, make_images
from PIL import Image
from torchvision import transforms

from divreward.models.base import LoadOptions
from divreward.models.dreamsim_embedder import DreamSimEmbedder, squash_resize
from divreward.models.registry import load_model

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _norm(x: torch.Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> torch.Tensor:
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    return (x - mean) / std


def _dino_cls_block11(vit: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DreamSim's DINO 'cls' feature: the CLS token after block 11 (no final norm)."""
    tokens = vit.prepare_tokens(x)  # (B, 1 + patches, D)
    for block in vit.blocks[:12]:
        tokens = block(tokens)
    return tokens[:, 0]


def _clip_embedding(vit: torch.nn.Module, proj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """DreamSim's CLIP 'embedding' feature: final-norm CLS @ proj (768 -> 512)."""
    tokens = vit.prepare_tokens(x)
    for block in vit.blocks:
        tokens = block(tokens)
    return vit.norm(tokens)[:, 0] @ proj


def _by_hand(model: DreamSimEmbedder, images: list[np.ndarray], kind: str) -> np.ndarray:
    """Merge the LoRA into the backbones, compute the features, centre and normalise."""
    x = torch.stack([squash_resize(img, model.image_size) for img in images])  # (B,3,S,S)
    merged = model.model.merge_and_unload()  # PerceptualModel with LoRA folded into qkv
    branches = merged.extractor_list
    with torch.no_grad():
        feats = [_dino_cls_block11(branches[0].model, _norm(x, IMAGENET))]
        if kind == "ensemble":
            for branch in branches[1:]:
                feats.append(_clip_embedding(branch.model, branch.proj, _norm(x, OPENAI)))
    emb = torch.cat(feats, dim=-1)
    emb = emb - emb.mean(dim=1, keepdim=True)  # dreamsim's normalize_embedding
    return (emb / emb.norm(dim=1, keepdim=True)).numpy()


@pytest.mark.parametrize("kind", ["dino_vitb16", "ensemble"])
def test_embedding_is_the_dreamsim_formula(tiny_zoo: TinyZoo, kind: str) -> None:
    opts = tiny_zoo.options("dreamsim", options={"dreamsim_type": kind})
    model = load_model("dreamsim", opts)  # a private copy: merging mutates it
    assert isinstance(model, DreamSimEmbedder)
    images = make_images(3, seed=13)
    out = model.embed(images)
    # tiny widths: DINO 32; CLIP/OpenCLIP keep dreamsim's 512-d embedding
    assert out.shape == (3, 32 if kind == "dino_vitb16" else 32 + 512 + 512)
    with model.model.disable_adapter():
        without_lora = model.embed(images)
    assert not np.allclose(out, without_lora, atol=1e-4), "the LoRA adapter is not applied"
    np.testing.assert_allclose(out, _by_hand(model, images, kind), rtol=1e-4, atol=2e-5)
    # distance = 1 - cos: identical images are at distance 0
    again = model.embed([images[0], images[0]])
    assert 1 - float(again[0] @ again[1]) == pytest.approx(0.0, abs=1e-6)


def test_squash_resize_matches_dreamsim_preprocessing() -> None:
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, :50] = 255  # white left half
    x = squash_resize(img, 224)
    assert x.shape == (3, 224, 224)
    # Squashed, not cropped or padded: the white half spans all rows, columns 0..111.
    assert x[:, :, :108].min() > 0.99 and x[:, :, 116:].max() < 0.01
    assert x[:, 0, :108].min() > 0.99 and x[:, 223, :108].min() > 0.99
    # dreamsim.model.dreamsim's own transform, on the same image
    ref = transforms.Compose(
        [
            transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
        ]
    )(Image.fromarray(img).convert("RGB"))
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    torch.testing.assert_close(
        squash_resize(noisy, 224),
        transforms.Compose(
            [
                transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.ToTensor(),
            ]
        )(Image.fromarray(noisy)),
        rtol=0,
        atol=1e-6,
    )


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_model("dreamsim", LoadOptions(weights_dir=str(tmp_path)))
    msg = str(err.value)
    for f in (
        "dino_vitb16_pretrain.pth",
        "clip_vitb16_pretrain.pth.tar",
        "open_clip_vitb16_pretrain.pth.tar",
        "facebookresearch_dino_main/hubconf.py",
        "checkpoints/dino_vitbase16_pretrain.pth",
        "ensemble_lora/adapter_config.json",
    ):
        assert str(tmp_path / "dreamsim" / f) in msg
    assert f"`divreward weights pull dreamsim --weights-dir {tmp_path}`" in msg
    with pytest.raises(FileNotFoundError, match="neither 'dreamsim' nor an existing"):
        load_model("dreamsim", LoadOptions(source=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="option 'dreamsim_type' must be one of"):
        load_model(
            "dreamsim", LoadOptions(weights_dir=str(tmp_path), options={"dreamsim_type": "x"})
        )


def test_torch_hub_directory_is_restored(tiny_zoo: TinyZoo) -> None:
    before = torch.hub.get_dir()
    load_model("dreamsim", tiny_zoo.options("dreamsim", options={"dreamsim_type": "dino_vitb16"}))
    assert torch.hub.get_dir() == before
