"""Both launch files once more under Humble's launch and launch_ros (the kit's ``--distro humble``, installed by
scripts/setup.sh into .venv/humble-launch): ``ros2 launch`` runs there, the nodes it starts run with the venv's
Python through their ``#!/usr/bin/env python3`` line, as on a Humble machine with a venv."""
from __future__ import annotations


import pytest

from ros_cli import (
    HUMBLE_BIN, base_env, check_multi_camera_launch, check_replay_launch, launch_checkpoint, require_kit, run,
    sourced_env, workspace,
)

__all__ = ["launch_checkpoint", "workspace"]  # session fixtures of ros_cli


@pytest.fixture
def humble_env(workspace, tmp_path):
    """The sourced ros2_ws install; ``ros2`` is Humble's (launch 1.0.x, launch_ros 0.19.x)."""
    require_kit(HUMBLE_BIN)
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    probe = run([str(HUMBLE_BIN / "python"), "-c", "import importlib.metadata as m; "
                                                   "print(m.version('launch'), m.version('launch_ros'))"], env)
    launch, launch_ros = probe.stdout.split()
    assert launch.startswith("1.0.") and launch_ros.startswith("0.19."), probe.stdout + probe.stderr
    return env


def test_vltseg_launch_under_humble(humble_env, launch_checkpoint, tmp_path):
    check_multi_camera_launch(humble_env, tmp_path, launch_checkpoint, bin_dir=HUMBLE_BIN)


def test_replay_launch_under_humble(humble_env, launch_checkpoint, tmp_path):
    check_replay_launch(humble_env, tmp_path, launch_checkpoint, bin_dir=HUMBLE_BIN)
