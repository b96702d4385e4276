"""End-to-end demo on a fresh machine, CPU only, no downloads: data -> training -> bag -> ROS 2 replay -> report.

    vltseg demo                     # at most about 10 minutes on 2 cores, AVX2 or better
    vltseg demo --quick             # tiny sizes, about 2 minutes (what CI runs)

1. renders the synthetic domain-shift benchmark (flat-shaded source style; textured target style in clear, fog,
   night, rain and snow);
2. trains the tiny EVA02 VLTSeg+VLTDet model on the source style and writes a checkpoint. The iteration count
   fits a time budget: a 4-iteration calibration run measures this machine's step time first;
3. writes a replay bag (MCAP) of target-style frames with ground truth;
4. starts the real ROS 2 node on the checkpoint, plays the bag into it through DDS with /clock, and scores the
   node's outputs online with the evaluator node;
5. meanwhile, on the other core, scores the checkpoint on every domain (the domain gap); then an offline replay
   of the bag with overlay frames and an MP4;
6. prints a table and the report folder.

SIGINT or SIGTERM (Ctrl-C, a CI job's timeout) stops the demo at any step: the processes it started (the ROS 2
replay's node, evaluator and player, the background renderer) are stopped and reaped, and it exits with status
128 + the signal number (130, 143) and one line instead of a traceback.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing import get_context
from statistics import median_high
from typing import Any, Callable, Iterator, Optional

import cv2
import torch

from vltseg_ros import monitor, synth
from vltseg_ros.bag import BagWriter, FrameRecord
from vltseg_ros.checkpoint import load_checkpoint
from vltseg_ros.precision import PRECISIONS, describe_device, device_line, resolve_precision
from vltseg_ros.predictor import Predictor
from vltseg_ros.report import monitor_report_settings, percent, write_report

from . import bag_cli
from .config import config_from_dict
from .datasets import build_dataset
from .evaluate import evaluate_dataset
from .monitor_cli import MIN_FRAMES, calibrate_checkpoint
from .train import Trainer

SCORE_THRESHOLD = 0.05  # boxes the node publishes and the offline replay scores (AP needs the low-score tail)
TARGETS = tuple(f"target_{c}" for c in synth.CONDITIONS)
START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class DemoSize:
    """How big each step is. With a ``budget_s``, training runs as many iterations as fit in what is left of the
    budget after rendering and ``reserve_s`` (the steps after training), within [``min_iterations``,
    ``iterations``]; without one, exactly ``iterations``."""

    height: int
    width: int
    train_frames: int
    val_frames: int
    iterations: int
    batch: int
    crop: int
    bag_frames_per_domain: int
    bag_fps: float
    budget_s: Optional[float] = None
    reserve_s: float = 0.0
    min_iterations: int = 1
    # The domain-shift monitor's held-out source split (at least MIN_FRAMES). 100 frames let the warning threshold
    # hold the 5 % false-alarm rate with 90 % confidence (monitor.alarm_thresholds). With the 40 used before, a new
    # in-domain split saw 10-22 % false alarms (bench/RESULTS.md).
    calibration_frames: int = 100


# Batch 2: on a random-init model more, smaller steps in the same time learned more: batch 4 beat batch 8, and
# batch 2 beat batch 4 (a batch-2 step takes under half the time of a batch-4 one on one CPU thread). reserve_s
# covers the monitor's calibration (100 frames, about 20 s), the bag, the ROS 2 replay with the offline scoring
# beside it, and the offline replay (55 s on an idle machine, 70 s beside the test suite). The 570 s budget leaves
# 30 s or more of the promised 10 minutes; source mIoU gains about 1 point per 100 iterations at this scale
# (bench/RESULTS.md), so the budget goes to training.
FULL = DemoSize(256, 512, 300, 40, 1800, 2, 256, 8, 2.0, budget_s=570.0, reserve_s=90.0, min_iterations=300)
QUICK = DemoSize(64, 128, 24, 4, 30, 4, 64, 2, 4.0, calibration_frames=MIN_FRAMES)
MONITOR_SPLIT = "calib"
"""The source style's split that calibrates the domain-shift monitor: rendered from seeds no other split uses."""
MONITOR_SEED = 100_000
CALIBRATION_ITERATIONS = 4
# The demo's network: the tiny EVA02 preset with an 8-px patch (people and poles are narrower than one 16-px patch
# at 256x512; the pyramid scales keep the heads' strides at 4-32) and a lighter Mask2Former (2 decoder layers,
# 1 pixel-decoder layer). In the same 330 s of training, source mIoU / AP50 went from 29.3 / 12.0 (preset) to
# 30.1 / 17.3 (8-px patch) and 31.9 / 24.8 (both), and quality keeps rising with iterations (bench/RESULTS.md).
MODEL_OVERRIDES = {
    "encoder": {"patch_size": 8},
    "pyramid": {"scales": [2.0, 1.0, 0.5, 0.25]},
    "seg_head": {"decoder_layers": 2, "pixel_decoder_layers": 1},
}
# One thread: the other core renders the val splits and runs the loader (see plan_training).
TRAIN_THREADS = 1


def _train_config(data: str, out: str, size: DemoSize, workers: int, precision: str) -> dict:
    domains = [("source", "source")] + [(t, t.replace("_", "-")) for t in TARGETS]
    return {
        "name": "demo", "output_dir": out, "precision": precision,
        "model": {"preset": "eva02_tiny", "heads": ["seg", "det"], "overrides": copy.deepcopy(MODEL_OVERRIDES)},
        "data": {
            "train": {"name": "cityscapes", "root": os.path.join(data, "source"), "split": "train"},
            "val": [{"name": "cityscapes", "root": os.path.join(data, d), "split": "val", "label": label}
                    for d, label in domains],
            "crop_size": [size.crop, size.crop], "workers": workers,
        },
        # A random-init tiny encoder needs a larger lr than the paper's fine-tuning recipe (see synth_tiny.yaml).
        "optim": {"lr": 1e-3, "encoder_lr_mult": 1.0, "grad_clip": 1.0, "poly_begin": 0},
        "schedule": {"iterations": size.iterations, "batch_size": size.batch,
                     "checkpoint_interval": max(1, size.iterations // 4), "eval_interval": 0,
                     "log_interval": 10, "image_log_interval": max(1, size.iterations // 4)},
        "inference": {"mode": "whole", "size": [size.height, size.width], "fit_size": [size.height, size.width],
                      "window": size.height, "stride": size.height},
    }


def plan_training(cfg: dict, size: DemoSize, started: float) -> dict:
    """Threads and iteration count for ``size`` on this machine, and sets torch's intra-op threads to them.

    Training runs on ``TRAIN_THREADS`` (one) intra-op thread: the loader process and the background rendering of
    the val splits hold the other core of a 2-core machine, where two spinning OpenMP threads were 5-12x slower
    than one (bench/RESULTS.md, the demo-quality runs). A throwaway run of ``CALIBRATION_ITERATIONS`` iterations of
    the demo's own training config (``cfg``) measures the step time; training gets what is left of the budget
    (counted from ``started``, a ``perf_counter`` time) after ``reserve_s``. Returns ``iterations``, ``threads``, ``step_s``
    (None without a budget) and ``train_budget_s``."""
    if size.budget_s is None:
        return {"iterations": size.iterations, "threads": torch.get_num_threads(), "step_s": None,
                "train_budget_s": None}
    step_s = _calibration_step_s(cfg, TRAIN_THREADS)
    budget = size.budget_s - (time.perf_counter() - started) - size.reserve_s
    iterations = min(size.iterations, max(size.min_iterations, int(budget / step_s)))
    return {"iterations": iterations, "threads": TRAIN_THREADS, "step_s": step_s, "train_budget_s": budget,
            "calibration_s": {str(TRAIN_THREADS): step_s}}


class ThreadGovernor:
    """A trainer step hook that tries a second intra-op thread once ``ready()`` (the background rendering has
    ended) and keeps it only if steps get faster.

    On an otherwise idle 2-core machine a second thread makes a batch-2 step about 1.3x faster; on a loaded one
    two spinning OpenMP threads were 5-12x slower than one (bench/RESULTS.md). So the governor measures instead of
    guessing: the median of ``window`` steps on one thread after the rendering has ended (steps beside it are
    slower and would flatter two threads) against the median of ``window`` steps on two, and it keeps two only when
    they are at least ``gain`` times faster. It tries once."""

    def __init__(self, ready: Callable[[], bool], threads: int = 2, window: int = 10, gain: float = 1.1):
        self.ready, self.threads, self.window, self.gain = ready, threads, window, gain
        self.state = "waiting"  # -> "measuring" -> "trying" -> "kept" | "reverted"
        self.base_threads = torch.get_num_threads()
        self.started_at = 0
        self.step_s: dict[int, float] = {}

    def __call__(self, trainer: Trainer) -> None:
        times = trainer.step_times
        if self.state == "waiting" and self.ready():
            self.state, self.started_at = "measuring", len(times)
        elif self.state == "measuring" and len(times) >= self.started_at + self.window:
            self.base_threads = torch.get_num_threads()
            self.step_s[self.base_threads] = median_high(times[self.started_at:])
            torch.set_num_threads(self.threads)
            self.state, self.started_at = "trying", len(times)
        elif self.state == "trying" and len(times) >= self.started_at + self.window + 1:
            # the first step on the new thread count is left out (it starts the OpenMP pool)
            self.step_s[self.threads] = median_high(times[self.started_at + 1:])
            if self.step_s[self.threads] * self.gain <= self.step_s[self.base_threads]:
                self.state = "kept"
            else:
                torch.set_num_threads(self.base_threads)
                self.state = "reverted"

    def summary(self) -> str:
        """One line for the demo's log."""
        measured = ", ".join(f"{s:.2f} s/iteration on {t} thread(s)" for t, s in sorted(self.step_s.items()))
        if self.state in ("kept", "reverted"):
            return f"threads after the background rendering: {measured} -> {self.kept_threads}"
        return "threads: training ended before a second thread was tried"

    @property
    def kept_threads(self) -> int:
        """The thread count training ended on."""
        return self.threads if self.state in ("trying", "kept") else self.base_threads


def _calibration_step_s(cfg: dict, threads: int) -> float:
    """Seconds per iteration of ``cfg`` on ``threads`` intra-op threads.

    The median of the steps after the first: the first waits for the loader process to start and for the first
    batch. Counted in, 3 iterations of batch 2 under AVX2 emulation read 2.23 s per step against ~1 s in the
    training that followed. Without per-step times (a stand-in trainer) the wall time of the whole run counts."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        schedule = {**cfg["schedule"], "iterations": CALIBRATION_ITERATIONS,
                    "checkpoint_interval": CALIBRATION_ITERATIONS}
        trainer = Trainer(config_from_dict({**cfg, "output_dir": tmp, "schedule": schedule}), device="cpu",
                          resume=None, progress=False)
        timed = time.perf_counter()
        trainer.train()
        steps = getattr(trainer, "step_times", [])[1:]
        if steps:
            return median_high(steps)
        return (time.perf_counter() - timed) / CALIBRATION_ITERATIONS


def _render_evaluation_splits(data: str, benchmark: dict, calibration_frames: int) -> None:
    """The val splits of every domain, then the monitor's held-out source split (one background task, so that the
    thread governor's "rendering ended" covers both)."""
    synth.write_benchmark(data, **benchmark, splits=("val",))
    synth.write_split(os.path.join(data, "source"), MONITOR_SPLIT, calibration_frames, MONITOR_SEED,
                      benchmark["height"], benchmark["width"], "synthetic")


def monitor_levels_by_domain(statuses: list[dict], frames_per_domain: int, fps: float) -> dict[str, dict]:
    """The node's domain-monitor diagnostics during the replay, by the target domain whose frames the bag was
    playing (stamps are bag time): the level counts, the prevailing level (the most frequent; a tie goes to the more
    severe) and the last level of each domain's stretch. The node judges a rolling window, so a stretch's first
    statuses still weigh the previous domain's frames."""
    names = ("OK", "WARN", "ERROR")
    span_ns = frames_per_domain / fps * 1e9
    out: dict[str, dict] = {}
    for status in sorted(statuses, key=lambda s: s["stamp_ns"]):
        index = int((status["stamp_ns"] - START_NS) // span_ns)
        if not 0 <= index < len(TARGETS):
            continue
        entry = out.setdefault(TARGETS[index].replace("_", "-"), {"counts": {}, "last": None})
        level = names[min(status["level"], 2)]
        entry["counts"][level] = entry["counts"].get(level, 0) + 1
        entry["last"] = level
    for entry in out.values():
        entry["prevailing"] = max(entry["counts"], key=lambda name: (entry["counts"][name], names.index(name)))
    return out


def _timed_result(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple[float, object]:
    """(seconds, result) of ``fn(*args, **kwargs)``."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def _write_replay_bag(data: str, path: str, size: DemoSize) -> int:
    """Target-style frames of every condition, one after another, at ``bag_fps``."""
    count = 0
    with BagWriter(path, storage="mcap", namespace="/camera") as writer:
        for target in TARGETS:
            dataset = build_dataset("cityscapes", os.path.join(data, target), "val")
            for index in range(min(size.bag_frames_per_domain, len(dataset))):
                sample = dataset[index]
                writer.write(FrameRecord(
                    stamp_ns=START_NS + round(count * 1e9 / size.bag_fps), frame_id="camera_optical_frame",
                    image=sample["image"], label=sample["label"], boxes=sample["boxes"],
                    box_class_ids=sample["box_labels"]))
                count += 1
    return count


# ------------------------------------------------------------------------------------------ process handling
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during the demo, raised in its main thread (a KeyboardInterrupt, so that torch's data
    loader and ``concurrent.futures`` treat it as one)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_GRACE_S = 10.0
"""How long a stopped child process (node, evaluator, player) gets to exit after SIGINT before it is killed; they
exit within about 3 s (the evaluator writes its report first)."""


class ChildProcesses:
    """The processes the ROS 2 replay starts. ``stop()`` asks them to stop as Ctrl-C does (SIGINT: each exits with
    status 0, the evaluator after writing its report), kills what is left after ``STOP_GRACE_S`` and reaps them all;
    after ``stop_all()`` nothing more is started."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self.signum: Optional[int] = None

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen(cmd, **kwargs)``, registered; Interrupted once ``stop_all()`` has run.

        The child starts with SIGINT and SIGTERM blocked (it inherits this thread's signal mask): one sent while
        it is still starting Python stays pending until the executable has installed its handlers and unblocks
        them (launch_support.StopSignals), instead of ending it with a KeyboardInterrupt traceback."""
        with self._lock:  # stop_all() sees every process that was started, or stops this one from starting
            if self.signum is not None:
                raise Interrupted(self.signum)
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
            try:
                proc = subprocess.Popen(cmd, **kwargs)
                self._procs.append(proc)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return proc

    def check(self) -> None:
        """Interrupted if ``stop_all()`` ran: a process that ended because it was stopped did not finish its work."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @staticmethod
    def stop(procs: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
        """SIGINT to each running process, SIGKILL to those still running after ``grace_s``; all reaped."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self, signum: int = signal.SIGINT) -> None:
        """Stop every registered process (see ``stop``) and refuse to start more."""
        with self._lock:
            self.signum = signum if self.signum is None else self.signum
            procs = list(self._procs)
        self.stop(procs)

    @contextmanager
    def stopped_on_error(self) -> Iterator[None]:
        """On any exception from the block (an interrupt, a failed step), ``stop_all()`` before it propagates: the
        replay thread waits on these processes, and ``ThreadPoolExecutor``'s exit waits for that thread."""
        try:
            yield
        except BaseException as exc:
            self.stop_all(exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
            raise


def _background_init(cv2_threads: int) -> None:
    """Initializer of the background process: Ctrl-C reaches the whole process group, and the demo's main process
    stops its background work itself (``_terminated_on_error``), so the renderer ignores SIGINT rather than dying
    with a KeyboardInterrupt traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(cv2_threads)


@contextmanager
def _terminated_on_error(pool: ProcessPoolExecutor) -> Iterator[None]:
    """On any exception from the block, cancel the pool's queued work and terminate and reap its processes: the
    pool's own exit would wait for the running job (rendering takes minutes at full size)."""
    try:
        yield
    except BaseException:
        processes = list(getattr(pool, "_processes", {}).values())  # the pool has no public handle on them
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(STOP_GRACE_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        raise


def interruptible(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Optional[int], Any]:
    """``(None, fn(*args, **kwargs))``, or ``(128 + signal number, None)`` when SIGINT or SIGTERM interrupted it.

    The first signal raises Interrupted in the main thread, wherever it is; the code it unwinds stops and reaps
    the processes it started (``ChildProcesses``, ``_terminated_on_error``). Further signals are ignored so that
    this clean-up is not cut short. Call from the main thread."""
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not received:
            received.append(signum)
            raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = fn(*args, **kwargs)
        if not received:
            return None, result
        # code that takes a KeyboardInterrupt as "stop early" (a long bag replay) returned instead of raising
    except Interrupted:
        if not received:
            raise
    finally:
        if not received:  # after an interrupt the process is about to exit: a second Ctrl-C changes nothing
            for signum, old in previous.items():
                signal.signal(signum, old)
    print(f"\nvltseg demo: {signal.Signals(received[0]).name}: stopped (its processes are stopped and reaped)",
          file=sys.stderr, flush=True)
    return 128 + received[0], None


def _ros_replay(checkpoint: str, bag: str, frames: int, out: str, domain_id: int, timeout: float,
                precision: str, children: Optional[ChildProcesses] = None, monitor_window_s: float = 10.0) -> dict:
    """Node + evaluator + player in three processes over real DDS; returns the evaluator's summary. ``children``
    registers the processes, so that an interrupt in another thread can stop them (``ChildProcesses.stop_all``)."""
    children = ChildProcesses() if children is None else children
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    bindir = os.path.dirname(sys.executable)
    threshold = str(SCORE_THRESHOLD)
    started = []
    try:
        started.append(children.start(
            [os.path.join(bindir, "vltseg_node"), "--ros-args", "-p", f"checkpoint:={checkpoint}",
             "-p", "device:=cpu", "-p", f"score_threshold:={threshold}", "-p", f"precision:={precision}",
             "-p", "use_sim_time:=true", "-p", "input_qos.reliability:=reliable", "-p", "input_qos.depth:=50",
             "-p", "frame_queue:=50", "-r", "image:=/camera/image",
             # the domain monitor's window: one domain's stretch of the bag, so each domain is judged on its own
             "-p", f"diagnostics_window_s:={monitor_window_s}", "-p", "diagnostics_period_s:=0.5"],
            env=env, stdout=open(os.path.join(out, "node.log"), "w"), stderr=subprocess.STDOUT))
        evaluator = children.start(
            [os.path.join(bindir, "vltseg_eval_node"), "--ros-args", "-p", f"output_dir:={out}",
             "-p", f"expected_frames:={frames}", "-p", "exit_when_done:=true", "-p", f"score_threshold:={threshold}",
             "-p", "domain_name:=ros2-replay", "-p", "use_sim_time:=true"],
            env=env, stdout=open(os.path.join(out, "evaluator.log"), "w"), stderr=subprocess.STDOUT)
        started.append(evaluator)
        player_log = os.path.join(out, "player.log")
        player = children.start(
            # two subscribers on the image topic: the node and the evaluator (which counts input frames)
            [sys.executable, "-m", "vltseg_ros.node.player", bag, "--wait-for-subscribers", "2",
             "--wait-topic", "/camera/image", "--wait-timeout", "120", "--delay", "1.0"],
            env=env, stdout=open(player_log, "w"), stderr=subprocess.STDOUT)
        started.append(player)
        player.wait(timeout=timeout)
        children.check()
        if player.returncode != 0:
            with open(player_log, encoding="utf-8", errors="replace") as f:
                raise RuntimeError(f"bag player failed: {f.read()[-4000:]}")
        evaluator.wait(timeout=timeout)
        children.check()
    finally:
        children.stop(started[::-1])  # the player first, the node last
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        return json.load(f)


def run_demo(out: str, size: DemoSize, workers: int = 1, domain_id: int = 42, precision: str = "auto") -> dict:
    """All demo steps; returns the summary that is printed and saved as summary.json."""
    started = time.perf_counter()
    data, run_dir, report = (os.path.join(out, d) for d in ("data", "run", "report"))
    os.makedirs(report, exist_ok=True)
    timings = {}
    machine = describe_device("cpu")
    resolved = resolve_precision(precision, "cpu")  # resolved once: the node and the offline replay get the same
    print(f"precision: {precision} -> {resolved} on {device_line(machine)}", flush=True)

    t = _step("1/6 rendering the synthetic domain-shift benchmark (the source training split now; the val splits "
              "of every domain render in the background during training)")
    benchmark = dict(train=size.train_frames, val=size.val_frames, height=size.height, width=size.width, seed=0)
    synth.write_benchmark(data, **benchmark, workers=workers, progress=True, splits=("train",))
    timings["render_s"] = time.perf_counter() - t

    t = _step("2/6 training VLTSeg+VLTDet (tiny EVA02) on the synthetic source style")
    # One process renders the val splits beside training: training runs on one thread on a busy 2-core machine
    # (see plan_training), so the second core would otherwise idle for the whole training.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_background_init,
                             initargs=(1,)) as background, _terminated_on_error(background):
        rendering = background.submit(_timed_result, _render_evaluation_splits, data, benchmark,
                                      size.calibration_frames)
        plan = plan_training(_train_config(data, run_dir, size, min(workers, 1), resolved), size, started)
        if plan["step_s"] is not None:
            measured = ", ".join(f"{v:.2f} on {t} thread(s)" for t, v in plan["calibration_s"].items())
            print(f"calibration: s/iteration with {measured}; {plan['train_budget_s']:.0f} s of the "
                  f"{size.budget_s:.0f} s budget left for training -> {plan['iterations']} iterations on "
                  f"{plan['threads']} thread(s)", flush=True)
        most = size.iterations
        size = replace(size, iterations=plan["iterations"])
        cfg = config_from_dict(_train_config(data, run_dir, size, min(workers, 1), resolved))
        trainer = Trainer(cfg, device="cpu", resume=None, progress=True)
        governor = None
        if size.budget_s is not None:
            # Re-sized while it runs: the calibration ran beside the val rendering, which ends early in training.
            trainer.deadline = (started + size.budget_s - size.reserve_s, size.min_iterations, most)
            if (os.cpu_count() or 1) > TRAIN_THREADS:
                governor = ThreadGovernor(rendering.done, threads=min(2, os.cpu_count() or 1))
                trainer.step_hooks.append(governor)
        summary = trainer.train()
        torch.set_num_threads(TRAIN_THREADS)
        plan["iterations_run"] = summary["iteration"]
        if governor is not None:
            print(governor.summary(), flush=True)
            plan["threads_s_per_iteration"] = {str(t): s for t, s in governor.step_s.items()}
            plan["threads_after_rendering"] = governor.kept_threads
        checkpoint = summary["final"]
        timings["render_val_s"], _ = rendering.result()
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    calibration = calibrate_checkpoint(checkpoint, "cityscapes", os.path.join(data, "source"), MONITOR_SPLIT,
                                       device="cpu", precision=resolved)
    timings["monitor_calibration_s"] = time.perf_counter() - t
    thresholds = calibration["scores"][monitor.DEFAULT_SCORE]["thresholds"]
    print(f"domain-shift monitor calibrated on {calibration['calibration']['frames']} held-out source frames: "
          f"warning below {thresholds['warn']:.3f}, error below {thresholds['error']:.3f}", flush=True)

    t = _step("3/6 writing a replay bag of target-style frames")
    bag = os.path.join(out, "replay_bag")
    frames = _write_replay_bag(data, bag, size)
    timings["bag_s"] = time.perf_counter() - t

    # The ROS 2 replay is paced by the bag and its node runs on one core; scoring every domain offline runs on the
    # other core meanwhile (sequentially the two took 48 + 30 s of the budget).
    t = _step("4/6 replaying the bag into the ROS 2 node through DDS (node + evaluator + player), and 5/6 scoring "
              "every domain offline beside it")
    online_dir = os.path.join(report, "ros2_replay")
    os.makedirs(online_dir, exist_ok=True)
    children = ChildProcesses()
    with ThreadPoolExecutor(max_workers=1) as replay_thread, children.stopped_on_error():
        replay = replay_thread.submit(_timed_result, _ros_replay, checkpoint, bag, frames, online_dir, domain_id,
                                      timeout=max(300.0, frames * 10.0), precision=resolved, children=children,
                                      monitor_window_s=size.bag_frames_per_domain / size.bag_fps)
        model, meta = load_checkpoint(checkpoint)
        domains = {}
        for spec in cfg.data.val:
            domains[spec.title] = evaluate_dataset(model, meta, build_dataset(spec.name, spec.root, spec.split),
                                                   "cpu", resolved)
        paths = write_report(domains, os.path.join(report, "domains"), meta.model.classes, {"checkpoint": checkpoint},
                             monitor_source="source", **monitor_report_settings(meta.monitor))
        timings["eval_s"] = time.perf_counter() - t
        timings["replay_s"], online = replay.result()
    timings["replay_and_eval_s"] = time.perf_counter() - t

    t = _step("6/6 offline replay of the same bag (overlay frames and MP4)")
    predictor = Predictor(model, meta, device="cpu", precision=resolved, score_threshold=SCORE_THRESHOLD)
    offline = bag_cli.evaluate_bag(bag, predictor, os.path.join(report, "offline_replay"), overlays=8, mp4=True,
                                   header={"checkpoint": checkpoint})
    if offline.error is not None:
        raise RuntimeError(f"offline bag replay failed: {offline.error}")
    timings["offline_replay_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started

    with open(paths["json"], encoding="utf-8") as f:
        monitor_summary = json.load(f).get("monitor", {})
    levels = monitor_levels_by_domain(_read_jsonl(os.path.join(online_dir, "monitor_diagnostics.jsonl")),
                                      size.bag_frames_per_domain, size.bag_fps)
    result = {"checkpoint": checkpoint, "report": report, "domains": domains, "online": online,
              "monitor": monitor_summary, "node_monitor_levels": levels,
              "bag_fps": size.bag_fps, "timings": timings, "precision": resolved, "machine": machine,
              "training": plan}
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def print_summary(result: dict) -> None:
    """The table the demo ends with."""
    print("\n| domain | mIoU | AP50 |")
    print("|---|---|---|")
    for name, r in result["domains"].items():
        seg, det = r.get("segmentation"), r.get("detection")
        print(f"| {name} | {percent(seg['mIoU']) if seg else '-'} | {percent(det['AP50']) if det else '-'} |")
    online = result["online"]
    for name, r in online["results"].items():
        seg, det = r.get("segmentation"), r.get("detection")
        latency = r.get("latency_ms") or {}
        fps = r.get("frames_per_s")
        print(f"\nROS 2 replay ({name}, {r['images']} of {r.get('input_frames')} frames scored through "
              f"vltseg_node): mIoU {percent(seg['mIoU']) if seg else '-'}, AP50 {percent(det['AP50']) if det else '-'}, "
              f"node output {fps or float('nan'):.2f} frames/s (bag played at {result['bag_fps']:g} frames/s), latency p50 {latency.get('p50', float('nan')):.0f} ms / "
              f"p95 {latency.get('p95', float('nan')):.0f} ms")
    for name, summary in result.get("monitor", {}).items():
        print(f"\ndomain-shift monitor, frame score {name!r} (higher = more trustworthy):")
        print("| frames | mean score | mean frame mIoU | Spearman ρ | failure AUROC | E-AURC | below warning |")
        print("|---|---|---|---|---|---|---|")
        for label, s in [("all", summary["all"]), ("targets", summary["targets"]), *summary["domains"].items()]:
            print(f"| {label} | {_fmt(s['mean_score'], 3)} | {percent(s['mean_frame_miou'])} | {_fmt(s['spearman'])}"
                  f" | {_fmt(s.get('auroc'))} | {_fmt(s['e_aurc'], 3)} | {percent(s.get('below_warn'))} |")
        if "in_domain_false_alarm_rate" in summary:
            print(f"in-domain false alarms: {percent(summary['in_domain_false_alarm_rate'])} %")
    levels = result.get("node_monitor_levels") or {}
    if levels:
        print("node /diagnostics domain monitor during the replay: " + ", ".join(
            f"{domain} {entry['prevailing']} ({', '.join(f'{k} {v}' for k, v in sorted(entry['counts'].items()))}; "
            f"last {entry['last']})"
            for domain, entry in levels.items()))
    t, plan = result["timings"], result["training"]
    print(f"\nprecision: {result['precision']}; machine: {device_line(result['machine'])}")
    step = f", calibrated at {plan['step_s']:.2f} s/iteration" if plan["step_s"] is not None else ""
    ran = plan.get("iterations_run", plan["iterations"])
    threads = f"{plan['threads']} thread(s)"
    if "threads_after_rendering" in plan:
        measured = ", ".join(f"{s:.2f} on {t}" for t, s in sorted(plan["threads_s_per_iteration"].items()))
        threads += f", then {plan['threads_after_rendering']} after the val rendering (s/iteration {measured})"
    print(f"training: {ran} iterations on {threads} (planned {plan['iterations']}{step}, "
          f"re-sized to the budget while training)" if ran != plan["iterations"] else
          f"training: {ran} iterations on {threads}{step}")
    print(f"time: {t['total_s'] / 60:.1f} min (render {t['render_s']:.0f} s, train {t['train_s']:.0f} s with "
          f"{t['render_val_s']:.0f} s of val rendering beside it, "
          f"bag {t['bag_s']:.0f} s, ROS 2 replay {t['replay_s']:.0f} s with offline scoring {t['eval_s']:.0f} s "
          f"beside it ({t['replay_and_eval_s']:.0f} s for both), offline replay {t['offline_replay_s']:.0f} s)")
    print(f"report: {os.path.abspath(result['report'])}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vltseg demo`` options."""
    parser.add_argument("--out", default="demo_out", help="output directory (data, run, bag, report)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run, about 2 minutes)")
    parser.add_argument("--workers", type=int, default=2, help="processes for rendering")
    parser.add_argument("--domain-id", dest="domain_id", type=int, default=42, help="ROS_DOMAIN_ID for the replay")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 where this CPU runs it natively (AVX512-BF16 or AMX), else fp32")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vltseg demo``: 0, or 128 + the signal number after SIGINT/SIGTERM (see ``interruptible``)."""
    code, result = interruptible(run_demo, args.out, QUICK if args.quick else FULL, workers=args.workers,
                                 domain_id=args.domain_id, precision=args.precision)
    if code is not None:
        return code
    print_summary(result)
    return 0

