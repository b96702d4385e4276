"""The domain-shift monitor end to end without ROS: calibration into the checkpoint, frame scores in the predictor,
and the monitor's metrics and report in every evaluation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vltseg_ros.checkpoint import read_meta
from vltseg_ros.cli import main as cli
from vltseg_ros.metrics import aurc, failure_auroc, frame_miou, monitor_summary, spearman
from vltseg_ros.monitor import BASELINE_SCORE, DEFAULT_SCORE
from vltseg_ros.predictor import Predictor
from vltseg_ros.report import Scorer


@pytest.fixture(scope="module")
def calibration_root(tmp_path_factory):
    """A held-out source split of 24 frames (the calibration needs at least 20)."""
    from vltseg_ros.synth import write_split

    root = tmp_path_factory.mktemp("calib")
    write_split(str(root), "val", 24, seed=500, height=64, width=128, style="synthetic")
    return str(root)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, calibration_root):
    """A tiny seg checkpoint (whole 64x128) and its calibrated copy."""
    out = tmp_path_factory.mktemp("monitor")
    plain, calibrated = str(out / "plain.safetensors"), str(out / "calibrated.safetensors")
    assert cli(["checkpoint", "new", "--model", "eva02_tiny", "--heads", "seg", "--out", plain, "--mode", "whole",
                "--size", "64x128"]) == 0
    assert cli(["monitor", "calibrate", "--checkpoint", plain, "--data", f"cityscapes:{calibration_root}:val",
                "--out", calibrated]) == 0
    return plain, calibrated


def test_calibration_is_stored_with_its_split_and_frame_count(calibrated, calibration_root):
    plain, path = calibrated
    assert read_meta(plain).monitor is None  # --out leaves the input alone
    section = read_meta(path).monitor
    assert section["default"] == DEFAULT_SCORE
    assert section["calibration"]["frames"] == 24 and section["calibration"]["split"] == "val"
    assert section["calibration"]["dataset"] == "cityscapes" and section["calibration"]["root"] == calibration_root
    for name in (DEFAULT_SCORE, BASELINE_SCORE):
        entry = section["scores"][name]
        t = entry["thresholds"]
        assert t["error"] <= t["warn"] and (t["warn_rate"], t["error_rate"]) == (0.05, 0.01) and t["count"] == 24
        held_out = np.array(entry["distribution"]["out_of_fold_scores"])
        assert len(held_out) == 24
        # 24 frames are too few for the 90 % bound on 5 % (45 are needed): a normal tail fit, at or below the
        # lowest held-out in-domain score, and the metadata says so.
        assert (held_out < t["warn"]).sum() == 0 and "too few" in t["warn_rule"] and t["confidence"] == 0.9


def test_a_calibrated_predictor_scores_frames_and_an_uncalibrated_one_says_so(calibrated, calibration_root):
    import cv2

    plain, path = calibrated
    image = cv2.cvtColor(cv2.imread(_first_image(calibration_root)), cv2.COLOR_BGR2RGB)
    uncalibrated = Predictor.from_checkpoint(plain)
    result = uncalibrated.predict([image])[0]
    assert not uncalibrated.monitor_calibrated and result.frame_scores == {}
    assert set(result.frame_descriptors) == {DEFAULT_SCORE, BASELINE_SCORE}  # what calibration would fit
    predictor = Predictor.from_checkpoint(path)
    assert predictor.monitor_calibrated
    scores = predictor.predict([image])[0].frame_scores
    assert set(scores) == {DEFAULT_SCORE, BASELINE_SCORE} and all(np.isfinite(v) for v in scores.values())
    dark = (image * 0.15).astype(np.uint8)  # a night the model never saw
    dark_scores = predictor.predict([dark])[0].frame_scores
    thresholds = predictor.monitor_thresholds
    assert dark_scores[DEFAULT_SCORE] < thresholds[DEFAULT_SCORE]["error"] < scores[DEFAULT_SCORE]
    assert dark_scores[BASELINE_SCORE] < thresholds[BASELINE_SCORE]["error"]


def _first_image(root: str) -> str:
    import glob

    return sorted(glob.glob(f"{root}/leftImg8bit/val/*/*.png"))[0]


def test_calibration_refuses_too_few_frames(calibrated, tmp_path, synth_root, capsys):
    plain, _ = calibrated
    assert cli(["monitor", "calibrate", "--checkpoint", plain, "--data", f"cityscapes:{synth_root}:val"]) == 2
    assert "at least 20 frames" in capsys.readouterr().err
    assert read_meta(plain).monitor is None


def test_eval_reports_how_the_frame_score_tracks_accuracy(calibrated, calibration_root, synth_root, tmp_path):
    _, path = calibrated
    out = tmp_path / "report"
    assert cli(["eval", "--checkpoint", path, "--out", str(out), "--limit", "6",
                "--data", f"cityscapes:{calibration_root}:val:source", "--data", f"cityscapes:{synth_root}:val:other"]) == 0
    report = json.loads((out / "results.json").read_text())
    monitor = report["monitor"][DEFAULT_SCORE]
    assert monitor["source"] == "source" and set(monitor["domains"]) == {"source", "other"}
    assert monitor["all"]["frames"] == 10 and monitor["warn_threshold"] is not None
    assert 0.0 <= monitor["in_domain_false_alarm_rate"] <= 1.0
    assert report["monitor_calibration"]["frames"] == 24
    frames = report["results"]["source"]["frames"]
    assert len(frames["miou"]) == len(frames[f"score/{DEFAULT_SCORE}"]) == 6
    markdown = (out / "results.md").read_text()
    assert f"Monitor score `{DEFAULT_SCORE}`" in markdown and "In-domain false alarms (source)" in markdown
    for name in (DEFAULT_SCORE, BASELINE_SCORE):
        assert (out / f"risk_coverage_{name}.png").stat().st_size > 0
        assert (out / f"score_vs_miou_{name}.png").stat().st_size > 0


def test_bag_eval_reports_the_monitor_against_the_calibration_split(calibrated, synth_root, tmp_path):
    """A bag of one domain holds no source frames: failures are counted against the calibration split's mean frame
    mIoU, which calibration stored; every frames.jsonl line carries the frame's scores."""
    _, path = calibrated
    calibration = read_meta(path).monitor["calibration"]
    assert 0.0 <= calibration["mean_frame_miou"] <= 1.0
    bag, out = tmp_path / "bag", tmp_path / "report"
    assert cli(["bag", "make", "--dataset", f"cityscapes:{synth_root}:val", "--out", str(bag)]) == 0
    assert cli(["bag", "eval", "--bag", str(bag), "--checkpoint", path, "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "results.json").read_text())["monitor"][DEFAULT_SCORE]
    assert summary["source"] is None
    assert summary["failure_below_miou"] == pytest.approx(calibration["mean_frame_miou"] - 0.10)
    lines = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(set(line["frame_scores"]) == {DEFAULT_SCORE, BASELINE_SCORE} for line in lines)


def test_replay_overlays_draw_boxes_at_the_display_threshold(monkeypatch, tmp_path):
    """Overlays are for people: boxes under the node's display threshold (0.3) are not drawn, although AP is
    scored from 0.05."""
    from types import SimpleNamespace

    from vltseg_ros.prediction import Prediction
    from vltseg_train import bag_cli

    drawn = []
    monkeypatch.setattr(bag_cli, "draw_overlay", lambda image, fmt, labels, lut, boxes, *rest: drawn.append(boxes)
                        or image)
    predictor = SimpleNamespace(palette=np.zeros((19, 3), np.uint8), class_names=["road"] * 19)
    writer = bag_cli._OverlayWriter(str(tmp_path), 1, False, 10.0, predictor)
    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5]], np.float32)
    result = Prediction(None, None, boxes, np.array([13, 13]), np.array([0.06, 0.5], np.float32))
    writer.add(0, SimpleNamespace(image=np.zeros((8, 8, 3), np.uint8), stamp_ns=1), result)
    assert len(drawn) == 1 and drawn[0].tolist() == [[1, 1, 5, 5]]


def test_the_online_evaluator_scores_the_node_s_frame_scores_like_the_offline_predictor(ros, calibrated,
                                                                                        calibration_root, tmp_path):
    """A bag replayed into the node: the evaluator node reads ~/frame_score with each frame and reports the same
    frame scores (and so the same monitor table) as the predictor offline."""
    from test_replay import _replay, _start_evaluator, _start_node
    from vltseg_ros.bag import read_frames

    _, path = calibrated
    bag, out = tmp_path / "bag", tmp_path / "online"
    assert cli(["bag", "make", "--dataset", f"cityscapes:{calibration_root}:val", "--out", str(bag),
                "--limit", "4", "--fps", "10"]) == 0
    evaluator = _start_evaluator(ros, output_dir=str(out), expected_frames=4, domain_name="replay")
    node = _start_node(ros, path)
    try:
        _replay(ros, str(bag), node, evaluator)
        online = evaluator.summary()
    finally:
        node.trigger_shutdown()
        node.destroy_node()
        evaluator.destroy_node()
    predictor = Predictor.from_checkpoint(path)
    offline = [predictor.predict([f.image])[0].frame_scores[DEFAULT_SCORE] for f in read_frames(str(bag))]
    assert online["frames"][f"score/{DEFAULT_SCORE}"] == pytest.approx(offline, abs=1e-6)
    assert sum(online["monitor_decisions"].values()) == 4
    report = json.loads((out / "results.json").read_text())
    assert report["monitor"][DEFAULT_SCORE]["all"]["frames"] == 4
    lines = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert all(line["decision"] in ("in_domain", "out_of_domain", "far_out_of_domain") for line in lines)


# ----------------------------------------------------------------------------------------------------- metrics
def test_frame_miou_counts_classes_in_ground_truth_or_prediction():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 0, 1, 2], [0, 0, 1, 2]])
    # class 0: 4/4; class 1: 2/3 (one gt pixel predicted 2); class 2: 0/1 (predicted, not in gt; the ignored
    # pixel does not count)
    assert frame_miou(pred, gt, 19) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_failure_metrics_on_known_orderings():
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    mious = np.array([0.6, 0.5, 0.2, 0.1])
    assert spearman(scores, mious) == pytest.approx(1.0)
    assert failure_auroc(scores, mious < 0.3) == 1.0
    assert failure_auroc(-scores, mious < 0.3) == 0.0
    area, excess = aurc(scores, 1 - mious)
    assert excess == pytest.approx(0.0) and area == pytest.approx(np.mean(np.cumsum(1 - mious) / np.arange(1, 5)))
    assert aurc(-scores, 1 - mious)[1] > 0


def test_monitor_summary_sets_failures_from_the_source_mean():
    frames = {"source": {"score": [0.0, -0.1, -0.2], "miou": [0.5, 0.4, 0.3]},
              "fog": {"score": [-2.0, -1.0], "miou": [0.05, 0.32]}}
    summary = monitor_summary(frames, "source", warn_threshold=-0.15)
    assert summary["failure_below_miou"] == pytest.approx(0.3)
    assert summary["domains"]["fog"]["failed"] == 1 and summary["all"]["failed"] == 1
    assert summary["in_domain_false_alarm_rate"] == pytest.approx(1 / 3)
    assert summary["targets"]["frames"] == 2 and summary["all"]["frames"] == 5


def test_scorer_keeps_frame_scores_aligned_through_merges():
    gt = np.zeros((4, 4), np.int64)
    empty = np.zeros((0, 4), np.float32)

    def add(scorer, score):
        scorer.add(gt.copy(), gt, empty, np.zeros(0), np.zeros(0, np.int64), None, None, 4, 4,
                   frame_scores=score)

    a, b = Scorer(["road"]), Scorer(["road"])
    add(a, {"x": -1.0})
    add(b, {"x": -2.0, "y": 0.5})
    a.merge(b)
    frames = a.result()["frames"]
    assert frames["score/x"] == [-1.0, -2.0] and frames["score/y"] == [None, 0.5] and frames["miou"] == [1.0, 1.0]


# ------------------------------------------------------------------------------------------------------ the node
def _node(ros, checkpoint: str, **params):
    from test_node import start_node

    return start_node(ros, checkpoint, **params)


def _monitor_status(diags, topic: str):
    """The newest domain-monitor status of the camera input ``topic``, with its values, or None."""
    for array_ in reversed(list(diags)):
        for status in array_.status:
            if status.name.endswith(f"domain monitor {topic}"):
                return status, {kv.key: kv.value for kv in status.values}
    return None


def test_the_node_publishes_frame_scores_and_turns_warn_out_of_domain_per_camera(ros, calibrated,
                                                                                calibration_root):
    """Two cameras: one sees in-domain frames (OK), the other the same scenes at night (WARN or worse); every
    frame's score comes out with its input's header."""
    import cv2
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Classification

    from ros_harness import image_msg

    _, path = calibrated
    image = cv2.cvtColor(cv2.imread(_first_image(calibration_root)), cv2.COLOR_BGR2RGB)
    dark = (image * 0.15).astype(np.uint8)
    node = _node(ros, path, cameras=["day", "night"], diagnostics_period_s=0.2)
    try:
        diags = ros.record(DiagnosticArray, "/diagnostics")
        day = ros.record(Classification, "/vltseg/day/frame_score")
        night = ros.record(Classification, "/vltseg/night/frame_score")
        pubs = {"day": ros.publisher(Image, "/day/image"), "night": ros.publisher(Image, "/night/image")}
        for pub in pubs.values():
            ros.wait_matched(pub)

        def send(i):
            pubs["night"].publish(image_msg(dark, "rgb8", 10**9 + i, "night_cam"))
            return image_msg(image, "rgb8", 10**9 + i, "day_cam")

        def judged():
            d, n = _monitor_status(diags, "day/image"), _monitor_status(diags, "night/image")
            return d and n and int(d[1]["frames in window"]) >= 3 and int(n[1]["frames in window"]) >= 3 and (d, n)

        assert ros.publish_until(pubs["day"], send, judged, 120.0)
        (day_status, day_values), (night_status, night_values) = judged()
        ok, warn = int.from_bytes(DiagnosticStatus.OK, "big"), int.from_bytes(DiagnosticStatus.WARN, "big")
        assert int.from_bytes(day_status.level, "big") == ok and day_status.message == "in domain"
        assert int.from_bytes(night_status.level, "big") >= warn and "out of domain" in night_status.message
        assert day_values["calibrated"] == "true" and "warn threshold" in night_values
        assert night_values["calibration"] == "24 frames of cityscapes val"
        assert ros.wait_for(lambda: day and night)
        assert day[0].header.frame_id == "day_cam" and night[0].header.frame_id == "night_cam"
        assert day[0].results[0].class_id == "in_domain"
        assert night[0].results[0].class_id in ("out_of_domain", "far_out_of_domain")
        assert [h.class_id for h in day[0].results[1:]] == [DEFAULT_SCORE, BASELINE_SCORE]
        assert day[0].results[0].score == day[0].results[1].score > night[0].results[0].score
    finally:
        node.trigger_shutdown()
        node.destroy_node()


def test_an_uncalibrated_node_says_so(ros, calibrated):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Classification

    from ros_harness import image_msg

    plain, _ = calibrated
    node = _node(ros, plain, diagnostics_period_s=0.2)
    try:
        diags = ros.record(DiagnosticArray, "/diagnostics")
        scores = ros.record(Classification, "/vltseg/frame_score")
        pub = ros.publisher(Image, "/image")
        ros.wait_matched(pub)
        frame = np.full((64, 128, 3), 90, np.uint8)
        assert ros.publish_until(pub, lambda i: image_msg(frame, "rgb8", 10**9 + i), lambda: scores, 60.0)
        assert [h.class_id for h in scores[0].results] == ["uncalibrated"] and np.isnan(scores[0].results[0].score)
        assert ros.wait_for(lambda: _monitor_status(diags, "image"))
        status, values = _monitor_status(diags, "image")
        assert status.message.startswith("uncalibrated") and values["calibrated"] == "false"
    finally:
        node.trigger_shutdown()
        node.destroy_node()
