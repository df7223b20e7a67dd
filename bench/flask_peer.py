"""The public Flask peer of ``bench/throughput.py``: a PickScore reward server built the
way the public reward servers of Flow-GRPO's family are (a benchmark peer, not a product).

A Flask app (its own threaded development server, as ``app.run`` starts it) with one
route, ``POST /``: the body is a pickled ``{"images": [JPEG bytes], "prompts": [str]}``;
each file is opened with PIL, the scorer is PickScore's reference code (transformers
``CLIPModel`` and its default ``CLIPProcessor``; every image with its own prompt, the
diagonal of ``logit_scale.exp() * text_embs @ image_embs.T``), default torch threads; the
reply is a pickled ``{"scores": [float]}``, or an error text with status 500. One
difference from those servers: the body is read with divreward's allow-list unpickler
(``safe_loads``) instead of ``pickle.loads``, which decodes the same dict at the same cost.

    python bench/flask_peer.py --weights DIR --port PORT

``DIR`` is a stand-in weights directory of ``bench/throughput.py`` (``build_standins``).
"""

from __future__ import annotations

import argparse
import io
import os
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreScorer:
    """Flow-GRPO's PickScore scorer: each image with its own prompt."""

    def __init__(self, weights: Path) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.processor = CLIPProcessor.from_pretrained(str(weights / PROCESSOR_REPO))
        self.model = CLIPModel.from_pretrained(str(weights / PICKSCORE_REPO)).eval()

    def __call__(self, images: list[Any], prompts: list[str]) -> list[float]:
        torch = self.torch
        with torch.inference_mode():
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            text = self.processor(
                text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt"
            )
            img = self.model.get_image_features(pixel_values=pixels)
            txt = self.model.get_text_features(**text)
            img = getattr(img, "pooler_output", img)
            txt = getattr(txt, "pooler_output", txt)
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            scores = self.model.logit_scale.exp() * (txt @ img.T).diag()
        return [float(s) for s in scores]


def create_app(weights: Path) -> Any:
    from flask import Flask, request
    from PIL import Image

    from divreward.safe_pickle import safe_dumps, safe_loads

    scorer = PickScoreScorer(weights)
    app = Flask(__name__)

    @app.route("/", methods=["POST"])
    def inference() -> tuple[bytes, int]:
        try:
            data = safe_loads(request.get_data())
            images = [Image.open(io.BytesIO(f), formats=["jpeg"]) for f in data["images"]]
            return safe_dumps({"scores": scorer(images, list(data["prompts"]))}), 200
        except Exception:
            return traceback.format_exc().encode(), 500

    @app.route("/health", methods=["GET"])
    def health() -> tuple[str, int]:
        return "ok", 200

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    opts = ap.parse_args()
    create_app(opts.weights).run(host="127.0.0.1", port=opts.port, threaded=True)


if __name__ == "__main__":
    main()
