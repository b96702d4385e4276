"""The shutdown judgement: ``vltseg_node`` and ``ros2 launch vltseg_ros vltseg.launch.py``, each started RUNS times
(50) with a CPU burner on every core and interrupted with SIGINT at a random moment between 0.2 and 8 s after its
start. A run passes when the process exits with status 0 within 20 s of the signal and prints no FATAL line and no
traceback.

    .venv/bin/python scripts/interrupt_soak.py                     # both targets, 50 runs each (about 15 min)
    .venv/bin/python scripts/interrupt_soak.py --target node --runs 10 --seed 3
    .venv/bin/python scripts/interrupt_soak.py --group             # Ctrl-C as a terminal sends it: to the group

The node runs a tiny random-init checkpoint (64x128, written here unless --checkpoint is given), so that the 0.2-8 s
window covers its whole life: imports, configure (load, warm-up), activate and active. ``ros2 launch`` needs the
launch/CLI kit; the package is built with a plain ``colcon build`` of ros2_ws into a temporary folder (or give
--install). Each run's output is kept in --out (run_<target>_<n>.log), with results.json and a summary. Exit status:
0 when every run passed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
BAD = re.compile(r"FATAL|Traceback")
LAUNCH_READY = "[INFO] [launch]: All log files"  # launch logs this once its signal handlers are installed


def cpu_model() -> str:
    """``lscpu``'s model name."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


class Burners:
    """One busy loop per core at normal priority, for at most ``limit_s`` (``timeout`` kills them even if this
    script is killed); ``stop()`` ends them."""

    def __init__(self, limit_s: float):
        self.procs = [subprocess.Popen(["timeout", "-s", "KILL", str(int(limit_s)), "sh", "-c", "while :; do :; done"],
                                       start_new_session=True) for _ in range(os.cpu_count() or 1)]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()


def write_checkpoint(path: str) -> str:
    """A seeded random-init tiny seg+det checkpoint running whole 64x128 images."""
    import torch

    from vltseg_ros.checkpoint import CheckpointMeta, save_checkpoint
    from vltseg_ros.config import InferenceConfig, model_preset
    from vltseg_ros.model import build_model

    torch.manual_seed(0)
    cfg = model_preset("eva02_tiny", ("seg", "det"))
    save_checkpoint(path, build_model(cfg), CheckpointMeta(
        model=cfg, inference=InferenceConfig(mode="whole", size=[64, 128], fit_size=[64, 128])))
    return path


def base_env(domain: int) -> dict[str, str]:
    """This environment with the venv first on PATH (as when it is activated) and a ROS domain of its own."""
    env = dict(os.environ, VIRTUAL_ENV=str(VENV_BIN.parent), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
               ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    for name in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH", "PYTHONPATH"):
        env.pop(name, None)
    return env


def build_workspace(out: Path, env: dict[str, str]) -> Path:
    """``colcon build`` of ros2_ws (plain, as a user builds it) into ``out``; its install folder."""
    env = dict(env, AMENT_PREFIX_PATH=env["VIRTUAL_ENV"], CMAKE_PREFIX_PATH=env["VIRTUAL_ENV"])
    cmd = [str(VENV_BIN / "colcon"), "--log-base", str(out / "log"), "build", "--build-base", str(out / "build"),
           "--install-base", str(out / "install")]
    proc = subprocess.run(cmd, cwd=ROOT / "ros2_ws", env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"colcon build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return out / "install"


def sourced(install: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` after ``source <install>/setup.bash``."""
    proc = subprocess.run(["bash", "-c", f"source {install}/setup.bash && env -0"], env=env, capture_output=True,
                          check=True)
    return dict(item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)


def one_run(cmd: list[str], env: dict[str, str], delay: float, log: Path, group: bool,
            exit_limit_s: float) -> dict:
    """Start ``cmd``, SIGINT it ``delay`` s after the start, wait for its exit; what happened."""
    is_launch = cmd[1:2] == ["launch"]
    ready_at = None  # when ros2 launch had installed its signal handlers (its first log line)
    with open(log, "w") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        ended_early = False  # it must not end by itself
        while time.monotonic() < started + delay:
            try:
                proc.wait(timeout=min(0.02, max(0.0, started + delay - time.monotonic())))
                ended_early = True
                break
            except subprocess.TimeoutExpired:
                pass
            if is_launch and ready_at is None and LAUNCH_READY in log.read_text():
                ready_at = time.monotonic() - started
        signalled = time.monotonic()
        text_at_signal = log.read_text()
        if not ended_early:
            if group:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=exit_limit_s + 30)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.monotonic() - signalled
        leftover = True
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            leftover = False
        if code is None or leftover:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    text = log.read_text()
    bad = [line for line in text.splitlines() if BAD.search(line)]
    return {
        "delay_s": round(delay, 3), "signal_at_s": round(signalled - started, 3), "exit_code": code,
        "exit_s": round(exit_s, 3), "ended_before_signal": ended_early, "left_processes": leftover,
        "bad_lines": bad[:5], "phase": phase(text_at_signal),
        "launch_ready": LAUNCH_READY in text_at_signal if is_launch else None,
        "launch_ready_at_s": None if ready_at is None else round(ready_at, 3),
        "node_exit": re.findall(r"process has (finished cleanly|died \[[^\]]*exit code -?\d+)", text),
        "passed": (not ended_early and code == 0 and exit_s <= exit_limit_s and not bad and not leftover),
    }


def phase(text: str) -> str:
    """How far the node had got when the signal came, from its output."""
    for marker, name in (("]: active: ", "active"), ("]: loaded ", "activating"),
                         ("process started", "configuring (launched)"), (LAUNCH_READY, "launch ready")):
        if marker in text:
            return name
    return "starting"


def summary(target: str, runs: list[dict]) -> str:
    passed = sum(r["passed"] for r in runs)
    codes: dict[str, int] = {}
    for r in runs:
        codes[str(r["exit_code"])] = codes.get(str(r["exit_code"]), 0) + 1
    times = [r["exit_s"] for r in runs if r["exit_code"] is not None]
    phases: dict[str, int] = {}
    for r in runs:
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    line = (f"{target}: {passed}/{len(runs)} passed; exit codes {codes}; exit after the signal: median "
            f"{statistics.median(times):.2f} s, max {max(times):.2f} s; runs with a FATAL line or traceback: "
            f"{sum(bool(r['bad_lines']) for r in runs)}; left processes: {sum(r['left_processes'] for r in runs)}; "
            f"interrupted while {phases}")
    ready = [r["launch_ready_at_s"] for r in runs if r.get("launch_ready_at_s") is not None]
    if ready:
        early = sum(r["launch_ready"] is False for r in runs)
        line += (f"\n  ros2 launch had its signal handlers after {min(ready):.2f}-{max(ready):.2f} s (median "
                 f"{statistics.median(ready):.2f} s); {early} run(s) were interrupted before that, in the ros2 CLI's "
                 f"own start-up")
    failed = [f"  run {i}: signal at {r['signal_at_s']} s ({r['phase']}), status {r['exit_code']}, "
              f"{r['exit_s']} s, {r['bad_lines'][:2]}" for i, r in enumerate(runs) if not r["passed"]]
    return "\n".join([line, *failed])


def restore_sigint() -> None:
    """Give SIGINT its default handling back where this process inherited it ignored. The shell ignores SIGINT in
    the background jobs of a non-interactive shell (``nohup ... &``, a CI step), and an ignored signal stays ignored
    across exec. ``ros2 launch`` hears SIGINT through Python's default handler (``signal.set_wakeup_fd``), so it
    would never hear the interrupt, while a user's Ctrl-C in a terminal always reaches it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> int:
    restore_sigint()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=["node", "launch", "both"], default="both")
    parser.add_argument("--runs", type=int, default=50, help="interrupted runs per target")
    parser.add_argument("--min-delay", dest="min_delay", type=float, default=0.2)
    parser.add_argument("--max-delay", dest="max_delay", type=float, default=8.0)
    parser.add_argument("--exit-limit", dest="exit_limit", type=float, default=20.0,
                        help="seconds from the signal to the exit")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the delays (default: random)")
    parser.add_argument("--group", action="store_true", help="signal the process group, as a terminal's Ctrl-C")
    parser.add_argument("--no-burner", dest="burner", action="store_false", help="no CPU burner")
    parser.add_argument("--checkpoint", default=None, help="checkpoint to run (default: a tiny one written here)")
    parser.add_argument("--install", default=None, help="an existing colcon install of ros2_ws (for launch)")
    parser.add_argument("--domain", type=int, default=int(os.environ.get("VLTSEG_SOAK_DOMAIN", "227")),
                        help="ROS_DOMAIN_ID (default outside the tests' 20-219, so a suite running beside it is "
                             "not disturbed)")
    parser.add_argument("--out", default=None, help="logs and results.json (default: a temporary folder)")
    args = parser.parse_args()

    out = Path(args.out or tempfile.mkdtemp(prefix="vltseg_soak_"))
    out.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    env = base_env(args.domain)
    checkpoint = args.checkpoint or write_checkpoint(str(out / "tiny.safetensors"))
    targets = ["node", "launch"] if args.target == "both" else [args.target]
    commands = {"node": ([str(VENV_BIN / "vltseg_node"), "--ros-args", "-p", f"checkpoint:={checkpoint}",
                          "-p", "device:=cpu"], env)}
    if "launch" in targets:
        if not (VENV_BIN / "ros2").is_file():
            sys.exit("ros2 launch needs the launch/CLI kit (scripts/setup.sh installs it from ../shared/ros)")
        install = Path(args.install) if args.install else build_workspace(out / "ws", env)
        commands["launch"] = ([str(VENV_BIN / "ros2"), "launch", "vltseg_ros", "vltseg.launch.py",
                               f"checkpoint:={checkpoint}", "device:=cpu"], sourced(install, env))
    cpu = cpu_model()
    print(f"interrupt soak: {targets}, {args.runs} runs each, SIGINT to the {'group' if args.group else 'process'} "
          f"at {args.min_delay}-{args.max_delay} s, seed {seed}, {'burner on every core' if args.burner else 'no burner'}"
          f" ({os.cpu_count()} cores, {cpu}); logs in {out}", flush=True)
    results: dict = {"cpu": cpu, "cores": os.cpu_count(), "seed": seed, "group": args.group, "burner": args.burner,
                     "runs": {}}
    burners = Burners(limit_s=(args.max_delay + args.exit_limit + 10) * args.runs * len(targets) + 900) \
        if args.burner else None
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # the burners stop either way
    try:
        for target in targets:
            cmd, target_env = commands[target]
            runs = results["runs"][target] = []
            for i in range(args.runs):
                run = one_run(cmd, target_env, rng.uniform(args.min_delay, args.max_delay),
                              out / f"run_{target}_{i:02d}.log", args.group, args.exit_limit)
                runs.append(run)
                print(f"{target} {i:2d}: SIGINT at {run['signal_at_s']:5.2f} s ({run['phase']}) -> status "
                      f"{run['exit_code']} after {run['exit_s']:.2f} s{'' if run['passed'] else '  FAILED'}",
                      flush=True)
    finally:
        if burners is not None:
            burners.stop()
    results["wall_s"] = round(time.monotonic() - started, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = "\n".join(summary(target, runs) for target, runs in results["runs"].items())
    (out / "summary.txt").write_text(text + "\n")
    print(f"\n{text}\n({results['wall_s'] / 60:.1f} min; results in {out / 'results.json'})")
    return 0 if all(r["passed"] for runs in results["runs"].values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
