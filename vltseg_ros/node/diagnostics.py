"""The node's /diagnostics statuses, following ``diagnostic_updater`` conventions (which is not a wheel here).

Levels describe the recent past, never the whole run: one bad frame gives WARN for one window, not until restart.
Per camera, a ``FrequencyStatus``-style check (same messages and keys) compares the input rate with an expected rate,
and a stale check reports a subscribed camera that stopped sending.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

OK, WARN, ERROR = (int.from_bytes(level, "big") for level in (DiagnosticStatus.OK, DiagnosticStatus.WARN,
                                                                DiagnosticStatus.ERROR))


def status(name: str, hardware_id: str, checks: list[tuple[int, str]], values: dict[str, str]) -> DiagnosticStatus:
    """One DiagnosticStatus: the level is the worst of ``checks``; the message lists every failed check, worst
    first (or the OK text when none failed)."""
    level = max(level for level, _ in checks)
    failed = sorted((c for c in checks if c[0] > OK), key=lambda c: -c[0])
    message = "; ".join(text for _, text in failed) if failed else checks[0][1]
    return DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=k, value=v) for k, v in values.items()])


def monitor_checks(scores: list[float], thresholds: Optional[dict[str, float]],
                   window_s: float) -> list[tuple[int, str]]:
    """The domain-shift monitor's level over the window: the median frame score against the calibrated thresholds
    (a single odd frame does not raise it; a stretch of fog does)."""
    if thresholds is None:
        return [(OK, "uncalibrated: the checkpoint holds no in-domain statistics (vltseg monitor calibrate)")]
    if not scores:
        return [(OK, f"no frames in the last {window_s:g} s")]
    median = float(np.median(scores))
    if median < thresholds["error"]:
        return [(OK, "in domain"), (ERROR, f"far out of domain: median frame score {median:.3f} < error threshold "
                                           f"{thresholds['error']:.3f} over {len(scores)} frames")]
    if median < thresholds["warn"]:
        return [(OK, "in domain"), (WARN, f"out of domain: median frame score {median:.3f} < warning threshold "
                                          f"{thresholds['warn']:.3f} over {len(scores)} frames")]
    return [(OK, "in domain")]


def monitor_values(scores: list[float], thresholds: Optional[dict[str, float]], score_name: str,
                   calibration: Optional[dict]) -> dict[str, str]:
    """Key/values of one camera's monitor status: the window's scores and the thresholds they are judged by."""
    values = {"score": score_name, "calibrated": str(thresholds is not None).lower(),
              "frames in window": str(len(scores))}
    if scores:
        values.update({"median score": f"{np.median(scores):.4f}", "min score": f"{min(scores):.4f}",
                       "last score": f"{scores[-1]:.4f}"})
    if thresholds is not None:
        values.update({"warn threshold": f"{thresholds['warn']:.4f}", "error threshold": f"{thresholds['error']:.4f}"})
        if scores:
            values["fraction below warn"] = f"{np.mean(np.array(scores) < thresholds['warn']):.2f}"
    if calibration:
        values["calibration"] = (f"{calibration.get('frames')} frames of {calibration.get('dataset')} "
                                 f"{calibration.get('split')}")
    return values


def inference_checks(recent: dict[str, int], window_s: float, last_error: Optional[str]) -> list[tuple[int, str]]:
    """Level of the inference task from the counts of the last ``window_s`` seconds."""
    checks = [(OK, "ok")]
    if recent.get("inference_errors"):
        checks.append((ERROR, f"{recent['inference_errors']} inference error(s) in the last {window_s:g} s: "
                              f"{last_error}"))
    if recent.get("rejected"):
        reasons = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(recent.items())
                            if k.startswith("rejected."))
        checks.append((WARN, f"{recent['rejected']} input frame(s) rejected in the last {window_s:g} s ({reasons})"))
    if recent.get("stale"):
        checks.append((WARN, f"{recent['stale']} frame(s) older than max_frame_age_s in the last {window_s:g} s"))
    return checks


@dataclass
class InputState:
    """What the node knows about one camera input at diagnostics time."""

    topic: str
    subscribed: bool
    rate_hz: float  # frames per second over the window
    frames_in_window: int
    since_last_s: Optional[float]  # seconds since the last frame (or since subscribing, if none came yet)


def input_checks(state: InputState, stale_input_s: float, expected_hz: float,
                 tolerance: float) -> list[tuple[int, str]]:
    """Stale and frequency checks of one camera input. A camera nobody needs (lazy node, no output subscriber) is
    not subscribed, and so neither stale nor slow."""
    if not state.subscribed:
        return [(OK, "idle: no subscriber to this camera's outputs")]
    checks = [(OK, "receiving")]
    if stale_input_s > 0 and state.since_last_s is not None and state.since_last_s > stale_input_s:
        checks.append((WARN, f"stale: no frame on {state.topic} for {state.since_last_s:.1f} s"))
    if expected_hz > 0:
        if state.frames_in_window == 0:
            checks.append((ERROR, "No events recorded."))
        elif state.rate_hz < expected_hz * (1 - tolerance):
            checks.append((WARN, "Frequency too low."))
        elif state.rate_hz > expected_hz * (1 + tolerance):
            checks.append((WARN, "Frequency too high."))
        else:
            checks.append((OK, "Desired frequency met"))
    return checks


def input_values(state: InputState, window_s: float, expected_hz: float, tolerance: float) -> dict[str, str]:
    """Key/values of one camera input (``FrequencyStatus`` keys where they apply)."""
    values = {
        "topic": state.topic,
        "subscribed": str(state.subscribed).lower(),
        "Events in window": str(state.frames_in_window),
        "Duration of window (s)": f"{window_s:g}",
        "Actual frequency (Hz)": f"{state.rate_hz:.2f}",
        "seconds since last frame": "n/a" if state.since_last_s is None else f"{state.since_last_s:.1f}",
    }
    if expected_hz > 0:
        values["Minimum acceptable frequency (Hz)"] = f"{expected_hz * (1 - tolerance):.2f}"
        values["Maximum acceptable frequency (Hz)"] = f"{expected_hz * (1 + tolerance):.2f}"
    return values
