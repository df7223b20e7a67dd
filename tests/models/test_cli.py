"""``divreward models``, ``make-tiny-models`` and ``score`` through divreward.cli.main,
plus one smoke run of the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_models import TinyZoo, make_images
from PIL import Image

from divreward.cli import main
from divreward.models.registry import REGISTRY
from divreward.models.weights import ENV_WEIGHTS_DIR, TINY_MARKER


@pytest.fixture(autouse=True)
def _no_env_weights_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)


def test_models_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "kind", "default"]
    for spec in REGISTRY.values():
        row = next(line for line in out if line.startswith(spec.name + " "))
        assert spec.kind in row and spec.default_source in row
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(REGISTRY)
    assert rows[0]["default_source"] == "yuvalkirstain/PickScore_v1"
    assert rows[0]["defaults"]["scale_divisor"] == 1.0


def test_console_script_smoke() -> None:
    script = Path(sys.executable).parent / "divreward"
    out = subprocess.run(
        [str(script), "models"], capture_output=True, text=True, timeout=120, check=True
    )
    assert "pickscore" in out.stdout and "MizzenAI/HPSv3" in out.stdout


def test_make_tiny_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-tiny-models", str(tmp_path), "--seed", "3", "--only", "hpsv2"]) == 0
    captured = capsys.readouterr()
    assert "built tiny models under" in captured.out and "hpsv2" in captured.out
    assert "TESTING THE MACHINERY ONLY" in captured.err
    assert (tmp_path / "xswu" / "HPSv2" / "HPS_v2_compressed.pt").is_file()
    assert json.loads((tmp_path / TINY_MARKER).read_text())["seed"] == 3
    with pytest.raises(SystemExit):
        main(["make-tiny-models", str(tmp_path), "--only", "nope"])


def _pickscore_and_pngs(tiny_zoo: TinyZoo, directory: Path, n: int) -> list[Path]:
    """Build the tiny PickScore; write ``n`` PNG files into ``directory``."""
    tiny_zoo.build("pickscore")
    paths = []
    for i, img in enumerate(make_images(n, seed=21)):
        path = directory / f"img{i}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def test_score_prints_a_table_of_the_model_scores(
    tiny_zoo: TinyZoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _pickscore_and_pngs(tiny_zoo, tmp_path, 3)
    args = ["score", "--model", "pickscore", "--prompt", "a cat", "--weights-dir"]
    assert main([*args, str(tiny_zoo.root), *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["path", "score"]
    expected = tiny_zoo.load("pickscore").score(
        [np.asarray(Image.open(p)) for p in paths], ["a cat"] * 3
    )
    for path, line, want in zip(paths, lines[2:5], expected, strict=True):
        got_path, got_score = line.split()
        assert got_path == str(path) and float(got_score) == pytest.approx(want, rel=1e-5)
    assert "tiny random model" in lines[-1]


def test_score_json_options_and_progress(
    tiny_zoo: TinyZoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = _pickscore_and_pngs(tiny_zoo, tmp_path, 10)
    base = ["score", "--model", "pickscore", "--prompt", "a dog", "--json"]
    base += ["--weights-dir", str(tiny_zoo.root), "--batch-size", "4"]
    assert main([*base, *map(str, paths)]) == 0
    captured = capsys.readouterr()
    plain = json.loads(captured.out)
    assert "100%" in captured.err and "10/10" in captured.err  # tqdm: 10 images > batch 4
    assert plain["model"]["name"] == "pickscore" and plain["model"]["profile"] == "tiny"
    assert [s["path"] for s in plain["scores"]] == [str(p) for p in paths]
    assert main([*base, "--option", "scale_divisor=26", *map(str, paths)]) == 0
    scaled = json.loads(capsys.readouterr().out)
    assert scaled["model"]["options"]["scale_divisor"] == 26
    for a, b in zip(plain["scores"], scaled["scores"], strict=True):
        assert b["score"] == pytest.approx(a["score"] / 26, rel=1e-6)


def test_score_errors_name_the_file(
    tiny_zoo: TinyZoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _pickscore_and_pngs(tiny_zoo, tmp_path, 1)[0]
    base = ["score", "--model", "pickscore", "--prompt", "x", "--weights-dir", str(tiny_zoo.root)]
    missing = tmp_path / "missing.png"
    assert main([*base, str(good), str(missing)]) == 2
    assert f"image file '{missing}' does not exist" in capsys.readouterr().err
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    assert main([*base, str(good), str(truncated)]) == 2
    err = capsys.readouterr().err
    assert f"cannot score '{truncated}'" in err and "cannot be decoded" in err
    assert main([*base, "--option", "scale=2", str(good)]) == 2
    assert "unknown option(s) 'scale'" in capsys.readouterr().err
    assert main([*base, "--option", "nokey", str(good)]) == 2
    assert "--option must be KEY=VALUE, got 'nokey'" in capsys.readouterr().err
    emb = ["score", "--model", "dreamsim", "--prompt", "x", str(good)]
    assert main(emb) == 2
    assert "--model dreamsim is an embedder, not a scorer" in capsys.readouterr().err
    assert main([*base[:-1], str(tmp_path / "no-weights"), str(good)]) == 3
    err = capsys.readouterr().err
    assert "weights for 'yuvalkirstain/PickScore_v1' not found" in err
    assert "model.safetensors" in err


def test_score_sends_metadata_to_geneval(
    tiny_zoo: TinyZoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_zoo.build("geneval")
    paths = _pickscore_and_pngs(tiny_zoo, tmp_path, 2)
    meta = {"tag": "single_object", "include": [{"class": "car", "count": 1}]}
    base = ["score", "--model", "geneval", "--prompt", "a car", "--json"]
    base += ["--weights-dir", str(tiny_zoo.root)]
    assert main([*base, "--metadata", json.dumps(meta), *map(str, paths)]) == 0
    got = [s["score"] for s in json.loads(capsys.readouterr().out)["scores"]]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    want = tiny_zoo.load("geneval").score_with_metadata(images, ["a car"] * 2, [meta] * 2)
    assert got == list(want)
    assert main([*base, *map(str, paths)]) == 2
    assert "needs each image's GenEval metadata" in capsys.readouterr().err
