"""Plain-Python helpers of the launch files and of the processes they launch (no launch or rclpy imports, so they
behave the same under every distribution's launch packages, and tests call them directly): node parameters as launch
arguments, the inputs' remappings, the RViz config for the launched topics, whether Fast DDS supports
``FASTDDS_BUILTIN_TRANSPORTS``, and how the package's executables take SIGINT and SIGTERM (``StopSignals``)."""
from __future__ import annotations

import os
import signal
import sys

# The executables import this module before anything else. Until StopSignals is installed, just record a SIGINT or
# SIGTERM: Python's default handlers would end a start-up interrupted here with a KeyboardInterrupt traceback (or
# kill it, for SIGTERM). Set first, before this module's own imports: every millisecond of a busy machine's
# start-up counts. StopSignals.install() takes over what was recorded.
EXECUTABLES = ("vltseg_node", "vltseg_eval_node", "vltseg_bag_play")
_early_signals: list[int] = []
if os.path.basename(sys.argv[0]) in EXECUTABLES:
    try:
        for _signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(_signum, lambda signum, frame: _early_signals.append(signum))
    except ValueError:  # not the main thread: the host program's business
        pass

import re
import select
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .topics import CameraTopics, resolve, sibling_camera_info


def _yaml():
    """PyYAML, imported on first use: the executables import this module first, for ``StopSignals``, and a Ctrl-C
    before its handlers are installed would end them with a KeyboardInterrupt traceback."""
    import yaml

    return yaml


# --------------------------------------------------------------------------------------------------- parameters
def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parameter_defaults(params_yaml: str) -> dict[str, Any]:
    """``name -> default`` (dotted names) of a node parameter file in the ``/**: ros__parameters:`` form."""
    with open(params_yaml, encoding="utf-8") as f:
        return _flatten(_yaml().safe_load(f)["/**"]["ros__parameters"])


def node_parameters(params_file: str, node_name: str, namespace: str) -> dict[str, Any]:
    """The parameters a params file gives this node, by the rules of ROS 2 params files: ``/**`` and the node's
    name, bare or fully qualified (later sections win)."""
    with open(params_file, encoding="utf-8") as f:
        sections = _yaml().safe_load(f) or {}
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    names = ("/**", node_name, f"/{node_name}", f"{ns}/{node_name}", f"{ns.lstrip('/')}/{node_name}")
    out: dict[str, Any] = {}
    for key, section in sections.items():
        if key in names and isinstance(section, dict):
            out.update(_flatten(section.get("ros__parameters", {})))
    return out


def _is(value: Any, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def parameter_value(name: str, text: str, default: Any) -> Any:
    """The text of launch argument ``name`` as a value of the type of the parameter's ``default`` (YAML syntax
    for booleans, numbers and lists, as ``ros2 param set`` takes them); ValueError naming the argument if it is not
    one."""
    if isinstance(default, str):
        return text
    value = _yaml().safe_load(text)
    kind = (type(default[0]) if default else str) if isinstance(default, list) else type(default)
    values = (value if isinstance(value, list) else [value]) if isinstance(default, list) else [value]
    if kind is str:
        values = ["" if v is None else str(v) for v in values]
    if not all(_is(v, kind) for v in values):
        raise ValueError(f"launch argument {name}:={text!r} is not a {type(default).__name__} like its default "
                         f"{default!r}")
    if kind is float:
        values = [float(v) for v in values]
    return values if isinstance(default, list) else values[0]


def parameter_overrides(texts: dict[str, str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Typed values of the parameter arguments that were given (non-empty); the others leave the params file's."""
    return {name: parameter_value(name, text, defaults[name]) for name, text in texts.items() if text != ""}


# ------------------------------------------------------------------------------------------------------ topics
def yaml_list(name: str, text: str) -> list[str]:
    """A launch argument holding a YAML list of strings ('' = empty)."""
    value = _yaml().safe_load(text) if text.strip() else []
    value = value if isinstance(value, list) else [value]
    return ["" if v is None else str(v) for v in value]


def yaml_mapping(name: str, text: str) -> dict[str, str]:
    """A launch argument holding a YAML mapping of strings ('' = empty)."""
    value = _yaml().safe_load(text) if text.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"launch argument {name}:={text!r} is not a YAML mapping like {{from: to}}")
    return {str(k): str(v) for k, v in value.items()}


def input_remappings(cameras: list[str], image_topics: list[str],
                     camera_info_topics: list[str]) -> list[tuple[str, str]]:
    """Remapping rules for each camera's image, image/compressed and camera_info. '' keeps the node's own name for
    the image; '' for camera_info means the camera_info next to the (remapped) image, as image_pipeline does."""
    for name, topics in (("image_topics", image_topics), ("camera_info_topics", camera_info_topics)):
        if topics and len(topics) != len(cameras):
            raise ValueError(f"{name} has {len(topics)} entries for {len(cameras)} cameras {cameras}")
    rules = []
    for i, camera in enumerate(cameras):
        names = CameraTopics(camera)
        image = image_topics[i] if image_topics and image_topics[i] else ""
        info = camera_info_topics[i] if camera_info_topics and camera_info_topics[i] else ""
        if image:
            rules += [(names.image, image), (names.compressed, f"{image}/compressed")]
        if info or image:
            rules.append((names.camera_info, info or sibling_camera_info(image)))
    return rules


@dataclass(frozen=True)
class CameraView:
    """The absolute topics RViz shows for one camera."""

    label: str
    image: str
    colored_mask: str
    overlay: str
    markers: str


def camera_views(cameras: list[str], namespace: str, node_name: str, remappings: list[tuple[str, str]],
                 compressed: bool) -> list[CameraView]:
    """Where each camera's input and displayed outputs end up under this namespace and these remappings."""
    views = []
    for camera in cameras:
        names = CameraTopics(camera)

        def topic(name: str) -> str:
            return resolve(name, namespace, node_name, remappings)

        views.append(CameraView(camera.strip("/") or "camera", topic(names.compressed if compressed else names.image),
                                topic(names.output("colored_mask")), topic(names.output("overlay")),
                                topic(names.output("detection_markers"))))
    return views


def _qos(depth: int, reliable: bool) -> dict:
    return {"Depth": depth, "Durability Policy": "Volatile", "History Policy": "Keep Last",
            "Reliability Policy": "Reliable" if reliable else "Best Effort"}


def _image_display(name: str, topic: str, reliable: bool) -> dict:
    return {"Class": "rviz_default_plugins/Image", "Enabled": True, "Max Value": 1, "Median window": 5,
            "Min Value": 0, "Name": name, "Normalize Range": True,
            "Topic": dict(_qos(5 if reliable else 1, reliable), Value=topic), "Value": True}


def rviz_config(template: dict, views: list[CameraView], fixed_frame: str) -> dict:
    """``template`` (an .rviz file's YAML) with one set of displays per camera: the camera image, the colored mask,
    the overlay and the detection markers, on these topics, and ``fixed_frame`` (the markers' frame is the image's
    frame_id)."""
    config = _yaml().safe_load(_yaml().safe_dump(template))  # deep copy
    displays, panels = [], {}
    for view in views:
        prefix = f"{view.label}: " if len(views) > 1 else ""
        images = [(f"{prefix}Camera", view.image, False),
                  (f"{prefix}Segmentation (colored mask)", view.colored_mask, True),
                  (f"{prefix}Overlay (mask + boxes)", view.overlay, True)]
        displays += [_image_display(name, topic, reliable) for name, topic, reliable in images]
        displays.append({"Class": "rviz_default_plugins/MarkerArray", "Enabled": True,
                         "Name": f"{prefix}Detection markers", "Namespaces": {},
                         "Topic": dict(_qos(5, True), Value=view.markers), "Value": True})
        panels.update({name: {"collapsed": False} for name, _, _ in images})
    manager = config["Visualization Manager"]
    manager["Displays"] = displays
    manager["Global Options"]["Fixed Frame"] = fixed_frame
    geometry = config["Window Geometry"]
    config["Window Geometry"] = {k: v for k, v in geometry.items() if not isinstance(v, dict)} | panels
    return config


def write_rviz_config(template_path: str, views: list[CameraView], fixed_frame: str) -> str:
    """Write the RViz config for ``views`` into a fresh temporary directory; return its path."""
    with open(template_path, encoding="utf-8") as f:
        config = rviz_config(_yaml().safe_load(f), views, fixed_frame)
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="vltseg_rviz_"), "vltseg.rviz")
    with open(path, "w", encoding="utf-8") as f:
        _yaml().safe_dump(config, f, sort_keys=False)
    return path


# ----------------------------------------------------------------------------------------------------- Fast DDS
def fastdds_version(prefixes: Iterable[str]) -> Optional[tuple[int, int, int]]:
    """Version of the Fast DDS installed under the first of ``prefixes`` that has one (its CMake package version
    file, or the ROS package.xml of fastrtps/fastdds)."""
    for prefix in prefixes:
        for name in ("fastdds", "fastrtps"):
            share = os.path.join(prefix, "share", name)
            for path, pattern in ((os.path.join(share, "cmake", f"{name}-config-version.cmake"),
                                   r'set\(PACKAGE_VERSION "(\d+)\.(\d+)\.(\d+)"'),
                                  (os.path.join(share, "package.xml"), r"<version>(\d+)\.(\d+)\.(\d+)</version>")):
                if os.path.isfile(path):
                    with open(path, encoding="utf-8") as f:
                        match = re.search(pattern, f.read())
                    if match:
                        return tuple(int(v) for v in match.groups())
    return None


def supports_builtin_transports(version: Optional[tuple[int, int, int]]) -> bool:
    """Whether a Fast DDS version reads FASTDDS_BUILTIN_TRANSPORTS: 2.12 and later, and the 2.6.7 (Humble) and
    2.11.3 backports."""
    if version is None:
        return False
    backports = {(2, 6): (2, 6, 7), (2, 11): (2, 11, 3)}
    return version >= backports[version[:2]] if version[:2] in backports else version >= (2, 12, 0)


def builtin_transports_plan(value: str, rmw: str, version: Optional[tuple[int, int, int]]) -> tuple[bool, str]:
    """(set it?, what to log) for a ``fastdds_builtin_transports`` launch argument."""
    if not value:
        return False, ""
    if not rmw.startswith("rmw_fastrtps"):
        return False, f"fastdds_builtin_transports:={value} ignored: the middleware is {rmw}, not Fast DDS"
    found = ".".join(map(str, version)) if version else "unknown"
    if not supports_builtin_transports(version):
        return False, (f"fastdds_builtin_transports:={value} ignored: Fast DDS {found} does not read "
                       f"FASTDDS_BUILTIN_TRANSPORTS (2.6.7+, 2.11.3+ or 2.12+ do)")
    return True, f"FASTDDS_BUILTIN_TRANSPORTS={value} for the processes of this launch (Fast DDS {found})"


def ament_prefixes() -> list[str]:
    """Install prefixes to search, as sourcing a ROS 2 setup file sets them, then this Python's environment."""
    paths = os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)
    paths += os.environ.get("CMAKE_PREFIX_PATH", "").split(os.pathsep)
    return [p for p in paths if p] + [sys.prefix]


# ------------------------------------------------------------------------------------------- stopping processes
STOP_GRACE_S = 3.0
"""After SIGINT or SIGTERM, how long an executable waits for work in progress (a lifecycle transition, a frame in
flight) before it exits without it. ``ros2 launch`` sends SIGINT, escalates to SIGTERM 5 s later and to SIGKILL 5 s
after that: the node has to be gone well inside the first 5 s."""
STOP_DEADLINE_S = 8.0
"""After SIGINT or SIGTERM, the moment at which a process still busy with its clean-up (a hung DDS call) exits
anyway, with status 0, before ``ros2 launch`` would kill it (10 s)."""


class StopSignals:
    """SIGINT and SIGTERM as a stop request instead of an exception.

    The handler only records the first signal, runs the registered callbacks (cheap, thread-safe ones such as setting
    an event) and wakes ``wait()``; nothing is raised into whatever the main thread runs. rclpy's own handlers raise
    KeyboardInterrupt in an arbitrary frame and shut the context down under a running lifecycle transition or
    ``publish()``, which logged "Failed to complete transition" and FATAL lines on a plain Ctrl-C; so the
    executables init rclpy with ``SignalHandlerOptions.NO`` and stop themselves in order.

    Install it from the main thread as early as possible: each executable's module does so at its top, before its
    heavy imports, when it runs as that executable (``install_for``), so that Ctrl-C while importing is a stop
    request too. Later signals (a second Ctrl-C, ``ros2 launch``'s SIGTERM) change nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.received_at: Optional[float] = None  # time.monotonic() of the first signal
        self._callbacks: list = []
        self._lock = threading.RLock()  # the handler may run in the main thread while it holds this
        self._wake_r: Optional[int] = None
        self._wake_w: Optional[int] = None

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """``SIGINT``/``SIGTERM`` (``stop`` when requested by ``request``)."""
        return signal.Signals(self.signum).name if self.signum and self.signum > 0 else "stop"

    @property
    def installed(self) -> bool:
        """Whether the handlers are installed."""
        return self._wake_r is not None

    def install(self) -> "StopSignals":
        """Install the handlers (main thread only; elsewhere this does nothing). Idempotent."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return self
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The C-level handler writes to this pipe from whichever thread the kernel delivers the signal to (a DDS or
        # torch thread, often), so wait() in the main thread wakes at once to run the Python handler.
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)
        if _early_signals:  # received while importing, before these handlers
            self.request(_early_signals[0])
        # A parent may start the process with these signals blocked (the demo does), so that one sent before this
        # point waits instead of ending it with a traceback: it is delivered now, to the handler.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)
        return self

    def install_for(self, executable: str, module_name: str) -> "StopSignals":
        """``install()`` if this process runs ``executable`` (its console script, or the module with ``-m``): a
        library import of the module leaves the host program's handlers alone."""
        if module_name == "__main__" or os.path.basename(sys.argv[0]) == executable:
            self.install()
        return self

    def _handle(self, signum: int, frame) -> None:
        self.request(signum)

    def request(self, signum: int = -1) -> None:
        """Record a stop request (the handler calls this; so may anyone, from any thread) and run the callbacks
        once."""
        with self._lock:
            if self.signum is not None:
                return
            self.signum, self.received_at = signum, time.monotonic()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()
        self.wake()

    def on_request(self, callback) -> None:
        """Call ``callback()`` when a stop is requested (at once if it already was). It runs in the signal handler,
        in the main thread, wherever that was: it must be idempotent and must not take a lock the main thread may
        hold (an RLock is fine)."""
        with self._lock:
            self._callbacks.append(callback)
        if self.requested:  # requested before, or while this was being registered
            callback()

    def wake(self) -> None:
        """Make a ``wait()`` in progress return (thread-safe)."""
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:  # the pipe is full: wait() wakes anyway
                pass

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until a signal or ``wake()`` (or ``timeout`` s); whether a stop was requested."""
        if self.requested:
            return True
        if self._wake_r is None:
            time.sleep(0.1 if timeout is None else min(timeout, 0.1))
            return self.requested
        try:
            select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            pass
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        return self.requested

    def remaining(self, budget: float) -> float:
        """Seconds left of ``budget`` counted from the first signal (``budget`` before any)."""
        if self.received_at is None:
            return budget
        return max(0.0, budget - (time.monotonic() - self.received_at))


STOP = StopSignals()
"""The process's stop request: one per process, as signal handlers are."""

_BLOCKED_START = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def blocked_start_prefix(launch_prefix: str, python: str = sys.executable) -> Optional[str]:
    """The launch ``prefix`` that starts one of the package's executables with SIGINT and SIGTERM blocked, or
    None (launch's own ``launch-prefix``) when the user gave one (gdb, valgrind: tools that take the signals
    themselves).

    ``ros2 launch`` passes a Ctrl-C on to its processes at once, also to one that has only just been started: in
    the 0.1-0.3 s before the executable has installed StopSignals, Python would end it with a KeyboardInterrupt
    traceback. Blocked, the signal waits and StopSignals.install() takes it. ``sh`` ignores the two signals
    within its first instruction, then a bare Python (no site: milliseconds) blocks them and executes the
    command; one that comes in between those two is lost, and launch's SIGTERM 5 s later stops the process."""
    if launch_prefix.strip():
        return None
    return shlex.join(["sh", "-c", 'trap "" INT TERM; exec "$@"', "sh", python, "-S", "-E", "-c", _BLOCKED_START])


def exit_now(code: int = 0) -> None:
    """Flush Python's and C's output buffers and end the process at once with ``code``, without running Python's
    finalisation: for a process whose work is stuck in native code (a warm-up that compiles for minutes) or whose
    clean-up hangs, after a stop request. Never returns."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to say on it
            pass
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # rcutils logs through C stdio
    except Exception:  # no libc to flush: the process ends either way
        pass
    os._exit(code)


def exit_at_deadline(stop: StopSignals, code: int = 0, deadline_s: float = STOP_DEADLINE_S) -> threading.Thread:
    """A daemon thread that ends the process with ``code`` once ``deadline_s`` have passed since the stop request,
    in case the orderly shutdown hangs; it dies with the process when that ends first."""

    def watch() -> None:
        while True:
            left = stop.remaining(deadline_s)
            if left <= 0:
                exit_now(code)
            time.sleep(min(left, 0.5))

    thread = threading.Thread(target=watch, name="stop-deadline", daemon=True)
    thread.start()
    return thread
