"""The ``vltseg`` command line: checkpoint tools and single-image prediction here; other packages add subcommands
through the ``vltseg.commands`` entry point group (a module with ``add_arguments(parser)`` and ``run(args)``), so
the core never imports them."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from .config import ConfigError
from .precision import PRECISIONS

if TYPE_CHECKING:
    from .checkpoint import CheckpointMeta
    from .config import TTAConfig


def parse_size(text: str) -> list[int]:
    """Parse "HxW" (or a single number for a square)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 512x1024, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected HxW with positive sizes, got {text!r}")
    return values


def _parse_scales(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated scale factors, got {text!r}") from None


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tta``, ``--tta-scales``, ``--tta-flip`` (test-time augmentation for test-server numbers)."""
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: the run config's test_tta, else --tta-scales and --tta-flip")
    parser.add_argument("--tta-scales", dest="tta_scales", type=_parse_scales, default=None,
                        help="TTA scale factors of the inference size, e.g. 1,1.25,1.5,1.75,2,2.25 (implies --tta)")
    parser.add_argument("--tta-flip", dest="tta_flip", action="store_true", help="TTA: add mirrored passes")


def tta_from_args(args: argparse.Namespace, meta: "CheckpointMeta") -> Optional["TTAConfig"]:
    """The TTA to run: explicit scales, else (with --tta) the one the checkpoint's run config names, else none."""
    from .config import TTAConfig, from_dict

    if args.tta_scales is not None:
        return TTAConfig(scales=args.tta_scales, flip=args.tta_flip)
    if not args.tta:
        return None
    recorded = (meta.provenance.get("config") or {}).get("test_tta")
    return from_dict(TTAConfig, recorded, "test_tta") if recorded else TTAConfig(flip=args.tta_flip)


def _checkpoint_new(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointMeta, save_checkpoint
    from .config import inference_preset, model_preset, validate_inference_config
    from .model import ENCODERS, build_model, count_parameters, load_pretrained

    if args.model not in ENCODERS:
        raise ConfigError(f"--model: unknown model {args.model!r}; choose from {sorted(ENCODERS)}")
    cfg = model_preset(args.model, tuple(h.strip() for h in args.heads.split(",") if h.strip()))
    inference = inference_preset(args.model)
    for key in ("mode", "size", "fit_size", "window", "stride"):
        value = getattr(args, key)
        if value is not None:
            setattr(inference, key, value)
    validate_inference_config(inference)
    model = build_model(cfg)
    provenance = {"created_by": "vltseg checkpoint new", "pretrained": args.pretrained, "trained": False}
    if args.pretrained:
        load_pretrained(model.encoder, args.pretrained)
    save_checkpoint(args.out, model, CheckpointMeta(model=cfg, inference=inference, provenance=provenance))
    print(f"wrote {args.out}: {args.model}, heads {args.heads}, {count_parameters(model) / 1e6:.1f} M parameters")
    return 0


def _checkpoint_info(args: argparse.Namespace) -> int:
    from safetensors import safe_open

    from .checkpoint import read_meta
    from .config import to_dict

    meta = read_meta(args.file)
    if args.json:
        print(meta.to_json())
        return 0
    with safe_open(args.file, framework="pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
    m = meta.model
    heads = [name for name, head in (("seg", m.seg_head), ("det", m.det_head)) if head is not None]
    print(f"checkpoint     {args.file} ({os.path.getsize(args.file) / 2**20:.1f} MiB, {params / 1e6:.1f} M values)")
    print(f"encoder        {m.encoder.name} (taps {m.encoder.taps or 'default'})")
    print(f"heads          {', '.join(heads)}")
    print(f"classes        {len(m.classes)}: {', '.join(m.classes)}")
    if m.det_head is not None:
        print(f"det classes    {', '.join(m.det_head.classes)}")
    print(f"normalization  mean {meta.normalization.mean} std {meta.normalization.std} (RGB, 0-255)")
    print(f"inference      {json.dumps(to_dict(meta.inference))}")
    print(f"provenance     {json.dumps(meta.provenance, sort_keys=True)}")
    return 0


def _checkpoint_import(args: argparse.Namespace) -> int:
    from .mmseg_checkpoint import import_checkpoint

    if os.path.exists(args.out) and not args.force:
        raise ConfigError(f"--out {args.out} exists; pass --force to overwrite it")
    meta = import_checkpoint(args.file, args.out)
    inference = meta.inference
    enc = meta.model.encoder
    print(f"wrote {args.out}: {enc.arch.get('embed_dim')}-wide, {enc.arch.get('depth')}-block EVA02 (patch "
          f"{enc.patch_size or (14 if enc.name == 'eva02_l14' else 16)}, position grid {enc.pos_embed_grid}), "
          f"{len(meta.model.classes)} classes, iteration {meta.provenance.get('iteration')}; inference "
          f"{inference.mode} window {inference.window} stride {inference.stride} within {inference.fit_size}")
    for note in meta.provenance.get("assumed") or []:
        print(f"note: assumed {note}")
    return 0


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _predict(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from .predictor import Predictor
    from .visualize import colorize

    from .checkpoint import load_checkpoint
    from .labels import CITYSCAPES_TRAINID_TO_ID

    model, meta = load_checkpoint(args.checkpoint)
    predictor = Predictor(model, meta, device=args.device, precision=args.precision,
                          score_threshold=args.score_threshold, tta=tta_from_args(args, meta))
    os.makedirs(args.out, exist_ok=True)
    failures = 0
    for path in args.images:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipped {path}: not a readable image", file=sys.stderr)
            failures += 1
            continue
        result = predictor.predict([image], image_format="BGR")[0]
        stem = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0])
        if result.label_map is not None:
            ids = CITYSCAPES_TRAINID_TO_ID[result.label_map] if args.label_ids == "cityscapes" else result.label_map
            cv2.imwrite(stem + "_labels.png", ids)
            color = colorize(result.label_map, predictor.palette)
            cv2.imwrite(stem + "_color.png", cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
        boxes = [
            {"box_xyxy": [round(float(v), 2) for v in b], "class_id": int(c),
             "class_name": predictor.class_names[int(c)], "score": round(float(s), 4)}
            for b, c, s in zip(result.boxes, result.box_class_ids, result.box_scores)
        ]
        with open(stem + "_detections.json", "w", encoding="utf-8") as f:
            json.dump(boxes, f, indent=1)
        print(f"{path}: {len(boxes)} boxes" + (f", {len(np.unique(result.label_map))} classes in mask"
                                                 if result.label_map is not None else ""))
    return 1 if failures else 0


def _export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .export import export_onnx

    model, meta = load_checkpoint(args.checkpoint)
    size = args.size or (meta.inference.size if meta.inference.mode == "whole" else [meta.inference.window] * 2)
    patch = model.patch_size
    size = [max(patch, round(s / patch) * patch) for s in size]
    report = export_onnx(model, meta, args.out, size[0], size[1], batch=args.batch, opset=args.opset)
    print(json.dumps(report, indent=1))
    worst = max((e for e in report["max_abs_error"].values() if e is not None), default=0.0)
    seg_error = report["max_abs_error"].get("seg_scores")
    print(f"wrote {args.out}: input {size[0]}x{size[1]} (normalised RGB), "
          f"dynamic batch; onnxruntime vs PyTorch "
          f"max abs error {worst:.2e}" + (f" (seg scores {seg_error:.2e})" if seg_error is not None else ""))
    mismatched = [k for k, v in report["max_abs_error"].items() if v is None]
    if mismatched:
        print(f"vltseg: error: onnxruntime output shapes differ for {mismatched}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``vltseg`` argument parser."""
    parser = argparse.ArgumentParser(prog="vltseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ckpt = commands.add_parser("checkpoint", help="create or inspect checkpoints")
    ckpt_commands = ckpt.add_subparsers(dest="checkpoint_command", required=True)
    new = ckpt_commands.add_parser("new", help="write a randomly initialised (or CLIP-initialised) checkpoint")
    new.add_argument("--model", required=True, help="eva02_l14, eva02_b16, clip_l14, clip_b16 or eva02_tiny")
    new.add_argument("--heads", default="seg", help="comma-separated: seg, det (default: seg)")
    new.add_argument("--out", required=True, help="output .safetensors path")
    new.add_argument("--pretrained", help="encoder weights: a local file (open_clip, EVA-CLIP .pt or timm format) "
                                          "or an open_clip pretrained tag ('openclip' = the encoder's default tag)")
    new.add_argument("--mode", choices=["whole", "slide"], help="inference mode stored in the checkpoint")
    new.add_argument("--size", type=parse_size, help="whole-image input size HxW")
    new.add_argument("--fit-size", dest="fit_size", type=parse_size, help="slide mode: resize to fit HxW first")
    new.add_argument("--window", type=int, help="slide mode: window size")
    new.add_argument("--stride", type=int, help="slide mode: window stride")
    new.set_defaults(func=_checkpoint_new)
    info = ckpt_commands.add_parser("info", help="print a checkpoint's metadata")
    info.add_argument("file")
    info.add_argument("--json", action="store_true", help="print the raw metadata JSON")
    info.set_defaults(func=_checkpoint_info)
    imp = ckpt_commands.add_parser(
        "import", help="convert a checkpoint of the mmseg VLTSeg reimplementation (vltseg_checkpoint_*.pth, "
                       "iter_*.pth) into this format; nothing in the pickle is run")
    imp.add_argument("file", help="the .pth file (published {meta, state_dict} or a raw training checkpoint)")
    imp.add_argument("--out", required=True, help="output .safetensors path")
    imp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    imp.set_defaults(func=_checkpoint_import)

    predict = commands.add_parser("predict", help="segment image files; writes label/color PNGs and box JSON")
    predict.add_argument("images", nargs="+")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--precision", default="auto", choices=PRECISIONS,
                         help="auto: bf16 where the device runs it natively, else fp32")
    predict.add_argument("--score-threshold", dest="score_threshold", type=float, default=0.3)
    predict.add_argument("--label-ids", dest="label_ids", choices=["trainids", "cityscapes"], default="trainids",
                         help="*_labels.png values: trainIds (255 = unlabeled), or Cityscapes labelIds as the "
                              "Cityscapes test server expects (unlabeled = 0)")
    add_tta_arguments(predict)
    predict.set_defaults(func=_predict)

    export = commands.add_parser("export", help="export the network to ONNX and check it with onnxruntime")
    export.add_argument("--checkpoint", required=True)
    export.add_argument("--onnx", dest="out", required=True, help="output .onnx path")
    export.add_argument("--size", type=parse_size, help="input HxW (default: the checkpoint's whole-image size or "
                                                   "window), rounded to the patch size")
    export.add_argument("--batch", type=int, default=1,
                        help="batch of the example traced (the graph's batch stays dynamic; checked at batch+1)")
    export.add_argument("--opset", type=int, default=17)
    export.set_defaults(func=_export)

    for entry in sorted(_plugin_entry_points(), key=lambda e: e.name):
        module = entry.load()
        summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None
        sub = commands.add_parser(entry.name, help=summary, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    return parser


def _plugin_entry_points() -> list:
    eps = importlib.metadata.entry_points()
    return list(eps.select(group="vltseg.commands")) if hasattr(eps, "select") else list(eps.get("vltseg.commands", []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit code. User errors print one line, not a traceback."""
    from .checkpoint import CheckpointError
    from .model import PretrainedWeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ConfigError, PretrainedWeightsError) as exc:
        print(f"vltseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
