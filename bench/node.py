#!/usr/bin/env python
"""Node vs bare predictor: end-to-end throughput and latency through DDS, as ratios measured in one run.

1. The bare ``Predictor`` runs the frames back to back in this process (frames/s, ms per frame).
2. ``vltseg_node`` runs the same checkpoint in its own process; this process publishes the same frames as raw
   ``rgb8`` Images and receives ``~/label_mask``. Throughput: published faster than the model can keep up (the
   node keeps the newest frame), masks received per second. Latency: published at half the model's rate, so each
   frame finds the node idle; receive time - header stamp, minus the bare predictor's time per frame, is what the
   node adds (transport, conversion, publishing) without queueing.

Targets (issues #4, #6): the node keeps >= 90 % of the predictor's throughput and adds <= 3 ms p50 latency.

    python bench/node.py --size 512x1024 --seconds 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from vltseg_ros.precision import PRECISIONS, resolve_precision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")


def bench_predictor(path: str, frames: list[np.ndarray], precision: str, seconds: float) -> list[float]:
    """Seconds per frame of ``Predictor.predict`` on single frames, back to back."""
    from vltseg_ros.predictor import Predictor

    predictor = Predictor.from_checkpoint(path, precision=precision, score_threshold=0.3)
    predictor.predict(frames[:1])
    times = []
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        predictor.predict([frames[i % len(frames)]])
        times.append(time.perf_counter() - start)
        i += 1
    return times


def bench_node(path: str, frames: list[np.ndarray], precision: str, seconds: float, rates: list[float],
               domain: int) -> list[tuple[float, list[float], int]]:
    """For each publish rate in turn, (masks per second, latencies in s, frames published) of the node running in
    its own process."""
    from sensor_msgs.msg import Image

    from ros_harness import RELIABLE, RosHarness, image_msg

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    exe = os.path.join(os.path.dirname(sys.executable), "vltseg_node")
    node = subprocess.Popen([exe, "--ros-args", "-p", f"checkpoint:={path}", "-p", "device:=cpu",
                             "-p", f"precision:={precision}", "-p", "publish.overlay:=false"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ros = RosHarness(domain_id=domain)
    try:
        received: list[tuple[float, float]] = []  # (receive time, latency)

        def on_mask(msg):
            now = time.time()
            received.append((now, now - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)))

        ros.probe.create_subscription(Image, "/vltseg/label_mask", on_mask, RELIABLE)
        pub = ros.publisher(Image, "/image", RELIABLE)
        ros.wait_matched(pub, timeout=120)
        messages = [image_msg(f, "rgb8", 0) for f in frames]
        results = []
        for rate in rates:
            stop = threading.Event()
            published = [0]

            def publish(rate=rate, stop=stop, published=published):
                period = 1.0 / rate
                next_time = time.perf_counter()
                while not stop.is_set():
                    msg = messages[published[0] % len(messages)]
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                    pub.publish(msg)
                    published[0] += 1
                    next_time += period
                    time.sleep(max(0.0, next_time - time.perf_counter()))

            before = len(received)
            thread = threading.Thread(target=publish, daemon=True)
            thread.start()
            ros.wait_for(lambda: len(received) >= before + 2, timeout=60)
            start = time.time()
            time.sleep(seconds)
            stop.set()
            thread.join()
            window = [r for r in received[before + 2:] if r[0] <= start + seconds]
            results.append((len(window) / seconds, [lat for _, lat in window], published[0]))
            time.sleep(2.0 / rate)  # let the last frame drain before the next phase
        return results
    finally:
        ros.close()
        node.terminate()
        node.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="eva02_tiny")
    parser.add_argument("--size", default="512x1024", help="frame size HxW (also the network input)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement time per side")
    parser.add_argument("--overdrive", type=float, default=1.2,
                        help="publish rate / predictor rate for throughput (>1 keeps the node busy; the excess is "
                             "dropped)")
    parser.add_argument("--underdrive", type=float, default=0.5,
                        help="publish rate / predictor rate for latency (<1: every frame finds the node idle)")
    parser.add_argument("--domain", type=int, default=77, help="ROS domain id for the run")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    from ros_harness import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.safetensors")
        write_tiny_checkpoint(path, height, width, args.model)
        precision = resolve_precision(args.precision, "cpu")  # the node takes a resolved precision
        bare = bench_predictor(path, frames, precision, args.seconds)
        bare_fps = 1.0 / statistics.median(bare)
        (node_fps, busy_lat, published), (_, idle_lat, _) = bench_node(
            path, frames, precision, args.seconds, [bare_fps * args.overdrive, bare_fps * args.underdrive],
            args.domain)
    bare_ms = np.array(bare) * 1000
    print(f"# node vs predictor: {args.model}, {args.size} rgb8, {precision}, CPU, "
          f"{args.seconds:.0f} s each, published {published} frames at {bare_fps * args.overdrive:.1f} Hz "
          f"(throughput), then at {bare_fps * args.underdrive:.1f} Hz (latency)")
    print("| path | frames/s | p50 ms | p95 ms |")
    print("|---|---|---|---|")
    print(f"| bare predictor | {bare_fps:.2f} | {np.percentile(bare_ms, 50):.1f} | {np.percentile(bare_ms, 95):.1f} |")
    for label, lat in (("node, publisher faster than the model (stamp -> mask received)", busy_lat),
                       ("node, publisher slower than the model (stamp -> mask received)", idle_lat)):
        if lat:
            ms = np.array(lat) * 1000
            print(f"| {label} | {len(lat) / args.seconds:.2f} | {np.percentile(ms, 50):.1f} | "
                  f"{np.percentile(ms, 95):.1f} |")
    print(f"\nthroughput ratio node/predictor: {node_fps / bare_fps:.2f} (target >= 0.90)")
    if idle_lat:
        added = np.percentile(np.array(idle_lat) * 1000, 50) - np.percentile(bare_ms, 50)
        print(f"added latency p50 (idle node, no queueing): {added:.1f} ms (target <= 3 on a GPU machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
