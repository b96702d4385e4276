"""Repository layout and packaging contracts: ament_python metadata, the ROS-free core, the CI/README commands,
and the self-built vision_msgs interfaces."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_ament_python_and_matches_setup():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "vltseg_ros"
    assert root.find("export/build_type").text == "ament_python"
    setup_src = (ROOT / "setup.py").read_text()
    version = re.search(r'version="([^"]+)"', setup_src).group(1)
    assert root.findtext("version") == version
    import vltseg_ros

    assert vltseg_ros.__version__ == version
    assert (ROOT / "resource" / "vltseg_ros").is_file()
    cfg = (ROOT / "setup.cfg").read_text()
    assert "script_dir=$base/lib/vltseg_ros" in cfg and "install_scripts=$base/lib/vltseg_ros" in cfg


def test_core_imports_without_rclpy():
    code = (
        "import sys; sys.modules['rclpy'] = None\n"  # any 'import rclpy' now raises ImportError
        "import vltseg_ros, vltseg_ros.config, vltseg_ros.labels, vltseg_ros.model, vltseg_ros.checkpoint, "
        "vltseg_ros.predictor, vltseg_ros.metrics, vltseg_ros.cli\n"
        "assert 'training' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_node_subpackage_imports_ros_and_core_never_imports_training():
    for path in (ROOT / "vltseg_ros").rglob("*.py"):
        imports = _imports(path)
        if "node" not in path.relative_to(ROOT / "vltseg_ros").parts:
            assert not imports & {"rclpy", "sensor_msgs", "vision_msgs", "std_msgs"}, path
        assert "training" not in imports, path


def test_ci_runs_exactly_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("bash scripts/setup.sh", "bash scripts/test.sh"):
        assert command in readme, command
        assert re.search(rf"^{re.escape(command)}\s*$", ci, re.M), command


def test_lock_pins_every_requirement_exactly():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()]
    pins = [line for line in lines if line]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-!]+", p) for p in pins), pins
    names = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    wanted = [line.split("#")[0].strip() for line in (ROOT / "requirements" / "requirements.in").read_text().splitlines()]
    for requirement in filter(None, wanted):
        name = re.split(r"[=<>!~ ]", requirement)[0].lower().replace("_", "-")
        assert name in names, f"{name} is required but not pinned in requirements/lock.txt"


def test_vision_msgs_is_wire_compatible_with_upstream():
    """Type hashes depend only on names and fields; this one is upstream vision_msgs 4.1's (stack.md §5.1)."""
    from vision_msgs.msg import Detection2DArray, LabelInfo, VisionClass

    share = Path(sys.prefix) / "share" / "vision_msgs" / "msg" / "Detection2DArray.json"
    if not share.is_file():
        pytest.skip(f"vision_msgs comes from the system ROS install, not {share}")
    hashes = {h["type_name"]: h["hash_string"] for h in json.loads(share.read_text())["type_hashes"]}
    assert hashes["vision_msgs/msg/Detection2DArray"] == (
        "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968")
    assert set(LabelInfo.get_fields_and_field_types()) == {"header", "class_map", "threshold"}
    assert VisionClass.get_fields_and_field_types() == {"class_id": "uint16", "class_name": "string"}
    assert Detection2DArray.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "detections": "sequence<vision_msgs/Detection2D>"}


def test_vision_msgs_travel_over_dds():
    """A LabelInfo and a Detection2DArray published and received through Fast DDS in one process."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from vision_msgs.msg import Detection2D, Detection2DArray, LabelInfo, ObjectHypothesisWithPose, VisionClass

    rclpy.init(domain_id=int(os.environ.get("VLTSEG_TEST_DOMAIN", "42")))
    node = rclpy.create_node("vision_msgs_probe")
    try:
        received = {}
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        pub_info = node.create_publisher(LabelInfo, "probe/label_info", latched)
        pub_det = node.create_publisher(Detection2DArray, "probe/detections", 10)
        info = LabelInfo(class_map=[VisionClass(class_id=13, class_name="car")], threshold=0.5)
        pub_info.publish(info)  # published before anyone subscribes: transient local must still deliver it
        node.create_subscription(LabelInfo, "probe/label_info", lambda m: received.setdefault("info", m), latched)
        node.create_subscription(Detection2DArray, "probe/detections", lambda m: received.setdefault("det", m), 10)
        det = Detection2D(id="", results=[ObjectHypothesisWithPose()])
        det.results[0].hypothesis.class_id = "13"
        det.results[0].hypothesis.score = 0.9
        det.bbox.center.position.x, det.bbox.center.position.y = 100.0, 30.0
        det.bbox.size_x, det.bbox.size_y = 40.0, 20.0
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(node)
        deadline = time.monotonic() + 60  # discovery can take seconds on a loaded machine
        while len(received) < 2 and time.monotonic() < deadline:
            pub_det.publish(Detection2DArray(detections=[det]))
            executor.spin_once(timeout_sec=0.05)
        assert received["info"].class_map[0].class_name == "car"
        got = received["det"].detections[0]
        assert (got.results[0].hypothesis.class_id, got.bbox.center.position.x, got.bbox.size_y) == ("13", 100.0, 20.0)
    finally:
        node.destroy_node()
        rclpy.shutdown()
