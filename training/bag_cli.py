"""Record datasets, image folders and videos as rosbag2 bags; evaluate a checkpoint on a bag offline; inspect bags.

    vltseg bag make --out bags/fog --dataset cityscapes:data/synth/target_fog:val [--compressed] [--storage sqlite3]
    vltseg bag make --out bags/drive --video drive.mp4 --every 3 --distro humble
    vltseg bag eval --bag bags/fog --checkpoint run/final.safetensors --out reports/fog_bag --overlays 10 --mp4
    vltseg bag info bags/fog

Bags use the layout of ``vltseg_ros.bag`` (image, camera_info and ground-truth label mask and boxes under one
namespace). ``eval`` needs no ROS: it streams the bag through the Predictor and scores it like ``vltseg eval``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import sys
import time
from typing import Callable, Iterator, NamedTuple, Optional

import cv2
import numpy as np
import torch

from vltseg_ros.bag import (
    DISTRO_VERSIONS,
    STORAGES,
    BagError,
    BagWriter,
    FrameRecord,
    bag_info,
    read_frames,
    topics_for,
)
from vltseg_ros.evaluation import evaluate, scorer_for
from vltseg_ros.metrics import SegmentationEvaluator
from vltseg_ros.precision import PRECISIONS
from vltseg_ros.predictor import Prediction, Predictor
from vltseg_ros.report import markdown_table, monitor_report_settings, percent, write_report
from vltseg_ros.visualize import DISPLAY_SCORE_THRESHOLD, draw_overlay, palette_lut

from .datasets import DATASETS, DatasetError, build_dataset

DEFAULT_START = "2026-01-01T00:00:00Z"
DEFAULT_FPS = 10.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# (image RGB, label or None, boxes or None, box trainIds or None) of one source frame
SourceFrame = tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]


def _error(message: str) -> int:
    print(f"vltseg bag: error: {message}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------------------------------------
# Sources


# The sources check their input when called (before the bag is created) and read frames lazily.


def iter_dataset_frames(name: str, root: str, split: str) -> Iterator[SourceFrame]:
    """Frames of a dataset reader (vltseg_train.datasets.DATASETS) with its label map and boxes."""
    dataset = build_dataset(name, root, split)
    samples = (dataset[index] for index in range(len(dataset)))
    return ((s["image"], s["label"], s["boxes"], s["box_labels"]) for s in samples)


def iter_image_frames(directory: str) -> Iterator[SourceFrame]:
    """Image files of a folder in name order (no ground truth); unreadable files are skipped with a warning."""
    if not os.path.isdir(directory):
        raise BagError(f"image folder not found: {directory}")
    names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise BagError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    return _read_images(directory, names)


def _read_images(directory: str, names: list[str]) -> Iterator[SourceFrame]:
    for name in names:
        bgr = cv2.imread(os.path.join(directory, name), cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"vltseg bag: skipped {name}: not a decodable image", file=sys.stderr)
            continue
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, None, None


def open_video_frames(path: str, every: int = 1) -> tuple[Iterator[SourceFrame], Optional[float]]:
    """Every ``every``-th frame of a video file (no ground truth), and the frame rate the file declares (if any)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise BagError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS)
    return _read_video(capture, every), (fps if math.isfinite(fps) and fps > 0 else None)


def _read_video(capture: cv2.VideoCapture, every: int) -> Iterator[SourceFrame]:
    try:
        for index in itertools.count():
            ok, bgr = capture.read()
            if not ok:
                return
            if index % every == 0:
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None, None, None
    finally:
        capture.release()


def _parse_dataset(text: str) -> tuple[str, str, str]:
    """``name:root[:split]`` -> (name, root, split)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise argparse.ArgumentTypeError(f"expected NAME:ROOT[:SPLIT], got {text!r}")
    if parts[0] not in DATASETS:
        raise argparse.ArgumentTypeError(f"unknown dataset {parts[0]!r}; expected one of {sorted(DATASETS)}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else "val"


def _parse_start(text: str) -> int:
    """``now`` or an ISO 8601 time (UTC unless it names an offset) -> ns since the epoch."""
    if text == "now":
        return time.time_ns()
    try:
        # Python 3.10's fromisoformat does not accept the "Z" suffix
        when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'now' or an ISO 8601 time, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (when - epoch) // dt.timedelta(microseconds=1) * 1000


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) that must be > 0."""
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


# ----------------------------------------------------------------------------------------------------------------
# make


def _add_make_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=_parse_dataset, metavar="NAME:ROOT[:SPLIT]",
                        help="dataset reader (cityscapes, gta5, synthia, mapillary, bdd100k, acdc), root and split "
                             "(default val); writes images, label masks and boxes")
    source.add_argument("--images", metavar="DIR", help="a folder of images, in name order (no ground truth)")
    source.add_argument("--video", metavar="FILE", help="a video file (no ground truth)")
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap")
    parser.add_argument("--distro", choices=sorted(DISTRO_VERSIONS), default="kilted",
                        help="ROS distribution that will read the bag (humble/iron: metadata v8, else v9)")
    parser.add_argument("--compressed", action="store_true",
                        help="JPEG CompressedImage on <namespace>/image/compressed")
    parser.add_argument("--jpeg-quality", dest="jpeg_quality", type=int, default=90)
    parser.add_argument("--namespace", default="/camera", help="camera namespace (default /camera)")
    parser.add_argument("--frame-id", dest="frame_id", help="header frame_id (default <namespace>_optical_frame)")
    parser.add_argument("--fps", type=_positive(float),
                        help=f"frame rate of the stamps (default: a video's own rate / --every, else {DEFAULT_FPS:g})")
    parser.add_argument("--start", type=_parse_start, default=DEFAULT_START,
                        help=f"stamp of the first frame: 'now' or ISO 8601 (default {DEFAULT_START})")
    parser.add_argument("--limit", type=int, default=0, help="write at most N frames")
    parser.add_argument("--every", type=_positive(int), default=1, help="video: keep every Nth frame")


def _make(args: argparse.Namespace) -> int:
    fps = args.fps
    if args.dataset:
        frames = iter_dataset_frames(*args.dataset)
    elif args.images:
        frames = iter_image_frames(args.images)
    else:
        frames, video_fps = open_video_frames(args.video, args.every)
        # stamps keep the video's own timing unless --fps says otherwise
        fps = fps or (video_fps / args.every if video_fps else None)
    fps = fps or DEFAULT_FPS
    frame_id = args.frame_id or (args.namespace.strip("/").replace("/", "_") or "camera") + "_optical_frame"
    from tqdm import tqdm

    with BagWriter(args.out, args.storage, args.distro, args.compressed, args.namespace, args.jpeg_quality) as writer:
        limited = itertools.islice(frames, args.limit or None)
        for index, (image, label, boxes, class_ids) in enumerate(tqdm(limited, desc="bag", unit="frame",
                                                                      dynamic_ncols=True, mininterval=1.0)):
            writer.write(FrameRecord(stamp_ns=args.start + round(index * 1e9 / fps), frame_id=frame_id, image=image,
                                     label=label, boxes=boxes, box_class_ids=class_ids))
    if not writer.frames:
        return _error(f"no frames written to {args.out}")
    _print_info(bag_info(args.out))
    return 0


# ----------------------------------------------------------------------------------------------------------------
# info


def _add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="bag directory (or a bare .mcap / .db3 file)")
    parser.add_argument("--json", action="store_true", help="print bag_info as JSON")


def _info(args: argparse.Namespace) -> int:
    info = bag_info(args.bag)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        _print_info(info)
    return 0


def _iso(stamp_ns: int) -> str:
    return dt.datetime.fromtimestamp(stamp_ns / 1e9, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _print_info(info: dict) -> None:
    """Human-readable bag_info."""
    version = f", metadata v{info['version']}" if info["version"] else ""
    print(f"bag       {info['path']} ({info['storage']}{version})")
    if info["message_count"]:
        print(f"time      {_iso(info['start_ns'])} .. {_iso(info['end_ns'])} ({info['duration_s']:.3f} s), "
              f"{info['message_count']} messages")
    for namespace, camera in info["cameras"].items():
        print(f"camera    {namespace}: {camera['image']} ({'compressed' if camera['compressed'] else 'raw'}), "
              f"{camera['frames']} frames, ground truth: {', '.join(camera['ground_truth']) or 'none'}")
    width = max((len(name) for name in info["topics"]), default=0)
    for name, topic in info["topics"].items():
        print(f"topic     {name:<{width}}  {topic['type']}  {topic['count']}")


# ----------------------------------------------------------------------------------------------------------------
# eval


def _add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bag", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True, help="report directory")
    parser.add_argument("--namespace", help="camera namespace (default: the bag's only camera)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 where the device runs it natively, else fp32")
    parser.add_argument("--score-threshold", dest="score_threshold", type=float, default=0.05,
                        help="drop predicted boxes below this score before scoring")
    parser.add_argument("--overlays", type=int, default=0, help="write the first N overlay frames as PNGs")
    parser.add_argument("--overlay-threshold", dest="overlay_threshold", type=float, default=DISPLAY_SCORE_THRESHOLD,
                        help=f"overlays draw boxes of at least this score (default {DISPLAY_SCORE_THRESHOLD}, the node's "
                             "display threshold; scoring uses --score-threshold)")
    parser.add_argument("--mp4", action="store_true", help="write overlays.mp4 of every frame")


def _camera_rate(bag: str, namespace: Optional[str]) -> tuple[Optional[dict], float]:
    """bag_info's entry for the camera to be read and its frame rate; (None, DEFAULT_FPS) if the bag is damaged or
    the camera ambiguous (reading the bag then reports why)."""
    try:
        info = bag_info(bag)
    except BagError:
        return None, DEFAULT_FPS
    cameras = info["cameras"]
    if namespace is None:
        camera = next(iter(cameras.values())) if len(cameras) == 1 else None
    else:
        images = (topics_for(namespace).image, topics_for(namespace, True).image)
        camera = next((c for c in cameras.values() if c["image"] in images), None)
    if camera is None or camera["frames"] < 2 or info["duration_s"] <= 0:
        return camera, DEFAULT_FPS
    return camera, (camera["frames"] - 1) / info["duration_s"]


def _finite(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


class _OverlayWriter:
    """Overlay PNGs of the first frames and an MP4 of all frames, as asked."""

    def __init__(self, out_dir: str, pngs: int, mp4: bool, fps: float, predictor: Predictor,
                 threshold: float = DISPLAY_SCORE_THRESHOLD):
        self.threshold = threshold  # boxes drawn; the AP threshold (0.05) would clutter the frames
        self.dir = os.path.join(out_dir, "overlays")
        self.pngs = pngs
        self.mp4_path = os.path.join(out_dir, "overlays.mp4") if mp4 else None
        self.fps = fps
        self.predictor = predictor
        self.lut = palette_lut(predictor.palette)
        self.video: Optional[cv2.VideoWriter] = None
        self.size: Optional[tuple[int, int]] = None
        if pngs:
            os.makedirs(self.dir, exist_ok=True)

    def add(self, index: int, frame: FrameRecord, result: Prediction) -> None:
        """Render the frame's overlay where a PNG or the MP4 wants it."""
        if index >= self.pngs and self.mp4_path is None:
            return
        shown = result.box_scores >= self.threshold
        bgr = cv2.cvtColor(draw_overlay(frame.image, "RGB", result.label_map, self.lut, result.boxes[shown],
                                        result.box_class_ids[shown], result.box_scores[shown],
                                        self.predictor.class_names), cv2.COLOR_RGB2BGR)
        if index < self.pngs:
            cv2.imwrite(os.path.join(self.dir, f"overlay_{index:06d}_{frame.stamp_ns}.png"), bgr)
        if self.mp4_path is not None:
            if self.video is None:
                self.size = (bgr.shape[1], bgr.shape[0])
                self.video = cv2.VideoWriter(self.mp4_path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
                if not self.video.isOpened():
                    raise BagError(f"cannot write {self.mp4_path} (no mp4v encoder in this OpenCV build)")
            # one video has one size; a bag may change resolution mid-way
            self.video.write(bgr if (bgr.shape[1], bgr.shape[0]) == self.size else cv2.resize(bgr, self.size))

    def close(self) -> None:
        """Finish the MP4."""
        if self.video is not None:
            self.video.release()


def _frame_line(frame: FrameRecord, result: Prediction, latency_s: float, frame_seg: SegmentationEvaluator) -> dict:
    """One frames.jsonl record: stamp, latency, box counts and, with a ground-truth label, the frame's own scores."""
    line = {"stamp_ns": frame.stamp_ns, "latency_ms": 1000 * latency_s, "pred_boxes": len(result.boxes),
            "gt_boxes": None if frame.boxes is None else len(frame.boxes), "frame_scores": result.frame_scores}
    if result.label_map is not None and frame.label is not None:
        frame_seg.reset()
        frame_seg.process(result.label_map, frame.label)
        scores = frame_seg.evaluate()
        line.update(pixel_accuracy=_finite(scores["aAcc"]), mIoU=_finite(scores["mIoU"]))
    return line


class BagEvaluation(NamedTuple):
    """What ``evaluate_bag`` wrote: the results by domain, the report's files, frames scored, and the error that
    ended the replay early (None when the whole bag was read)."""

    results: dict
    paths: list[str]
    frames: int
    error: Optional[str]


def evaluate_bag(bag: str, predictor: Predictor, out: str, namespace: Optional[str] = None, overlays: int = 0,
                 mp4: bool = False, header: Optional[dict] = None,
                 overlay_threshold: float = DISPLAY_SCORE_THRESHOLD) -> BagEvaluation:
    """Stream a bag's camera through the predictor and score it against the bag's ground truth (the shared
    ``vltseg_ros.evaluation.evaluate`` loop): frames.jsonl (written as frames are scored), results.json/.md, plots,
    and optionally overlay PNGs of the first ``overlays`` frames and an MP4. A damaged bag or Ctrl-C ends the replay
    with a report of the frames read so far (``error`` says why)."""
    camera, fps = _camera_rate(bag, namespace)
    os.makedirs(out, exist_ok=True)
    overlay_writer = _OverlayWriter(out, overlays, mp4, fps, predictor, overlay_threshold)
    frame_seg = SegmentationEvaluator(predictor.meta.model.classes)
    from tqdm import tqdm

    error: Optional[str] = None
    scorer = scorer_for(predictor)
    started = time.perf_counter()
    with open(os.path.join(out, "frames.jsonl"), "w", encoding="utf-8") as log, \
            tqdm(total=camera["frames"] if camera else None, desc="bag eval", unit="frame", dynamic_ncols=True,
                 mininterval=1.0) as bar:

        def on_frame(index: int, frame: FrameRecord, result: Prediction, latency: float) -> None:
            log.write(json.dumps(_frame_line(frame, result, latency, frame_seg)) + "\n")
            log.flush()  # a crash later still leaves every scored frame on disk
            overlay_writer.add(index, frame, result)
            bar.update()

        try:
            evaluate(predictor, enumerate(read_frames(bag, namespace)), scorer, on_frame)
        except BagError as exc:
            error = str(exc)
        except KeyboardInterrupt:  # a long replay stopped by hand still gets its report
            error = "interrupted"
        finally:
            overlay_writer.close()
    elapsed = time.perf_counter() - started
    if not scorer.images:
        return BagEvaluation({}, [], 0, error or f"no frames on the camera topic of {bag}")
    domain = os.path.basename(os.path.normpath(bag))
    results = {domain: {**scorer.result(), "frames_per_s": scorer.images / elapsed}}
    header = {**(header or {}), "bag": bag, "image_topic": camera["image"] if camera else None,
              "device": str(predictor.device), "precision": predictor.precision,
              "score_threshold": predictor.score_threshold, "complete": error is None, "error": error,
              "timing": "latency_ms: predictor wall time per frame; frames_per_s: frames / wall time of the replay "
                        "(bag read, decode, inference, scoring)"}
    header["monitor_calibration"] = (predictor.meta.monitor or {}).get("calibration")
    paths = write_report(results, out, predictor.meta.model.classes, header,
                         **monitor_report_settings(predictor.meta.monitor))
    return BagEvaluation(results, [os.path.join(out, "frames.jsonl"), *paths.values()], scorer.images, error)


def _eval(args: argparse.Namespace) -> int:
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, precision=args.precision,
                                          score_threshold=args.score_threshold)
    evaluation = evaluate_bag(args.bag, predictor, args.out, args.namespace, args.overlays, args.mp4,
                              header={"checkpoint": args.checkpoint}, overlay_threshold=args.overlay_threshold)
    if not evaluation.frames:
        return _error(evaluation.error)
    domain = next(iter(evaluation.results))
    _print_summary(domain, evaluation.results, predictor.meta.model.classes, evaluation.paths)
    if evaluation.error is not None:
        return _error(f"{evaluation.error}; the report covers the {evaluation.frames} frames read before it")
    return 0


def _print_summary(domain: str, results: dict, classes: list[str], paths: list[str]) -> None:
    """One line of headline numbers, the summary table and the report's files."""
    r = results[domain]
    seg, det = r.get("segmentation"), r.get("detection")
    print(f"{domain}: {r['images']} frames, {r['frames_per_s']:.1f} frames/s, "
          f"latency p50 {r['latency_ms']['p50']:.1f} ms"
          + (f", mIoU {percent(seg['mIoU'])}" if seg else "")
          + (f", AP {percent(det['AP'])}, AP50 {percent(det['AP50'])}" if det else "")
          + ("" if seg or det else " (no ground truth: latency only)"))
    print(markdown_table(results, classes).split("\n\n")[0])
    print(f"report: {os.path.abspath(os.path.dirname(paths[0]))} ({', '.join(os.path.basename(p) for p in paths)})")


# ----------------------------------------------------------------------------------------------------------------
# Command plumbing

def _add_play_arguments(parser: argparse.ArgumentParser) -> None:
    # rclpy lives in the node package, and every other command must work where ROS 2 is not installed (training
    # clusters, workstations): without rclpy, ``bag play`` takes any arguments and answers with the reason.
    try:
        from vltseg_ros.node.player import add_arguments as add_player_arguments
    except ImportError as exc:
        parser.add_argument("player_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(play_unavailable=f"{exc} (bag play publishes through ROS 2: install rclpy, e.g. "
                                             "requirements/ros-install.txt, or source a ROS 2 installation)")
        parser.epilog = "unavailable here: rclpy cannot be imported"
        return
    add_player_arguments(parser)


def _play(args: argparse.Namespace) -> int:
    if getattr(args, "play_unavailable", None):
        return _error(f"bag play needs rclpy: {args.play_unavailable}")
    from vltseg_ros.node.player import run as run_player

    return run_player(args)


# name -> (help, add_arguments, run)
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "make": ("write a bag from a dataset, an image folder or a video", _add_make_arguments, _make),
    "eval": ("evaluate a checkpoint on a bag offline (no DDS): JSON/Markdown/PNG report", _add_eval_arguments, _eval),
    "info": ("print a bag's storage, time range, topics and cameras", _add_info_arguments, _info),
    "play": ("publish a bag through rclpy with its recorded timing and /clock (ros2 bag play --clock)",
             _add_play_arguments, _play),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg bag`` subcommands (dest ``bag_command``)."""
    commands = parser.add_subparsers(dest="bag_command", required=True)
    for name, (summary, add, _) in SUBCOMMANDS.items():
        add(commands.add_parser(name, help=summary, description=summary))


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg bag``; bag and dataset problems print one line and return 1."""
    try:
        return SUBCOMMANDS[args.bag_command][2](args)
    except (BagError, DatasetError) as exc:
        return _error(str(exc))
