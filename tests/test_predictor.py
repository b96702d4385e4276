"""Predictor contract: source-resolution outputs, explicit colour order, bad input, whole vs sliding window."""
from __future__ import annotations

import numpy as np
import pytest

from vltseg_ros.config import InferenceConfig, TTAConfig
from vltseg_ros.predictor import InputError, Predictor, fit_size, window_origins


@pytest.fixture
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint)


def _image(rng, h, w):
    # Smooth blobs rather than noise, so tiny resampling differences cannot flip many argmaxes.
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    import cv2

    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def test_outputs_at_source_resolution(predictor, rng):
    images = [_image(rng, 300, 400), _image(rng, 97, 131), _image(rng, 256, 512)]
    results = predictor.predict(images, return_confidence=True)
    assert len(results) == 3
    for image, result in zip(images, results):
        h, w = image.shape[:2]
        assert result.label_map.shape == (h, w) and result.label_map.dtype == np.uint8
        assert result.label_map.max() < len(predictor.meta.model.classes)
        assert result.confidence.shape == (h, w) and result.confidence.dtype == np.float32
        assert 0.0 <= result.confidence.min() and result.confidence.max() <= 1.0
        assert result.boxes.dtype == np.float32 and result.boxes.shape[1] == 4
        assert len(result.boxes) == len(result.box_scores) == len(result.box_class_ids)
        if len(result.boxes):
            assert (result.boxes[:, 0] >= 0).all() and (result.boxes[:, 2] <= w + 1e-3).all()
            assert (result.boxes[:, 1] >= 0).all() and (result.boxes[:, 3] <= h + 1e-3).all()
            names = {predictor.class_names[i] for i in result.box_class_ids}
            assert names <= set(predictor.meta.model.det_head.classes)


def test_detection_class_ids_share_the_segmentation_id_space(predictor):
    assert predictor.class_names[:19] == list(predictor.meta.model.classes)
    assert predictor.class_names.index("car") == 13  # the Cityscapes trainId


def test_bgr_input_equals_rgb_input(predictor, rng):
    rgb = _image(rng, 120, 200)
    a = predictor.predict([rgb], image_format="RGB")[0]
    b = predictor.predict([np.ascontiguousarray(rgb[..., ::-1])], image_format="BGR")[0]
    c = predictor.predict([rgb[..., ::-1]], image_format="BGR")[0]  # a non-contiguous view works too
    assert np.array_equal(a.label_map, b.label_map) and np.array_equal(a.label_map, c.label_map)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_batch_equals_single_images(predictor, rng):
    images = [_image(rng, 128, 256), _image(rng, 64, 90)]
    together = predictor.predict(images)
    alone = [predictor.predict([img])[0] for img in images]
    for t, a in zip(together, alone):
        assert (t.label_map == a.label_map).mean() > 0.999


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10), np.uint8), "HxWx3 uint8"),
    (np.zeros((10, 10, 4), np.uint8), "HxWx3 uint8"),
    (np.zeros((10, 10, 3), np.float32), "HxWx3 uint8"),
    (np.zeros((0, 10, 3), np.uint8), "zero size"),
    ("not an image", "HxWx3 uint8"),
])
def test_bad_input_is_rejected_and_next_input_works(predictor, rng, bad, message):
    with pytest.raises(InputError, match=message):
        predictor.predict([bad])
    good = predictor.predict([_image(rng, 64, 64)])[0]
    assert good.label_map.shape == (64, 64)


def test_unknown_colour_order(predictor, rng):
    with pytest.raises(InputError, match="image_format"):
        predictor.predict([_image(rng, 32, 32)], image_format="RGBA")


def test_sliding_window_equals_whole_image_on_one_window(tiny_checkpoint, rng):
    # fp32: "auto" may pick bf16, whose rounding differs between the two batch layouts
    whole = Predictor.from_checkpoint(
        tiny_checkpoint, precision="fp32", inference=InferenceConfig(mode="whole", size=[192, 192]))
    slide = Predictor.from_checkpoint(
        tiny_checkpoint, precision="fp32",
        inference=InferenceConfig(mode="slide", fit_size=[192, 192], window=192, stride=150))
    image = _image(rng, 192, 192)
    a = whole.predict([image], return_confidence=True)[0]
    b = slide.predict([image], return_confidence=True)[0]
    assert np.array_equal(a.label_map, b.label_map)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-6)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(a.box_scores, b.box_scores, atol=1e-6)


def test_sliding_window_covers_larger_images(tiny_checkpoint, rng):
    slide = Predictor.from_checkpoint(
        tiny_checkpoint, inference=InferenceConfig(mode="slide", fit_size=[128, 256], window=96, stride=64))
    result = slide.predict([_image(rng, 300, 700), _image(rng, 50, 60)])
    assert [r.label_map.shape for r in result] == [(300, 700), (50, 60)]


def test_window_grid_matches_mmseg():
    assert window_origins(1024, 512, 426) == [0, 426, 512]  # 3 windows on a 1024-wide image
    assert window_origins(512, 512, 426) == [0]
    assert window_origins(300, 512, 426) == [0]
    assert window_origins(2048, 1024, 768) == [0, 768, 1024]


def test_fit_size_keeps_aspect_ratio():
    assert fit_size(1024, 2048, (512, 1024)) == (512, 1024)  # Cityscapes
    assert fit_size(720, 1280, (512, 1024)) == (512, 910)  # BDD100K
    assert fit_size(1080, 1920, (540, 960)) == (540, 960)  # ACDC
    assert fit_size(3000, 4000, (512, 1024)) == (512, 683)  # a 4:3 Mapillary image


def test_fit_size_follows_mmcv_for_portrait_images():
    """mmcv's keep_ratio rule bounds the long and the short side, whatever the orientation: a portrait Mapillary
    image is not shrunk to the box's height (384x512)."""
    assert fit_size(4000, 3000, (512, 1024)) == (683, 512)
    assert fit_size(2048, 1024, (1024, 2048)) == (2048, 1024)


def test_tta_single_pass_keeps_the_labels(tiny_checkpoint, rng):
    image = _image(rng, 96, 160)
    plain = Predictor.from_checkpoint(tiny_checkpoint).predict([image])[0]
    one = Predictor.from_checkpoint(tiny_checkpoint, tta=TTAConfig(scales=[1.0])).predict([image])[0]
    assert np.array_equal(plain.label_map, one.label_map)  # a softmax keeps each pixel's argmax
    np.testing.assert_allclose(plain.boxes, one.boxes, atol=1e-4)


def test_tta_with_flip_is_mirror_symmetric(tiny_checkpoint, rng):
    """Averaging a pass and its mirrored pass gives a prediction that mirrors exactly with the input."""
    predictor = Predictor.from_checkpoint(tiny_checkpoint, tta=TTAConfig(scales=[1.0, 1.5], flip=True))
    image = _image(rng, 96, 160)
    a = predictor.predict([image], return_confidence=True)[0]
    b = predictor.predict([np.ascontiguousarray(image[:, ::-1])], return_confidence=True)[0]
    assert np.array_equal(a.label_map, b.label_map[:, ::-1])
    np.testing.assert_allclose(a.confidence, b.confidence[:, ::-1], atol=1e-6)
    mirrored = b.boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], np.float32) + np.array([160, 0, 160, 0])
    order_a, order_b = np.lexsort(a.boxes.T), np.lexsort(mirrored.T)
    np.testing.assert_allclose(a.boxes[order_a], mirrored[order_b], atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_close_to_fp32(tiny_checkpoint, rng, precision):
    image = _image(rng, 128, 256)
    ref = Predictor.from_checkpoint(tiny_checkpoint).predict([image], return_confidence=True)[0]
    low = Predictor.from_checkpoint(tiny_checkpoint, precision=precision).predict([image], return_confidence=True)[0]
    assert (ref.label_map == low.label_map).mean() > 0.9
    assert low.confidence.dtype == np.float32


def test_score_threshold_filters_boxes(tiny_checkpoint, rng):
    image = _image(rng, 128, 256)
    everything = Predictor.from_checkpoint(tiny_checkpoint).predict([image])[0]
    assert len(everything.box_scores), "the random tiny detector should propose boxes above its 0.05 floor"
    cut = float(np.median(everything.box_scores))
    kept = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=cut).predict([image])[0]
    assert len(kept.box_scores) == int((everything.box_scores >= cut).sum())
    assert (kept.box_scores >= cut).all()


def test_seg_only_and_det_only_checkpoints(tmp_path, rng):
    from vltseg_ros.checkpoint import CheckpointMeta, save_checkpoint
    from vltseg_ros.config import inference_preset, model_preset
    from vltseg_ros.model import build_model

    for heads in (("seg",), ("det",)):
        cfg = model_preset("eva02_tiny", heads)
        path = str(tmp_path / f"{heads[0]}.safetensors")
        save_checkpoint(path, build_model(cfg), CheckpointMeta(model=cfg, inference=inference_preset("eva02_tiny")))
        result = Predictor.from_checkpoint(path).predict([_image(rng, 64, 80)])[0]
        assert (result.label_map is not None) == (heads == ("seg",))
        if heads == ("seg",):
            assert len(result.boxes) == 0


def test_unknown_precision(tiny_checkpoint):
    with pytest.raises(ValueError, match="precision"):
        Predictor.from_checkpoint(tiny_checkpoint, precision="int4")



def test_tensor_input_equals_numpy_input(predictor, rng):
    """Frames already decoded into torch memory (nvJPEG on CUDA) give the same result as numpy frames."""
    import torch

    image = _image(rng, 90, 160)
    a = predictor.predict([image])[0]
    b = predictor.predict([torch.from_numpy(image)])[0]
    assert np.array_equal(a.label_map, b.label_map)
    np.testing.assert_allclose(a.boxes, b.boxes)
    with pytest.raises(InputError, match="HxWx3 uint8"):
        predictor.predict([torch.zeros(10, 10, 3, dtype=torch.float32)])


@pytest.mark.slow
def test_compiled_predictor_matches_eager_and_caches_kernels(tiny_checkpoint, rng, tmp_path):
    image = _image(rng, 64, 128)
    inference = InferenceConfig(mode="whole", size=[64, 128])
    eager = Predictor.from_checkpoint(tiny_checkpoint, inference=inference).predict([image])[0]
    cache = tmp_path / "inductor"
    compiled = Predictor.from_checkpoint(tiny_checkpoint, inference=inference, compile=True,
                                         compile_cache_dir=str(cache)).predict([image])[0]
    assert (eager.label_map == compiled.label_map).mean() > 0.999
    assert any(cache.rglob("*")), "the compile cache directory stayed empty"


def test_cuda_graph_mode_copies_outputs_before_the_next_batch(tiny_checkpoint, rng):
    """With CUDA graphs a replay overwrites the previous outputs; the predictor holds several batches' results
    (max_batch chunks, sliding windows), so it copies them. The copy path must give identical results."""
    images = [_image(rng, 90, 160) for _ in range(3)]
    inference = InferenceConfig(mode="slide", size=[64, 128], fit_size=[64, 128], window=64, stride=48)
    plain = Predictor.from_checkpoint(tiny_checkpoint, inference=inference, max_batch=2)
    copied = Predictor.from_checkpoint(tiny_checkpoint, inference=inference, max_batch=2)
    copied._cuda_graphs = True
    for a, b in zip(plain.predict(images), copied.predict(images)):
        assert np.array_equal(a.label_map, b.label_map)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.box_class_ids, b.box_class_ids)


def test_cli_predict_writes_test_server_label_ids_with_tta(tiny_checkpoint, tmp_path, rng):
    import cv2

    from vltseg_ros.cli import main as cli
    from vltseg_ros.labels import CITYSCAPES_ID_TO_TRAINID

    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), _image(rng, 64, 128))
    assert cli(["predict", str(frame), "--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "train")]) == 0
    assert cli(["predict", str(frame), "--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "server"),
                "--label-ids", "cityscapes", "--tta-scales", "1,1.25", "--tta-flip"]) == 0
    train_ids = cv2.imread(str(tmp_path / "train" / "frame_labels.png"), cv2.IMREAD_UNCHANGED)
    label_ids = cv2.imread(str(tmp_path / "server" / "frame_labels.png"), cv2.IMREAD_UNCHANGED)
    assert train_ids.shape == label_ids.shape == (64, 128)
    assert set(np.unique(label_ids)) <= set(CITYSCAPES_ID_TO_TRAINID)  # labelIds, not trainIds


def test_class_filter_and_threshold_are_the_predictors(tiny_checkpoint, rng):
    """Post-processing lives in the predictor: filtered classes become unlabeled and lose their boxes."""
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    image = _image(rng, 128, 256)
    everything = predictor.predict([image])[0]
    assert predictor.set_class_filter(["car", "sky", "unicorn"]) == ["unicorn"]
    filtered = predictor.predict([image])[0]
    kept = {predictor.class_names.index("car"), predictor.class_names.index("sky")}
    assert set(np.unique(filtered.label_map)) <= kept | {255}
    same = np.isin(everything.label_map, list(kept))
    assert np.array_equal(filtered.label_map[same], everything.label_map[same])
    assert (filtered.label_map[~same] == 255).all()
    assert set(filtered.box_class_ids.tolist()) <= kept
    assert len(filtered.boxes) == int(np.isin(everything.box_class_ids, list(kept)).sum())
    predictor.set_class_filter([])
    predictor.set_score_threshold(1.0)
    assert np.array_equal(predictor.predict([image])[0].label_map, everything.label_map)
    assert len(predictor.predict([image])[0].boxes) == 0
    with pytest.raises(ValueError, match="score threshold"):
        predictor.set_score_threshold(1.5)
