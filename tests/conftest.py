"""Shared fixtures: tiny random-init models and checkpoints (CPU, milliseconds per forward)."""
from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

from vltseg_ros.checkpoint import CheckpointMeta, save_checkpoint
from vltseg_ros.config import inference_preset, model_preset
from vltseg_ros.model import build_model

# The tests interrupt child processes (ros2 launch, the node, the player) as a terminal's Ctrl-C would. Run in the
# background of a non-interactive shell, this process inherits SIGINT ignored, and its children would too (an ignored
# signal stays ignored across exec): give it back its default handling.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# One intra-op thread: tests share 2 cores with DDS and executor threads, where torch's spinning worker threads
# can slow a tiny forward pass from milliseconds to seconds and make a keep-latest node drop replayed frames.
torch.set_num_threads(1)


@pytest.fixture
def ros():
    """A RosHarness (rclpy context, executor thread, helper node) for one test; imported lazily so that the tests
    that run without ROS never import rclpy."""
    from ros_harness import RosHarness

    harness = RosHarness()
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Tiny seg+det checkpoint running whole images at 64x128 (milliseconds per frame), once per module; modules
    that need another size define their own."""
    from ros_harness import write_tiny_checkpoint

    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"), 64, 128)


@pytest.fixture
def tiny_config():
    """Tiny EVA02 config with both heads."""
    return model_preset("eva02_tiny", ("seg", "det"))


@pytest.fixture
def tiny_model(tiny_config):
    """Tiny network in eval mode, seeded."""
    torch.manual_seed(0)
    return build_model(tiny_config).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_model, tiny_config):
    """Path of a saved tiny checkpoint with both heads."""
    path = str(tmp_path / "tiny.safetensors")
    meta = CheckpointMeta(model=tiny_config, inference=inference_preset("eva02_tiny"), provenance={"test": True})
    save_checkpoint(path, tiny_model, meta)
    return path


@pytest.fixture
def rng():
    """Seeded numpy generator."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A tiny synthetic dataset in the Cityscapes layout (train 8, val 4 frames at 64x128, with boxes)."""
    from vltseg_ros.synth import write_split

    root = tmp_path_factory.mktemp("synth")
    write_split(str(root), "train", 8, seed=0, height=64, width=128, style="synthetic")
    write_split(str(root), "val", 4, seed=100, height=64, width=128, style="synthetic")
    return str(root)
