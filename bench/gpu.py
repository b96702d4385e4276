#!/usr/bin/env python
"""Every GPU speed target of the product (bench/RESULTS.md): correctness (GPU vs CPU), then timings, as Markdown.

    bash bench/gpu.sh                      # on the GPU machine: all sections, tables to $OUT/RESULTS.md
    bash bench/gpu.sh --only predictor,detection   # a subset (sections below), e.g. split over two calls
    python bench/gpu.py --smoke            # tiny models and sizes on CPU: checks the script itself

Sections (each guarded: a failure is reported in its row and the next section runs): correctness, encoders
(eager / torch.compile / CUDA graphs), predictor (VLTSeg-B 1024x2048, VLTSeg-L 1008x2016, pre- and postprocessing
included; eager vs the whole network in one CUDA graph), detection (the head alone: torchvision's test path
vs the fixed-shape path), peers (transformers Mask2Former Swin-L and SegFormer-B5 when transformers is
importable), io (JPEG decode OpenCV vs nvJPEG; host->device copies pageable vs pinned), cameras (4-camera
batching), training (EVA02-L 512^2 batch 16, with the 5k-iteration projection) and memory (GPU memory over 1000
frames). All models use random weights.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import traceback
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vltseg_ros.checkpoint import CheckpointMeta  # noqa: E402
from vltseg_ros.config import InferenceConfig, model_preset  # noqa: E402
from vltseg_ros.model import build_model  # noqa: E402
from vltseg_ros.predictor import Predictor  # noqa: E402

LINES: list[str] = []


def emit(text: str = "") -> None:
    """Print and keep for the Markdown file."""
    print(text, flush=True)
    LINES.append(text)


class Timer:
    """Median/p90 milliseconds of a callable, synchronising CUDA around each call."""

    def __init__(self, device: torch.device, warmup: int, iters: int):
        self.device, self.warmup, self.iters = device, warmup, iters

    def __call__(self, fn: Callable[[], object]) -> tuple[float, float]:
        for _ in range(self.warmup):
            fn()
        self._sync()
        times = []
        for _ in range(self.iters):
            start = time.perf_counter()
            fn()
            self._sync()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times), float(np.percentile(times, 90))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def section(title: str, header: str) -> Callable:
    """Decorator: print a table header, run the body, report an exception as a row instead of stopping."""
    def wrap(fn: Callable) -> Callable:
        def run(*args, **kwargs):
            emit(f"\n## {title}\n")
            emit(header)
            emit("|" + "---|" * (header.count("|") - 1))
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # keep measuring the other sections
                emit(f"| failed: {type(exc).__name__}: {str(exc)[:200]} |")
                traceback.print_exc()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return run
    return wrap


def make_predictor(name: str, heads: tuple[str, ...], size: tuple[int, int], device, precision: str,
                   compile: bool | str = False, score_threshold: float = 0.3) -> Predictor:
    """Random-init predictor for a preset at a whole-image size."""
    torch.manual_seed(0)
    cfg = model_preset(name, heads)
    meta = CheckpointMeta(model=cfg, inference=InferenceConfig(mode="whole", size=list(size), fit_size=list(size)))
    return Predictor(build_model(cfg), meta, device=device, precision=precision, compile=compile,
                     score_threshold=score_threshold)


def box_agreement(ref, got) -> float:
    """Fraction of ``got``'s boxes with a same-class box in ``ref`` at IoU >= 0.9 (random weights give many
    near-tied scores, so the orders differ between devices)."""
    from torchvision.ops import box_iou

    if not len(got.boxes):
        return float("nan")
    iou = box_iou(torch.from_numpy(got.boxes), torch.from_numpy(ref.boxes)) if len(ref.boxes) else None
    if iou is None:
        return 0.0
    same = torch.from_numpy(got.box_class_ids)[:, None] == torch.from_numpy(ref.box_class_ids)[None]
    return float(((iou >= 0.9) & same).any(1).float().mean())


def frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Random uint8 RGB frames."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8) for _ in range(count)]


@section("Correctness: GPU vs CPU on the same weights and frames",
         "| model | size | GPU precision / mode | label agreement | max abs score diff | boxes CPU/GPU | GPU boxes "
         "matched on CPU |")
def correctness(cfg: argparse.Namespace, device: torch.device) -> None:
    for name, size in cfg.correctness:
        images = frames(2, size, seed=1)
        cpu = make_predictor(name, ("seg", "det"), size, "cpu", "fp32", score_threshold=0.1)
        ref = cpu.predict(images, return_confidence=True)
        ref_scores = _scores(cpu, images)
        graphs = ("bf16", "reduce-overhead") if name == cfg.correctness[0][0] else None  # one compile only
        for precision, compile in (("fp32", False), ("bf16", False)) + ((graphs,) if graphs else ()):
            gpu = make_predictor(name, ("seg", "det"), size, device, precision, compile=compile,
                                 score_threshold=0.1)
            got = gpu.predict(images, return_confidence=True)
            agree = np.mean([np.mean(a.label_map == b.label_map) for a, b in zip(ref, got)])
            diff = float((_scores(gpu, images) - ref_scores).abs().max())
            boxes = f"{sum(len(r.boxes) for r in ref)}/{sum(len(g.boxes) for g in got)}"
            matched = np.nanmean([box_agreement(r, g) for r, g in zip(ref, got)])
            mode = precision + (", CUDA graphs" if compile else "")
            emit(f"| {name} | {size[0]}x{size[1]} | {mode} | {agree:.4f} | {diff:.2e} | {boxes} | {matched:.3f} |")


def _scores(predictor: Predictor, images: list[np.ndarray]) -> torch.Tensor:
    with torch.inference_mode():
        batch = torch.cat([predictor._normalise(predictor._upload(i, "RGB"), predictor.inference.size)
                           for i in images])
        return predictor._run(batch)["seg_scores"].float().cpu()


@section("Encoders (bf16 autocast, batch 1)", "| encoder | input | mode | median ms | p90 ms |")
def encoders(cfg: argparse.Namespace, device: torch.device, timer: Timer) -> None:
    from vltseg_ros.model.encoder import ClipEncoder

    for name, size, modes in cfg.encoders:
        encoder = ClipEncoder(name).to(device).eval()
        x = torch.randn(1, 3, *size, device=device)
        for mode in modes:
            fn = encoder if mode == "eager" else torch.compile(
                encoder, mode="reduce-overhead" if mode == "cuda-graphs" else "default", dynamic=False)
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
                median, p90 = timer(lambda: fn(x))
            emit(f"| {name} | {size[0]}x{size[1]} | {mode} | {median:.1f} | {p90:.1f} |")


@section("Full predictor (bf16, batch 1, uint8 frame in -> label map + boxes at source size)",
         "| model | input | mode | median ms | p90 ms | target |")
def full_predictor(cfg: argparse.Namespace, device: torch.device, timer: Timer) -> None:
    for name, size, target in cfg.predictor:
        image = frames(1, size)
        for mode, compile in (("eager", False), ("CUDA graphs", "reduce-overhead")):
            predictor = make_predictor(name, ("seg", "det"), size, device, "bf16", compile=compile)
            started = time.perf_counter()
            predictor.predict(image)  # compiles (Inductor cache: TORCHINDUCTOR_CACHE_DIR)
            first = time.perf_counter() - started
            median, p90 = timer(lambda p=predictor: p.predict(image))
            emit(f"| {name} seg+det | {size[0]}x{size[1]} | {mode} (first call {first:.0f} s) | "
                 f"{median:.1f} | {p90:.1f} | p50 <= {target} ms |")
            del predictor


@section("Detection head alone over a random pyramid (bf16): torchvision's test path vs the fixed-shape path",
         "| model | input | path | median ms | p90 ms |")
def detection_head(cfg: argparse.Namespace, device: torch.device, timer: Timer) -> None:
    name, size = cfg.detection
    torch.manual_seed(0)
    model = build_model(model_preset(name, ("det",))).to(device).eval()
    head = model.det_head
    with torch.inference_mode():
        pyramid = model.features(torch.randn(1, 3, *size, device=device))
    sizes = [tuple(size)]
    graphed = torch.compile(head, mode="reduce-overhead", fullgraph=True, dynamic=False)
    paths = {
        "torchvision (per-image loops, dynamic shapes)": (False, head),
        "fixed-shape, eager": (True, head),
        "fixed-shape, CUDA graphs": (None, graphed),
    }
    for label, (fixed, fn) in paths.items():
        head.fixed_shape = fixed
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            median, p90 = timer(lambda: fn(pyramid, size, sizes))
        emit(f"| {name} | {size[0]}x{size[1]} | {label} | {median:.1f} | {p90:.1f} |")


@section("Peers (transformers, random weights, to a label map)", "| model | input | median ms | p90 ms |")
def peers(cfg: argparse.Namespace, device: torch.device, timer: Timer) -> None:
    try:
        import transformers
    except ImportError:
        emit("| transformers not importable: skipped | | | |")
        return
    size = cfg.peer_size
    x = torch.randn(1, 3, *size, device=device)
    builds = {
        "Mask2Former Swin-L": lambda: transformers.Mask2FormerForUniversalSegmentation(
            transformers.Mask2FormerConfig(backbone_config=transformers.SwinConfig(
                embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                out_features=["stage1", "stage2", "stage3", "stage4"]), num_labels=19)),
        "SegFormer-B5": lambda: transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
            depths=[3, 6, 40, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768, num_labels=19)),
    }
    for name, build in builds.items():
        model = build().to(device).eval()

        def run(model=model, name=name):
            out = model(pixel_values=x)
            if name.startswith("Mask2Former"):
                scores = torch.einsum("bqc,bqhw->bchw", out.class_queries_logits.softmax(-1)[..., :-1],
                                      out.masks_queries_logits.sigmoid())
            else:
                scores = out.logits
            return torch.nn.functional.interpolate(scores.float(), size=size, mode="bilinear").argmax(1)

        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            median, p90 = timer(run)
        emit(f"| {name} | {size[0]}x{size[1]} | {median:.1f} | {p90:.1f} |")


@section("JPEG decode and host->device copy", "| what | input | median ms | p90 ms |")
def io(cfg: argparse.Namespace, device: torch.device, timer: Timer) -> None:
    import cv2
    from torchvision.io import decode_jpeg

    image = frames(1, cfg.io_size)[0]
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    median, p90 = timer(lambda: cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    emit(f"| JPEG decode, OpenCV ({cv2.getNumThreads()} threads) | {cfg.io_size[0]}x{cfg.io_size[1]} | "
         f"{median:.1f} | {p90:.1f} |")
    data = torch.from_numpy(jpeg.reshape(-1).copy())
    if device.type == "cuda":
        median, p90 = timer(lambda: decode_jpeg(data, device=device))
        emit(f"| JPEG decode, nvJPEG (torchvision decode_jpeg on cuda) | {cfg.io_size[0]}x{cfg.io_size[1]} | "
             f"{median:.1f} | {p90:.1f} |")
        host = torch.from_numpy(image)
        pinned = host.pin_memory()
        for label, tensor in (("pageable", host), ("pinned", pinned)):
            median, p90 = timer(lambda t=tensor: t.to(device, non_blocking=True))
            emit(f"| host->device rgb8 frame, {label} | {cfg.io_size[0]}x{cfg.io_size[1]} | {median:.2f} | "
                 f"{p90:.2f} |")


@section("Multi-camera batching (4 cameras)", "| model | input | mode | ms per 4 frames | throughput ratio |")
def cameras(cfg: argparse.Namespace, device: torch.device, timer: Timer) -> None:
    name, size = cfg.cameras
    predictor = make_predictor(name, ("seg", "det"), size, device, "bf16" if device.type == "cuda" else "fp32")
    images = frames(4, size)
    sequential, _ = timer(lambda: [predictor.predict([i]) for i in images])
    batched, _ = timer(lambda: predictor.predict(images))
    emit(f"| {name} | {size[0]}x{size[1]} | 4 sequential calls | {sequential:.1f} | 1.00 |")
    emit(f"| {name} | {size[0]}x{size[1]} | one batch of 4 | {batched:.1f} | {sequential / batched:.2f} "
         f"(target >= 2.5 on GPU) |")


@section("Training throughput (bf16, AdamW, full fine-tuning)",
         "| model | crop | batch | ms/step | images/s | peak GPU GiB | 5k x 16 projection |")
def training(cfg: argparse.Namespace, device: torch.device, timer: Timer) -> None:
    name, crop, batch = cfg.training
    torch.manual_seed(0)
    model = build_model(model_preset(name, ("seg",))).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, crop, crop, device=device)
    coarse = torch.randint(0, 19, (batch, 1, crop // 32, crop // 32), device=device).float()
    labels = torch.nn.functional.interpolate(coarse, size=(crop, crop), mode="nearest")[:, 0].long()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            losses = model(images, seg_targets=labels)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()

    median, _ = timer(step)
    ips = batch / (median / 1000)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    emit(f"| {name} | {crop}x{crop} | {batch} | {median:.0f} | {ips:.1f} | {peak:.1f} | "
         f"{5000 * 16 / ips / 60:.1f} min (target <= 30) |")


@section("GPU memory over many frames (after warm-up)", "| model | input | frames | allocated MiB start -> end |")
def memory(cfg: argparse.Namespace, device: torch.device) -> None:
    name, size, count = cfg.memory
    predictor = make_predictor(name, ("seg", "det"), size, device, "bf16" if device.type == "cuda" else "fp32")
    images = frames(4, size)
    for i in range(10):
        predictor.predict([images[i % 4]])
    start = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    for i in range(count):
        predictor.predict([images[i % 4]])
    end = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    emit(f"| {name} | {size[0]}x{size[1]} | {count} | {start:.1f} -> {end:.1f} |")


def configuration(smoke: bool) -> argparse.Namespace:
    """Models and sizes: the issue's on a GPU, tiny ones for --smoke."""
    if smoke:
        tiny = ("eva02_tiny", (64, 128))
        return argparse.Namespace(
            correctness=[tiny], encoders=[("eva02_tiny", (64, 128), ("eager",))],
            predictor=[("eva02_tiny", (64, 128), 18)], detection=tiny, peer_size=(64, 128), io_size=(128, 256),
            cameras=tiny, training=("eva02_tiny", 64, 2), memory=("eva02_tiny", (64, 128), 20), warmup=1, iters=2)
    return argparse.Namespace(
        correctness=[("eva02_tiny", (256, 512)), ("eva02_b16", (512, 1024))],
        encoders=[("eva02_b16", (1024, 2048), ("eager", "compiled")), ("eva02_b16", (512, 1024),
                                                                        ("eager", "cuda-graphs")),
                  ("eva02_l14", (1008, 2016), ("eager", "compiled"))],
        predictor=[("eva02_b16", (1024, 2048), 18), ("eva02_l14", (1008, 2016), 60)],
        detection=("eva02_b16", (1024, 2048)),
        peer_size=(1024, 2048), io_size=(1024, 2048), cameras=("eva02_b16", (512, 1024)),
        training=("eva02_l14", 512, 16), memory=("eva02_b16", (512, 1024), 1000), warmup=5, iters=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes (works on CPU)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for RESULTS.md")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds; sections not started by then are listed as skipped (RESULTS.md is "
                             "rewritten after every section, so a killed run keeps what it measured)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke to check the script on CPU", file=sys.stderr)
        return 2
    cfg = configuration(args.smoke)
    timer = Timer(device, cfg.warmup, cfg.iters)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    emit(f"# GPU benchmark, {datetime.date.today().isoformat()}: {name}, torch {torch.__version__}"
         + (" (smoke run, tiny sizes)" if args.smoke else ""))
    skip = set(filter(None, args.skip.split(",")))
    steps = {  # in priority order: the targets first, diagnostics last
        "correctness": lambda: correctness(cfg, device),
        "predictor": lambda: full_predictor(cfg, device, timer),
        "peers": lambda: peers(cfg, device, timer),
        "cameras": lambda: cameras(cfg, device, timer),
        "memory": lambda: memory(cfg, device),
        "training": lambda: training(cfg, device, timer),
        "io": lambda: io(cfg, device, timer),
        "detection": lambda: detection_head(cfg, device, timer),
        "encoders": lambda: encoders(cfg, device, timer),
    }
    only = set(filter(None, args.only.split(","))) or set(steps)
    unknown = (skip | only) - set(steps)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(steps)}")
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    for key, step in steps.items():
        if key not in only or key in skip:
            continue
        if time.perf_counter() - started > args.budget:
            emit(f"\n## {key}: skipped, time budget of {args.budget:.0f} s spent (run it with --only {key})")
            continue
        step()
        emit(f"\n({key}: done at {time.perf_counter() - started:.0f} s)")
        with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
