"""A ROS 2 user's path with the real tools: colcon builds of ros2_ws (plain and --symlink-install), ``ros2 run``,
``ros2 launch`` of vltseg.launch.py (one camera; several cameras under a namespace with remapped inputs and RViz),
the ros2 CLI against the launched node, replay.launch.py end to end, a launch_testing test, and both launch files
once more under Humble's launch and launch_ros. The ros2 CLI, launch and launch_testing come from the launch/CLI kit
(see ros_cli.py); colcon is in the lock."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Optional

import numpy as np
import pytest
from sensor_msgs.msg import Image

from ros_cli import (
    HUMBLE_BIN, ROOT, VENV_BIN, Launch, base_env, check_multi_camera_launch, check_replay_launch, colcon_build,
    echo_once, launch_checkpoint, require_kit, ros2, run, sourced_env, workspace, write_replay_bag,
)
from ros_harness import HOLD_SCRIPT, RosHarness, forbidden_lines, image_msg

__all__ = ["launch_checkpoint", "workspace"]  # session fixtures of ros_cli


def test_colcon_finds_both_packages_of_the_workspace():
    """ros2_ws/src holds vision_msgs and a link to this package: colcon discovers both (it follows the link, and it
    never looks inside a package folder, where ros2_ws itself lies), and --packages-skip works on them."""
    env = base_env()
    listed = subprocess.run([str(VENV_BIN / "colcon"), "list"], cwd=ROOT / "ros2_ws", env=env, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr
    packages = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()}
    assert packages == {"vision_msgs": "src/vision_msgs", "vltseg_ros": "src/vltseg_ros"}
    skipped = subprocess.run([str(VENV_BIN / "colcon"), "list", "--names-only", "--packages-skip", "vision_msgs"],
                             cwd=ROOT / "ros2_ws", env=env, capture_output=True, text=True)
    assert skipped.stdout.split() == ["vltseg_ros"]


def test_symlink_install_builds_the_workspace(tmp_path):
    """``colcon build --symlink-install``: setup.py runs from build/vltseg_ros, launch files are links to the
    sources, and the console scripts run with whichever python3 the environment puts first (a venv's)."""
    colcon_build(ROOT / "ros2_ws", tmp_path, "--symlink-install")
    install = tmp_path / "install"
    launch_file = install / "vltseg_ros" / "share" / "vltseg_ros" / "launch" / "vltseg.launch.py"
    assert launch_file.is_symlink() and launch_file.resolve() == (ROOT / "launch" / "vltseg.launch.py").resolve()
    env = sourced_env(install, base_env())
    for script in ("vltseg_node", "vltseg_eval_node", "vltseg_bag_play", "vltseg"):
        path = install / "vltseg_ros" / "lib" / "vltseg_ros" / script
        assert path.read_text().splitlines()[0] == "#!/usr/bin/env python3", script
    cli = run([str(install / "vltseg_ros" / "lib" / "vltseg_ros" / "vltseg"), "--help"], env)
    assert cli.returncode == 0 and "usage" in cli.stdout, cli.stderr
    fields = run(["python3", "-c", "import vision_msgs.msg as m; print(m.__file__); "
                                   "print(list(m.VisionInfo.get_fields_and_field_types()))"], env)
    assert str(install / "vision_msgs") in fields.stdout, fields.stdout + fields.stderr
    assert "['header', 'method', 'database_location', 'database_version']" in fields.stdout


def test_plain_build_runs_with_ros2_run(workspace, launch_checkpoint, tmp_path):
    """``source install/setup.bash`` then ``ros2 run vltseg_ros vltseg_node``: the node starts and reaches active."""
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    script = workspace / "vltseg_ros" / "lib" / "vltseg_ros" / "vltseg_node"
    assert script.read_text().splitlines()[0] == "#!/usr/bin/env python3"
    proc = subprocess.Popen([str(VENV_BIN / "ros2"), "run", "vltseg_ros", "vltseg_node", "--ros-args",
                             "-p", f"checkpoint:={launch_checkpoint}", "-p", "device:=cpu"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "]: active: " in line:
                break
        assert "]: active: " in "".join(lines), "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches ros2 run and the node, as in a terminal
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + out


def test_ros2_launch_and_the_ros2_cli(workspace, launch_checkpoint, tmp_path):
    """vltseg.launch.py with a tiny checkpoint: a published frame's outputs seen by ``ros2 topic echo``, the
    lifecycle state, and live and rejected parameter changes, all through the ros2 CLI."""
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    with Launch(["vltseg_ros", "vltseg.launch.py", f"checkpoint:={launch_checkpoint}", "device:=cpu",
                 "score_threshold:=0.0"], env, tmp_path / "launch.log") as launch:
        launch.wait_for_output("]: active: ")
        ros = RosHarness(domain_id=int(env["ROS_DOMAIN_ID"]))
        try:
            pub = ros.publisher(Image, "/image")
            frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            stamp = iter(range(1_700_000_000 * 10**9, 1_800_000_000 * 10**9))
            out = echo_once(env, {"mask": ("/vltseg/label_mask", "sensor_msgs/msg/Image", "--field", "header"),
                                  "detections": ("/vltseg/detections", "vision_msgs/msg/Detection2DArray")},
                            lambda: pub.publish(image_msg(frame, "rgb8", next(stamp), "cam_a")), tmp_path)
        finally:
            ros.close()
        assert "frame_id: cam_a" in out["mask"] and "sec: 1700000000" in out["mask"], out["mask"]
        assert "frame_id: cam_a" in out["detections"] and "class_id:" in out["detections"], out["detections"]

        assert "active [3]" in ros2(env, "lifecycle", "get", "/vltseg", until=lambda out: "active" in out)
        ros2(env, "param", "set", "/vltseg", "score_threshold", "0.5", until=lambda out: "successful" in out)
        assert "Double value is: 0.5" in ros2(env, "param", "get", "/vltseg", "score_threshold",
                                                until=lambda out: "value is" in out)
        rejected = ros2(env, "param", "set", "/vltseg", "score_threshold", "1.5", until=lambda out: "failed" in out)
        assert "Setting parameter failed" in rejected and "score_threshold" in rejected and "1.5" in rejected


def test_ros2_launch_several_cameras_in_a_namespace(workspace, launch_checkpoint, tmp_path):
    check_multi_camera_launch(sourced_env(workspace, base_env(log_dir=tmp_path)), tmp_path, launch_checkpoint)


def test_replay_launch_scores_a_bag(workspace, launch_checkpoint, tmp_path):
    check_replay_launch(sourced_env(workspace, base_env(log_dir=tmp_path)), tmp_path, launch_checkpoint)


def test_launch_file_runs_under_launch_testing(workspace, launch_checkpoint, tmp_path):
    """The launch_testing proof-of-life test (tests/launch_files/vltseg_proof_of_life.py) under ``launch_test``."""
    if not (VENV_BIN / "launch_test").is_file():
        pytest.skip("launch_testing is not installed (the kit's launch_testing needs its rolling launch)")
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    test_file = ROOT / "tests" / "launch_files" / "vltseg_proof_of_life.py"
    proc = run([str(VENV_BIN / "launch_test"), str(test_file), f"checkpoint:={launch_checkpoint}"], env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "test_an_image_gives_a_label_mask" in out and "Ran 2 tests" in out and "OK" in out, out
    assert "Ran 1 test" in out  # the post-shutdown exit-code check


# ---------------------------------------------------------------------------------------------- Ctrl-C to launch
def _held_launch(tmp_path, point: str, args: list[str], env: dict[str, str]) -> tuple[Launch, object]:
    """``ros2 launch ARGS`` with every process it starts held at ``point`` (tests/ros_harness.py HOLD_SCRIPT, as
    ``--launch-prefix``); the launch and the hold folder."""
    hold, hold_dir = tmp_path / "hold.py", tmp_path / "hold"
    hold.write_text(HOLD_SCRIPT)
    hold_dir.mkdir()
    launch = Launch(["--launch-prefix", f"{sys.executable} {hold} {point} {hold_dir}", *args], env,
                    tmp_path / "launch.log")
    return launch, hold_dir


def _wait_reached(launch: Launch, path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert launch.proc.poll() is None and time.monotonic() < deadline, launch.output()
        time.sleep(0.05)


def _ctrl_c(launch: Launch, limit_s: float = 20.0, sent_at: Optional[float] = None) -> str:
    """SIGINT to ``ros2 launch`` (``kill -INT``; sent at ``sent_at`` already, if given): it exits with status 0
    within ``limit_s``, every process it started finished cleanly inside launch's 5 s before SIGTERM, and nothing
    printed a traceback or FATAL line."""
    started = time.monotonic() if sent_at is None else sent_at
    code = launch.stop()
    elapsed = time.monotonic() - started
    out = launch.log.read_text()
    assert not forbidden_lines(out), out
    assert code == 0 and elapsed < limit_s, f"status {code} after {elapsed:.1f} s:\n{out}"
    assert "process has died" not in out and "process has finished cleanly" in out, out
    return out


def test_ctrl_c_to_launch_while_the_node_warms_up_forever(workspace, launch_checkpoint, tmp_path):
    """The node's warm-up never ends (a compile, in native code): launch's SIGINT still ends it in time (the old
    node ignored it until SIGTERM and SIGKILL)."""
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    launch, hold_dir = _held_launch(tmp_path, "warm-up", ["vltseg_ros", "vltseg.launch.py",
                                                          f"checkpoint:={launch_checkpoint}", "device:=cpu"], env)
    _wait_reached(launch, hold_dir / "warm-up.reached")
    _ctrl_c(launch)


def test_ctrl_c_to_launch_as_the_node_activates(workspace, launch_checkpoint, tmp_path):
    """Ctrl-C just as activate ends (after "active:"): the old node failed the transition and exited with 1."""
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    launch, hold_dir = _held_launch(tmp_path, "activate", ["vltseg_ros", "vltseg.launch.py",
                                                           f"checkpoint:={launch_checkpoint}", "device:=cpu"], env)
    _wait_reached(launch, hold_dir / "activate.reached")
    launch.proc.send_signal(signal.SIGINT)
    sent_at = time.monotonic()
    launch.wait_for_output("SIGINT: shutting down", timeout=30)
    (hold_dir / "activate.release").touch()
    _ctrl_c(launch, sent_at=sent_at)


SITE_HOLD = """
import os
import sys
import time

# Held in the node's interpreter start-up (site), before any of the package's code: Python code, where a
# KeyboardInterrupt goes through.
if len(sys.orig_argv) > 1 and os.path.basename(sys.orig_argv[1]) == "vltseg_node":
    open(os.path.join(HOLD_DIR, "startup.reached"), "w").close()
    while not os.path.exists(os.path.join(HOLD_DIR, "startup.release")):
        time.sleep(0.01)
"""


def test_ctrl_c_to_launch_while_the_node_starts_python(workspace, launch_checkpoint, tmp_path):
    """launch passes a Ctrl-C on to a node whose interpreter is still starting (a sitecustomize holds it there):
    started with SIGINT blocked, the node takes it once its handlers are in and exits 0 at once. Started plainly
    (as before, or with a --launch-prefix), it ended in a KeyboardInterrupt traceback with status -2."""
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITE_HOLD.replace("HOLD_DIR", repr(str(tmp_path))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    launch = Launch(["vltseg_ros", "vltseg.launch.py", f"checkpoint:={launch_checkpoint}", "device:=cpu"], env,
                    tmp_path / "launch.log")
    _wait_reached(launch, tmp_path / "startup.reached")
    launch.proc.send_signal(signal.SIGINT)
    sent_at = time.monotonic()
    launch.wait_for_output("sending signal 'SIGINT' to process[vltseg_node-1]", timeout=30)
    (tmp_path / "startup.release").touch()
    out = _ctrl_c(launch, sent_at=sent_at)
    assert "SIGINT while starting" in out, out


def test_ctrl_c_to_the_replay_launch_while_it_plays(workspace, launch_checkpoint, tmp_path):
    """replay.launch.py stopped while the bag plays: player, node and evaluator stop cleanly, and the evaluator
    writes its report of the frames scored so far."""
    env = sourced_env(workspace, base_env(log_dir=tmp_path))
    bag = write_replay_bag(tmp_path / "bag", frames=60)  # 6 s at 10 fps
    report = tmp_path / "report"
    launch, hold_dir = _held_launch(tmp_path, "player-publish", [
        "vltseg_ros", "replay.launch.py", f"bag:={bag}", f"checkpoint:={launch_checkpoint}", "device:=cpu",
        f"output_dir:={report}", "rate:=0.2"], env)  # 30 s of playback
    _wait_reached(launch, hold_dir / "player-publish.reached")
    out = _ctrl_c(launch)
    assert out.count("process has finished cleanly") == 3, out
    assert "online: " in out and " frames scored (" in out, out  # the evaluator's last step: its summary


# --------------------------------------------------------------------------------------------- Humble's launch
@pytest.fixture
def humble_env(workspace, tmp_path):
    """The sourced ros2_ws install, for Humble's ``ros2`` (launch 1.0.x, launch_ros 0.19.x from the kit's
    ``--distro humble``, in .venv/humble-launch). The nodes it starts still run with the venv's Python, through
    their ``#!/usr/bin/env python3`` line, as on a Humble machine with a venv."""
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
