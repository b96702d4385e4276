"""SIGINT (Ctrl-C) and SIGTERM at every point of each executable's life: ``vltseg_node`` while importing, loading
the checkpoint, warming up, compiling, between transitions, activating, with a frame in flight, deactivating and
cleaning up; ``vltseg_eval_node`` and ``vltseg_bag_play`` likewise. Each process is held at its point by
``HOLD_SCRIPT`` (tests/ros_harness.py), not caught there by a sleep: the point is reached, then signalled, then
(for work that ends) released once the process has taken the signal. Every case must end with status 0 within
``EXIT_S`` of the signal, with no traceback, no FATAL line and nothing left running in its process group."""
from __future__ import annotations

import os
import re
import signal
import sys

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from sensor_msgs.msg import Image

from ros_harness import (
    BEST_EFFORT, HeldProcess, RosHarness, forbidden_lines, image_msg, session_processes,
)
from vltseg_ros.bag import BagWriter, FrameRecord

SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
EXIT_S = 12.0
"""From the signal to the exit: the node gives up on held work after STOP_GRACE_S (3 s); the rest is margin for a
loaded machine (the judgement allows 20 s)."""
ACK_S = 10.0
"""How long to wait for the node's "<signal>: shutting down" line before releasing a hold anyway."""
BIN = os.path.dirname(sys.executable)


@pytest.fixture
def held(tmp_path, ros):
    """``start(point, cmd)`` -> a HeldProcess on the harness's domain; every one is killed at the end."""
    started = []

    def start(point: str, cmd: list[str], name: str = "held") -> HeldProcess:
        env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id), PYTHONUNBUFFERED="1")
        started.append(HeldProcess(tmp_path, point, cmd, env, name))
        return started[-1]

    yield start
    for process in started:
        process.close()


def node_cmd(checkpoint: str, *params: str) -> list[str]:
    args = ["-p", f"checkpoint:={checkpoint}", "-p", "device:=cpu"]
    for param in params:
        args += ["-p", param]
    return [os.path.join(BIN, "vltseg_node"), "--ros-args", *args]


def assert_stopped_cleanly(process: HeldProcess, timeout: float = EXIT_S) -> str:
    """The process exits with status 0 within ``timeout`` s of its signal, prints nothing from
    CLEAN_EXIT_FORBIDDEN and leaves no process behind in its session; returns its output."""
    code, elapsed = process.wait_exit(timeout + 30)  # long enough to see how late it ended
    out = process.output()
    assert not forbidden_lines(out), out
    assert code == 0, f"status {code}:\n{out}"
    assert elapsed < timeout, f"exited {elapsed:.1f} s after the signal:\n{out}"
    left = session_processes(process.proc.pid)
    assert not left, left  # nothing it started outlived it
    return out


def stop_and_release(process: HeldProcess, signum: int, ack: str = "shutting down") -> None:
    """Signal a held process, wait until it says it took the signal (``ack``), then release its hold."""
    process.wait_reached()
    process.send(signum)
    process.wait_output(ack, ACK_S)
    process.release()


# ------------------------------------------------------------------------------------------------ vltseg_node
@SIGNALS
def test_node_stopped_while_importing(held, checkpoint, signum):
    """Before rclpy is even imported (the old node: a KeyboardInterrupt traceback, status -2)."""
    process = held("import", node_cmd(checkpoint))
    process.wait_reached()
    process.send(signum)
    process.release()  # the hold is Python code: the signal was handled before the next check of the release file
    out = assert_stopped_cleanly(process)
    assert f"{signal.Signals(signum).name} while starting" in out


@SIGNALS
def test_node_stopped_while_loading_the_checkpoint(held, checkpoint, signum):
    process = held("loading", node_cmd(checkpoint))
    stop_and_release(process, signum)
    out = assert_stopped_cleanly(process)
    assert f"{signal.Signals(signum).name}: shutting down" in out


@SIGNALS
def test_node_stopped_during_a_warm_up_that_never_ends(held, checkpoint, signum):
    """A warm-up stuck in native code (a compile taking minutes) is left behind after the grace period (the old
    node never exited: its main thread was in the warm-up)."""
    process = held("warm-up", node_cmd(checkpoint))
    process.wait_reached()
    process.send(signum)
    out = assert_stopped_cleanly(process)
    assert "configuring transition is still running" in out and "exiting without waiting for it" in out


def test_node_stopped_during_a_real_compile(held, checkpoint, tmp_path):
    """SIGINT while torch.compile really compiles the network (minutes on a CPU): the node exits in time, and no
    compile worker outlives it."""
    process = held("compile", node_cmd(checkpoint, "compile:=true", f"compile_cache_dir:={tmp_path / 'inductor'}"))
    process.wait_reached(timeout=300)
    process.send(signal.SIGINT)
    assert_stopped_cleanly(process)


@SIGNALS
def test_node_stopped_between_configure_and_activate(held, checkpoint, signum):
    process = held("between", node_cmd(checkpoint))
    stop_and_release(process, signum)
    out = assert_stopped_cleanly(process)
    assert "active:" not in out


@SIGNALS
def test_node_stopped_while_activating(held, checkpoint, signum):
    """The signal lands as activate ends (just after "active:"). The old node: rclpy's handler shut the context
    down under the transition, "Failed to complete transition 3", "[FATAL] activate failed", status 1."""
    process = held("activate", node_cmd(checkpoint))
    stop_and_release(process, signum)
    out = assert_stopped_cleanly(process)
    assert "active:" in out and "stopped" in out


def _frames_until_reached(ros: RosHarness, process: HeldProcess) -> None:
    """Publish frames to the node (always_on) until one is in its forward pass."""
    pub = ros.publisher(Image, "/image", BEST_EFFORT)
    frame = np.zeros((60, 100, 3), np.uint8)
    reached = process.dir / f"{process.point}.reached"
    assert ros.publish_until(pub, lambda i: image_msg(frame, "rgb8", 10**9 + i), reached.exists, timeout=180), \
        process.output()


@SIGNALS
@pytest.mark.parametrize("release", ["released", "never released"])
def test_node_stopped_with_a_frame_in_flight(held, ros, checkpoint, signum, release):
    """A frame in the forward pass when the signal comes: published nowhere after the stop, no "inference failed"
    traceback from a publisher whose context is gone; a forward pass that does not end is left behind."""
    process = held("inference", node_cmd(checkpoint, "always_on:=true"))
    _frames_until_reached(ros, process)
    process.send(signum)
    if release == "released":
        process.wait_output("shutting down", ACK_S)
        process.release()
    out = assert_stopped_cleanly(process)
    assert "inference failed" not in out
    if release == "never released":
        assert "inference of a frame is still running" in out


def _change_state(ros: RosHarness, transition: int, wait: bool = True) -> None:
    """Ask the node for a lifecycle transition through its service (as ``ros2 lifecycle set`` does); with
    ``wait``, until it succeeded (a held transition never answers)."""
    client = ros.probe.create_client(ChangeState, "/vltseg/change_state")
    assert client.wait_for_service(timeout_sec=60)
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
    if wait:
        assert ros.wait_for(future.done, 60) and future.result().success


@SIGNALS
def test_node_stopped_while_deactivating(held, ros, checkpoint, signum):
    process = held("deactivate", node_cmd(checkpoint))
    assert process.wait_output("]: active: ", 180), process.output()
    _change_state(ros, Transition.TRANSITION_DEACTIVATE, wait=False)
    stop_and_release(process, signum)
    assert_stopped_cleanly(process)


@SIGNALS
def test_node_stopped_while_cleaning_up(held, ros, checkpoint, signum):
    process = held("cleanup", node_cmd(checkpoint))
    assert process.wait_output("]: active: ", 180), process.output()
    _change_state(ros, Transition.TRANSITION_DEACTIVATE)
    _change_state(ros, Transition.TRANSITION_CLEANUP, wait=False)
    stop_and_release(process, signum)
    assert_stopped_cleanly(process)


# ------------------------------------------------------------------------------------------- vltseg_eval_node
def eval_cmd(out_dir) -> list[str]:
    return [os.path.join(BIN, "vltseg_eval_node"), "--ros-args", "-p", f"output_dir:={out_dir}"]


@SIGNALS
def test_evaluator_stopped_while_importing(held, tmp_path, signum):
    process = held("import", eval_cmd(tmp_path / "report"))
    process.wait_reached()
    process.send(signum)
    process.release()
    assert_stopped_cleanly(process)


@SIGNALS
def test_evaluator_stopped_while_waiting_writes_its_report(held, tmp_path, signum):
    """Stopping is how a replay ends: the evaluator finishes its report (its summary line is the last step), then
    exits with status 0 (the old evaluator died of SIGTERM)."""
    process = held("evaluator-spin", eval_cmd(tmp_path / "report"))
    process.wait_reached()
    process.send(signum)
    out = assert_stopped_cleanly(process)
    assert "online: 0 frames scored" in out


@SIGNALS
def test_evaluator_signalled_again_while_writing_its_report(held, ros, tmp_path, signum):
    """A second signal (Ctrl-C again, ros2 launch's SIGTERM) while the final report and its plots are written
    does not cut the report short."""
    process = held("evaluator-report", eval_cmd(tmp_path / "report"))
    assert ros.wait_for(lambda: "vltseg_eval" in ros.probe.get_node_names(), 120), process.output()
    process.send(signal.SIGINT)  # the first stop: the evaluator writes its report, and is held there
    process.wait_reached()
    process.send(signum)
    process.release()
    out = assert_stopped_cleanly(process)
    assert "online: 0 frames scored" in out


# ------------------------------------------------------------------------------------------- vltseg_bag_play
@pytest.fixture(scope="module")
def long_bag(tmp_path_factory):
    """60 frames at 2 fps: 30 s of playback, far longer than any test waits."""
    path = str(tmp_path_factory.mktemp("bag") / "long")
    rng = np.random.default_rng(0)
    with BagWriter(path) as writer:
        for i in range(60):
            writer.write(FrameRecord(1_700_000_000 * 10**9 + i * 500_000_000, "camera_optical",
                                     rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)))
    return path


def play_cmd(bag: str, *args: str) -> list[str]:
    return [os.path.join(BIN, "vltseg_bag_play"), bag, *args]


@SIGNALS
def test_player_stopped_while_importing(held, long_bag, signum):
    process = held("import", play_cmd(long_bag))
    process.wait_reached()
    process.send(signum)
    process.release()
    assert_stopped_cleanly(process)


@SIGNALS
def test_player_stopped_while_waiting_for_subscribers(held, long_bag, signum):
    process = held("player-wait", play_cmd(long_bag, "--wait-for-subscribers", "1", "--wait-timeout", "600"))
    process.wait_reached()
    process.send(signum)
    out = assert_stopped_cleanly(process)
    assert re.search(r"stopped .*after 0 messages", out), out


@SIGNALS
def test_player_stopped_while_playing(held, long_bag, signum):
    process = held("player-publish", play_cmd(long_bag))
    process.wait_reached()
    process.send(signum)
    out = assert_stopped_cleanly(process)
    assert re.search(r"stopped .*after \d+ messages", out), out


@SIGNALS
def test_player_stopped_while_paused_without_clock(held, long_bag, signum):
    """Paused with no /clock to publish, the old player waited without a timeout: a signal that the kernel handed
    to a DDS thread never reached it."""
    process = held("player-wait", play_cmd(long_bag, "--start-paused", "--no-clock"))
    process.wait_reached()
    process.send(signum)
    assert_stopped_cleanly(process)
