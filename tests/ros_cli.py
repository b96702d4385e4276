"""The real ROS 2 tools for tests, as a user runs them: colcon builds of ros2_ws, ``source install/setup.bash``,
``ros2 launch`` stopped with Ctrl-C, and ``ros2`` CLI calls that retry until discovery has caught up.

The ``ros2`` command, launch and launch_testing come from the launch/CLI kit that scripts/setup.sh installs from
../shared/ros; where it is missing, the tests that need it skip with that reason.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from ros_harness import fresh_domain, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HUMBLE_BIN = VENV_BIN.parent / "humble-launch" / "bin"
KIT_MISSING = ("the ROS 2 launch/CLI kit is not installed: scripts/setup.sh installs it from ../shared/ros, which "
               "this checkout does not have")


def require_kit(bin_dir: Path = VENV_BIN) -> None:
    """Skip unless the kit's ``ros2`` (with launch) is installed in ``bin_dir``'s environment."""
    if not (bin_dir / "ros2").is_file():
        pytest.skip(KIT_MISSING)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """ros2_ws built once with a plain ``colcon build``, for the launch tests: its install/ folder."""
    require_kit()
    out = tmp_path_factory.mktemp("ros2_ws")
    colcon_build(ROOT / "ros2_ws", out)
    return out / "install"


@pytest.fixture(scope="session")
def launch_checkpoint(tmp_path_factory) -> str:
    """Tiny seg+det checkpoint running whole images at 64x128 (milliseconds per frame)."""
    return write_tiny_checkpoint(str(tmp_path_factory.mktemp("launch_ckpt") / "tiny.safetensors"), 64, 128)


def base_env(domain: Optional[int] = None, log_dir: Optional[Path] = None) -> dict[str, str]:
    """This environment, with the venv first on PATH (so ``#!/usr/bin/env python3`` scripts run the venv's Python,
    as in an activated venv), a fresh ROS domain and ROS logs in ``log_dir``."""
    env = dict(os.environ, VIRTUAL_ENV=str(VENV_BIN.parent), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
               ROS_DOMAIN_ID=str(fresh_domain() if domain is None else domain), PYTHONUNBUFFERED="1")
    if log_dir is not None:
        env["ROS_LOG_DIR"] = str(log_dir)
    for name in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH", "PYTHONPATH"):
        env.pop(name, None)
    return env


def colcon_build(workspace: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``cd <workspace> && colcon build ARGS`` on a pip-only machine (the venv is the ROS prefix, as the kit's
    README says), with build/, install/ and log/ under ``out``; fails the test with colcon's output if it fails."""
    env = base_env()
    env.update(AMENT_PREFIX_PATH=env["VIRTUAL_ENV"], CMAKE_PREFIX_PATH=env["VIRTUAL_ENV"])
    cmd = [str(VENV_BIN / "colcon"), "--log-base", str(out / "log"), "build", "--build-base", str(out / "build"),
           "--install-base", str(out / "install"), *args]
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def sourced_env(install: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` after ``source <install>/setup.bash``."""
    proc = subprocess.run(["bash", "-c", f"source {install}/setup.bash && env -0"], env=env, capture_output=True,
                          check=True)
    return dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)


def run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command; one that hangs (the kit's README: a ``ros2`` call sometimes hangs on exit after answering)
    is killed and returns what it printed."""
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(cmd, -9, out, err)


def ros2(env: dict[str, str], *args: str, until: Callable[[str], bool] = lambda out: True, attempts: int = 10,
         bin_dir: Path = VENV_BIN) -> str:
    """``ros2 ARGS`` (without the daemon) until its output satisfies ``until``; discovery can take seconds."""
    verb = args[0]
    options = ["--no-daemon", "--spin-time", "3"] if verb in ("lifecycle", "param", "node") else []
    cmd = [str(bin_dir / "ros2"), *args[:2], *options, *args[2:]]
    out = ""
    for _ in range(attempts):
        proc = run(cmd, env, timeout=25)
        out = proc.stdout + proc.stderr
        if until(out):
            return out
        time.sleep(1.0)
    raise AssertionError(f"{' '.join(cmd)} never gave the expected answer; last output:\n{out}")


class Launch:
    """``ros2 launch ARGS`` in the background, stopped with SIGINT (as Ctrl-C) by ``stop()``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, bin_dir: Path = VENV_BIN):
        self.log = log
        self._file = open(log, "w")
        self.proc = subprocess.Popen([str(bin_dir / "ros2"), "launch", *args], env=env, stdout=self._file,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        """What launch and its processes printed so far."""
        self._file.flush()
        return self.log.read_text()

    def wait_for_output(self, text: str, timeout: float = 120) -> None:
        """Until ``text`` was printed; fails with the output when the launch ended or the time is up."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc.poll() is None, f"launch ended (status {self.proc.returncode}):\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.output()}"
            time.sleep(0.3)

    def wait(self, timeout: float) -> int:
        """Until launch ends by itself; its exit status."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"launch did not end within {timeout} s:\n{self.output()}")

    def stop(self) -> int:
        """Ctrl-C: launch stops its processes and exits; if it does not within 30 s, everything is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._file.close()
        return self.proc.returncode

    def __enter__(self) -> "Launch":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def echo_once(env: dict[str, str], topics: dict[str, tuple[str, ...]], publish: Callable[[], None], out_dir: Path,
              attempts: int = 3, timeout: float = 30) -> dict[str, str]:
    """``ros2 topic echo --once TOPIC TYPE [OPTIONS]`` for each ``name -> (topic, type, *options)`` while
    ``publish()`` sends input; what each printed. Now and then two participants never discover one another (with
    LARGE_DATA often: README, section 5), so an echo without its message after ``timeout`` s is started again, as a
    fresh participant."""
    outputs = {name: out_dir / f"{name}.txt" for name in topics}
    pending = dict(topics)
    for _ in range(attempts):
        procs = {}
        for name, (topic, msg_type, *options) in pending.items():
            with open(outputs[name], "w") as out:  # a file: a pipe could fill up and block the echo
                procs[name] = subprocess.Popen([str(VENV_BIN / "ros2"), "topic", "echo", "--no-daemon", "--once",
                                                topic, msg_type, *options], env=env, stdout=out,
                                               stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
            publish()
            time.sleep(0.3)
        for name, proc in procs.items():
            if proc.poll() is None:
                proc.kill()
            if proc.wait() == 0:
                pending.pop(name)
        if not pending:
            break
    assert not pending, f"no message for {sorted(pending)}: " + "; ".join(
        outputs[name].read_text()[-500:] for name in pending)
    return {name: path.read_text() for name, path in outputs.items()}


def fake_rviz2(prefix: Path, copy_to: Path) -> Path:
    """An ament prefix with an ``rviz2`` package whose executable copies the config it is given (``-d FILE``) to
    ``copy_to`` and waits: RViz is not installable here, and this checks what the launch file hands it."""
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").touch()
    (prefix / "share" / "rviz2").mkdir(parents=True)
    exe = prefix / "lib" / "rviz2" / "rviz2"
    exe.parent.mkdir(parents=True)
    exe.write_text(f'#!/bin/sh\nwhile [ "$1" != "-d" ]; do shift; done\ncp "$2" {copy_to}\nexec sleep 600\n')
    exe.chmod(0o755)
    return prefix


# ------------------------------------------------------------------------------------------- launch scenarios
# Shared by the rolling and the Humble launch tests; ``env`` is a sourced ros2_ws install.

def check_multi_camera_launch(env: dict[str, str], tmp_path: Path, checkpoint: str,
                              bin_dir: Path = VENV_BIN) -> None:
    """Two cameras under /robot with remapped image topics, camera_info next to one and elsewhere for the other,
    an output remapped by ``remappings``, and RViz: every input reaches the node, every output comes out where
    the launch arguments say, and RViz is handed a config showing exactly those topics."""
    import numpy as np
    import yaml
    from sensor_msgs.msg import CameraInfo, Image
    from vision_msgs.msg import Detection2DArray

    from ros_harness import RosHarness, image_msg

    rviz_used = tmp_path / "rviz_used.rviz"
    prefix = fake_rviz2(tmp_path / "fake_rviz", rviz_used)
    env = dict(env, AMENT_PREFIX_PATH=f"{env['AMENT_PREFIX_PATH']}{os.pathsep}{prefix}")
    args = ["vltseg_ros", "vltseg.launch.py", f"checkpoint:={checkpoint}", "device:=cpu", "score_threshold:=0.0",
            "cameras:=[front, rear]", "namespace:=/robot", "use_camera_info:=true", "use_rviz:=true",
            "image_topics:=[/sensors/front/image_raw, /sensors/rear/image_raw]",
            "camera_info_topics:=['', /calib/rear_info]",
            "remappings:={'~/front/detections': /perception/front_boxes}"]
    sizes = {"front": (60, 100), "rear": (30, 50)}
    with Launch(args, env, tmp_path / "launch.log", bin_dir) as launch:
        launch.wait_for_output("]: active: ")
        for attempt in range(3):  # a fresh participant where discovery did not happen (see echo_once)
            ros = RosHarness(domain_id=int(env["ROS_DOMAIN_ID"]))
            try:
                masks = {cam: ros.record(Image, f"/robot/vltseg/{cam}/label_mask") for cam in sizes}
                boxes = ros.record(Detection2DArray, "/perception/front_boxes")
                images = {cam: ros.publisher(Image, f"/sensors/{cam}/image_raw") for cam in sizes}
                infos = {"front": ros.publisher(CameraInfo, "/sensors/front/camera_info"),
                         "rear": ros.publisher(CameraInfo, "/calib/rear_info")}
                # the node subscribes to each camera's image and camera_info, at the topics the arguments name
                if not ros.wait_for(lambda: all(p.get_subscription_count() for p in [*images.values(),
                                                                                      *infos.values()]), 60):
                    assert attempt < 2, f"the node did not subscribe to every input:\n{launch.output()}"
                    continue
                for cam in sizes:
                    infos[cam].publish(CameraInfo(height=sizes[cam][0], width=sizes[cam][1]))
                    frame = np.full((*sizes[cam], 3), 90, np.uint8)
                    assert ros.publish_until(images[cam],
                                             lambda i, f=frame, c=cam: image_msg(f, "rgb8", 10**9 + i, c),
                                             lambda c=cam: masks[c] and (c != "front" or boxes), timeout=120), cam
                    assert (masks[cam][0].height, masks[cam][0].width) == sizes[cam]
                    assert masks[cam][0].header.frame_id == cam
                break
            finally:
                ros.close()
        launch.wait_for_output("RViz config: ")
        assert RosHarness.wait_for(rviz_used.is_file)
    displays = yaml.safe_load(rviz_used.read_text())["Visualization Manager"]["Displays"]
    shown = {d["Name"]: d["Topic"]["Value"] for d in displays}
    expected = {}
    for cam in sizes:
        image = f"/sensors/{cam}/image_raw"
        expected.update({f"{cam}: Camera": image,
                         f"{cam}: Segmentation (colored mask)": f"/robot/vltseg/{cam}/colored_mask",
                         f"{cam}: Overlay (mask + boxes)": f"/robot/vltseg/{cam}/overlay",
                         f"{cam}: Detection markers": f"/robot/vltseg/{cam}/detection_markers"})
    assert shown == expected


def write_replay_bag(path: Path, frames: int = 4) -> Path:
    """A small bag of 48x64 frames at 10 fps with ground-truth label masks (no boxes)."""
    import numpy as np

    from vltseg_ros.bag import BagWriter, FrameRecord

    rng = np.random.default_rng(0)
    with BagWriter(str(path)) as writer:
        for i in range(frames):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            label = rng.integers(0, 19, (48, 64), dtype=np.uint8)
            writer.write(FrameRecord(1_700_000_000_000_000_000 + i * 100_000_000, "camera_optical", image, label))
    return path


def check_replay_launch(env: dict[str, str], tmp_path: Path, checkpoint: str, bin_dir: Path = VENV_BIN) -> None:
    """replay.launch.py end to end: the bag plays (with this package's player where ``ros2 bag`` is missing), the
    node scores every frame, the evaluator writes its report and the launch ends by itself."""
    import json

    frames = 4
    bag = write_replay_bag(tmp_path / "bag", frames)
    report = tmp_path / "report"
    launch = Launch(["vltseg_ros", "replay.launch.py", f"bag:={bag}", f"checkpoint:={checkpoint}", "device:=cpu",
                     f"output_dir:={report}", f"expected_frames:={frames}", "score_threshold:=0.05"],
                    env, tmp_path / "replay.log", bin_dir)
    assert launch.wait(timeout=300) == 0, launch.output()
    output = launch.output()
    assert f"replaying {bag} with vltseg" in output, output
    summary = json.loads((report / "results.json").read_text())["results"]["online"]
    assert (summary["matched"], summary["unmatched_gt"]) == (frames, 0), output
    assert 0.0 <= summary["segmentation"]["mIoU"] <= 1.0
    assert (report / "frames.jsonl").read_text().count("\n") == frames
