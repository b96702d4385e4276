"""TrainTransform (mmseg pipeline semantics), EvalTransform and collate on small synthetic samples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vltseg_train.transforms import EvalTransform, TrainTransform, collate
from vltseg_ros.synth import MIN_BOX_SIDE


def _sample(height: int = 32, width: int = 64, boxes=((10, 4, 20, 12),), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "label": rng.integers(0, 19, (height, width), dtype=np.uint8),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "box_labels": np.arange(len(boxes), dtype=np.int64) + 11,
        "name": "frame",
    }


def _column_sample(height: int, width: int, boxes) -> dict:
    """Image whose red channel is the column index, so the crop's x origin can be read off the output."""
    sample = _sample(height, width, boxes)
    sample["image"][:, :, 0] = np.arange(width, dtype=np.uint8)
    return sample


def _geometric(crop_size, **kwargs) -> TrainTransform:
    """Only the geometric steps: no flip, no colour change."""
    return TrainTransform(crop_size, flip_prob=kwargs.pop("flip_prob", 0.0), photometric=False, **kwargs)


def test_output_shapes_and_dtypes_at_crop_size():
    out = TrainTransform((24, 40), resize=(80, 48))(_sample(), np.random.default_rng(0))
    assert out["image"].shape == (3, 24, 40) and out["image"].dtype == torch.float32
    assert out["label"].shape == (24, 40) and out["label"].dtype == torch.int64
    assert out["boxes"].dtype == torch.float32 and out["boxes"].shape[1:] == (4,)
    assert out["box_labels"].dtype == torch.int64 and len(out["box_labels"]) == len(out["boxes"])
    assert out["name"] == "frame"


def test_resize_is_exact_and_scales_boxes():
    sample = _sample()
    out = _geometric((64, 128), resize=(128, 64))(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out["boxes"], [[20, 8, 40, 24]])
    assert set(out["label"].unique().tolist()) <= set(np.unique(sample["label"]).tolist())  # nearest: no new ids


def test_padding_when_image_is_smaller_than_crop():
    sample = _sample(20, 30)
    out = _geometric((32, 40))(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"][:, :20, :30].permute(1, 2, 0).numpy(), sample["image"])
    assert (out["image"][:, 20:, :] == 0).all() and (out["image"][:, :, 30:] == 0).all()
    np.testing.assert_array_equal(out["label"][:20, :30].numpy(), sample["label"])
    assert (out["label"][20:, :] == 255).all() and (out["label"][:, 30:] == 255).all()


def test_flip_mirrors_image_label_and_boxes():
    sample = _sample()
    out = _geometric((32, 64), flip_prob=1.0)(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out["boxes"], [[44, 4, 54, 12]])
    np.testing.assert_array_equal(out["label"].numpy(), sample["label"][:, ::-1])
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), sample["image"][:, ::-1])


def test_boxes_are_cropped_clipped_and_dropped_outside_the_crop():
    wide, far_right, thin = (0, 2, 128, 30), (100, 5, 110, 25), (5, 5, 6, 25)  # thin: 1 px < MIN_BOX_SIDE
    transform = _geometric((32, 32), cat_max_ratio=1.0)
    for seed in range(20):
        out = transform(_column_sample(32, 128, (wide, far_right, thin)), np.random.default_rng(seed))
        x0 = int(out["image"][0, 0, 0])
        expected = [[0, 2, 32, 30]]
        right_x1, right_x2 = max(100 - x0, 0), min(110 - x0, 32)
        if right_x2 - right_x1 >= MIN_BOX_SIDE:
            expected.append([right_x1, 5, right_x2, 25])
        np.testing.assert_array_equal(out["boxes"], expected, err_msg=f"crop at x={x0}")
        np.testing.assert_array_equal(out["box_labels"], [11, 12][: len(expected)])


def _dominated(label: torch.Tensor, ratio: float = 0.75) -> bool:
    counts = torch.bincount(label[label != 255].flatten())
    return bool(counts.max() >= ratio * counts.sum())


def test_cat_max_ratio_rejects_crops_dominated_by_one_class():
    # Left half all road; right half a 50/50 checkerboard of two classes. A 32-wide crop is dominated by road
    # for 41 of its 97 positions, so unchecked crops are often dominated, checked ones (11 tries) almost never.
    label = np.zeros((32, 128), np.uint8)
    label[:, 64:] = 1 + (np.indices((32, 64)).sum(0) % 2)
    sample = dict(_sample(32, 128), label=label)
    seeds = range(200)
    unchecked = sum(_dominated(_geometric((32, 32), cat_max_ratio=1.0)(sample, np.random.default_rng(s))["label"])
                    for s in seeds)
    checked = sum(_dominated(_geometric((32, 32), cat_max_ratio=0.75)(sample, np.random.default_rng(s))["label"])
                  for s in seeds)
    assert unchecked > 50
    assert checked == 0


def test_cat_max_ratio_gives_up_after_retries_on_single_class_images():
    sample = dict(_sample(32, 128), label=np.zeros((32, 128), np.uint8))
    out = _geometric((32, 32))(sample, np.random.default_rng(0))
    assert out["label"].shape == (32, 32) and (out["label"] == 0).all()


def test_photometric_distortion_changes_pixels_within_0_255():
    sample = _sample(32, 32)
    sample["image"][:8] = 255  # saturated and black regions must stay in range after brightness/contrast
    sample["image"][8:16] = 0
    transform = TrainTransform((32, 32), flip_prob=0.0, cat_max_ratio=1.0)
    changed = 0
    for seed in range(20):
        image = transform(sample, np.random.default_rng(seed))["image"]
        assert image.min() >= 0 and image.max() <= 255
        changed += not torch.equal(image, torch.from_numpy(sample["image"]).permute(2, 0, 1).float())
    assert changed >= 15  # each of the 4 steps fires with p=0.5: nothing fires in 1/16 of calls


def test_without_photometric_the_image_is_untouched():
    sample = _sample(32, 32)
    out = _geometric((32, 32))(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), sample["image"])


def test_deterministic_for_a_fixed_rng():
    transform = TrainTransform((24, 24))
    a, b = (transform(_sample(), np.random.default_rng(7)) for _ in range(2))
    c = transform(_sample(), np.random.default_rng(8))
    for key in ("image", "label", "boxes", "box_labels"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["image"], c["image"])


def test_default_rng_follows_torch_seed_and_varies_between_calls():
    transform = TrainTransform((24, 24))
    torch.manual_seed(0)
    first, second = transform(_sample())["image"], transform(_sample())["image"]
    torch.manual_seed(0)
    assert torch.equal(transform(_sample())["image"], first)
    assert not torch.equal(first, second)


def test_input_sample_is_not_modified():
    sample = _sample()
    before = {k: v.copy() for k, v in sample.items() if isinstance(v, np.ndarray)}
    TrainTransform((24, 24), resize=(80, 40), flip_prob=1.0)(sample, np.random.default_rng(0))
    for key, value in before.items():
        np.testing.assert_array_equal(sample[key], value)


def test_eval_transform_keeps_geometry():
    sample = _sample()
    out = EvalTransform()(sample)
    assert out["image"].shape == (3, 32, 64) and out["image"].dtype == torch.float32
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), sample["image"])
    assert out["label"].dtype == torch.int64 and torch.equal(out["label"], torch.from_numpy(sample["label"]).long())
    np.testing.assert_array_equal(out["boxes"], sample["boxes"])


def test_collate_stacks_images_and_lists_boxes():
    transform = TrainTransform((24, 24))
    items = [transform(_sample(boxes=((0, 0, 64, 32),) * n), np.random.default_rng(n)) for n in (1, 2)]
    batch = collate(items)
    assert batch["image"].shape == (2, 3, 24, 24) and batch["label"].shape == (2, 24, 24)
    assert [len(b) for b in batch["boxes"]] == [1, 2] and [len(b) for b in batch["box_labels"]] == [1, 2]
    assert batch["name"] == ["frame", "frame"]
    with pytest.raises(ValueError, match="equally sized"):
        collate([EvalTransform()(_sample(32, 64)), EvalTransform()(_sample(32, 48))])
