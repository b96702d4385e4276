"""Parity of an imported checkpoint with the reference implementation's own outputs (bench/RESULTS.md, "the published checkpoints").

Input: a published-layout ``.pth`` and the tensors file that ``scripts/reference_fixtures.py`` wrote beside it
(``--fullsize-out DIR`` for the full ViT-L/14, or a tiny set in tests/fixtures/reference). The script imports the
checkpoint, runs our network on the same window and slide image, and prints max abs differences, label agreement
where the reference's top-two margin exceeds 1e-3, and times. Usage:

    python bench/reference_parity.py DIR/vltseg_checkpoint_fullsize_gta.pth DIR/reference_fullsize_gta.safetensors
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import torch
from safetensors.torch import load_file

from vltseg_ros.checkpoint import load_checkpoint
from vltseg_ros.mmseg_checkpoint import import_checkpoint
from vltseg_ros.model.encoder import floor_to_multiple
from vltseg_ros.precision import describe_device
from vltseg_ros.predictor import Predictor

MARGIN = 1e-3


def compare(ours: torch.Tensor, reference: torch.Tensor) -> dict:
    """Max abs difference and label agreement on the pixels whose reference top-two margin exceeds MARGIN."""
    top2 = reference.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > MARGIN
    return {"max_abs": (ours - reference).abs().max().item(),
            "decided_fraction": decided.float().mean().item(),
            "label_agreement_decided": (ours.argmax(0)[decided] == reference.argmax(0)[decided]).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="published-layout .pth written by the reference")
    parser.add_argument("tensors", help="the reference's inputs and outputs (.safetensors)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"device": describe_device(torch.device("cpu"))}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "imported.safetensors")
        start = time.perf_counter()
        import_checkpoint(args.checkpoint, out)
        result["import_s"] = round(time.perf_counter() - start, 1)
        model, meta = load_checkpoint(out)
    ref = load_file(args.tensors)
    result["inference"] = dataclasses.asdict(meta.inference)
    with torch.inference_mode():
        window = model.normalize(ref["window_image"].permute(2, 0, 1)[None].float())
        pyramid = model.features(floor_to_multiple(window, model.patch_size))
        result["pyramid_max_abs"] = [(level - ref[f"window_pyramid_{i}"]).abs().max().item()
                                     for i, level in enumerate(pyramid)]
        start = time.perf_counter()
        scores = model(window)["seg_scores"][0]
        result["window_s"] = round(time.perf_counter() - start, 1)
    result["window"] = compare(scores, ref["window_scores"][0])
    predictor = Predictor(model, meta, precision="fp32")
    image = ref["slide_image"].numpy()
    predictor.set_inference(dataclasses.replace(predictor.inference, fit_size=sorted(image.shape[:2])))
    start = time.perf_counter()
    scores = predictor.class_scores(image)
    result["slide_s"] = round(time.perf_counter() - start, 1)
    result["slide"] = compare(scores, ref["slide_scores"][0])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
