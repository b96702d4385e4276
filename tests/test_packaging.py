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
        "assert 'training' not in sys.modules and 'vltseg_train' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_online_evaluator_codec_and_bags_import_without_torch():
    """Scoring published outputs and reading or writing bags needs no torch: the evaluator node starts in a
    fraction of a second, not after torch's import."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "import vltseg_ros.codec, vltseg_ros.bag, vltseg_ros.evaluation, vltseg_ros.node.evaluator\n"
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
        assert not imports & {"training", "vltseg_train"}, path


def test_training_installs_as_vltseg_train_and_only_under_that_name(tmp_path):
    """A wheel holds vltseg_train (the training/ folder, configs included) and no top-level ``training``."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("vltseg_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"vltseg_ros", "vltseg_train"}, tops
    assert "vltseg_train/train.py" in names and "vltseg_train/configs/gta5_eva02_l14.yaml" in names


def test_ci_runs_exactly_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("bash scripts/setup.sh", "bash scripts/test.sh"):
        assert command in readme, command
        assert re.search(rf"^{re.escape(command)}\s*$", ci, re.M), command


def _requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements file, following ``-r`` includes."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            out += _requirements(path.parent / line[3:].strip())
        elif line:
            out.append(line)
    return out


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~ ;\[]", requirement)[0].lower().replace("_", "-")


def test_lock_pins_every_requirement_exactly():
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines()]
    pins = [line for line in lines if line]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-!]+", p) for p in pins), pins
    names = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    for requirement in _requirements(ROOT / "requirements" / "requirements.in") + _requirements(
            ROOT / "requirements" / "humble-launch.txt"):
        assert _name(requirement) in names, f"{requirement} is required but not pinned in requirements/lock.txt"


def test_requirements_are_split_for_machines_with_and_without_a_ros_install():
    """A ROS install gets the torch stack only (no wheel that would shadow /opt/ros, NumPy 1 for apt's message
    packages); a pip-only machine gets the same plus the ROS 2 wheels."""
    ros_install = _requirements(ROOT / "requirements" / "ros-install.txt")
    pip_only = _requirements(ROOT / "requirements" / "pip-only.txt")
    assert not [r for r in ros_install if _name(r).startswith("ros-")]
    assert "numpy<2" in ros_install
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(ros_install) & set(pip_only)
    assert {"ros-kilted-rclpy", "ros-kilted-rmw-fastrtps-cpp"} <= set(pip_only)
    assert set(_requirements(ROOT / "requirements" / "pip-only.txt")) <= set(
        _requirements(ROOT / "requirements" / "requirements.in"))


def _third_party_imports(folder: Path) -> dict[str, str]:
    """Top-level module -> first file importing it, for every import under ``folder`` that is neither the standard
    library nor this repository, nor guarded by ``except ImportError`` (optional: cv_bridge on a ROS install)."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
                    for h in t.handlers if "ImportError" in ast.unparse(h.type or ast.Name("BaseException"))
                    for stmt in t.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("vltseg_ros", "training", "vltseg_train"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_library_is_a_declared_requirement():
    """A library the code imports is named by setup.py (so pip installs it) and, for the package, by
    requirements/torch.txt (so the lock and both machine kinds get it), or by one of setup.py's extras (an optional
    feature such as ONNX export); ROS packages come from package.xml. A missing one (mcap, apsw) broke CI."""
    from importlib.metadata import packages_distributions, requires

    base = {_name(r) for r in requires("vltseg_ros") if "extra ==" not in r}
    extras = {_name(r) for r in requires("vltseg_ros") if "extra ==" in r}  # optional features (export, train)
    torch_txt = {_name(r) for r in _requirements(ROOT / "requirements" / "torch.txt")}
    ros_deps = {e.text for e in ET.parse(ROOT / "package.xml").getroot() if e.tag.endswith("depend")}
    distributions = packages_distributions()
    missing = []
    for folder in ("vltseg_ros", "training"):
        for module, where in _third_party_imports(ROOT / folder).items():
            if module in ros_deps:  # ROS packages: package.xml
                assert where.startswith("vltseg_ros/node/"), f"{where} imports ROS package {module} outside node/"
                continue
            dists = {_name(d) for d in distributions.get(module, [])}
            assert dists, f"{where} imports {module}, which no installed distribution provides"
            in_base = not dists.isdisjoint(base) and (folder != "vltseg_ros" or not dists.isdisjoint(torch_txt))
            if not in_base and dists.isdisjoint(extras):
                missing.append(f"{module} ({where}; distribution {sorted(dists)})")
    assert not missing, f"imported but not declared in setup.py / requirements/torch.txt: {missing}"


# Fields of every message in ros-perception/vision_msgs 4.1.1 (ros2 branch, e77fa2d), in order: type hashes
# depend on names, types and order, so this is what "wire-compatible" means.
UPSTREAM_VISION_MSGS = {
    "BoundingBox2D": ["vision_msgs/Pose2D center", "float64 size_x", "float64 size_y"],
    "BoundingBox2DArray": ["std_msgs/Header header", "vision_msgs/BoundingBox2D[] boxes"],
    "Classification": ["std_msgs/Header header", "vision_msgs/ObjectHypothesis[] results"],
    "Detection2D": ["std_msgs/Header header", "vision_msgs/ObjectHypothesisWithPose[] results",
                    "vision_msgs/BoundingBox2D bbox", "string id"],
    "Detection2DArray": ["std_msgs/Header header", "vision_msgs/Detection2D[] detections"],
    "LabelInfo": ["std_msgs/Header header", "vision_msgs/VisionClass[] class_map", "float32 threshold"],
    "ObjectHypothesis": ["string class_id", "float64 score"],
    "ObjectHypothesisWithPose": ["vision_msgs/ObjectHypothesis hypothesis", "geometry_msgs/PoseWithCovariance pose"],
    "Point2D": ["float64 x", "float64 y"],
    "Pose2D": ["vision_msgs/Point2D position", "float64 theta"],
    "VisionClass": ["uint16 class_id", "string class_name"],
    "VisionInfo": ["std_msgs/Header header", "string method", "string database_location", "int32 database_version"],
}


def _msg_fields(path: Path) -> list[str]:
    """``type name`` of each field of a .msg file, own-package types qualified, comments dropped."""
    fields = []
    for line in path.read_text().splitlines():
        words = line.split("#")[0].split()
        if len(words) >= 2 and "=" not in line.split("#")[0]:
            kind = words[0] if "/" in words[0] or words[0].rstrip("[]")[0].islower() else f"vision_msgs/{words[0]}"
            fields.append(f"{kind} {words[1]}")
    return fields


def test_vision_msgs_sources_are_field_identical_to_upstream():
    folder = ROOT / "ros2_ws" / "src" / "vision_msgs" / "msg"
    assert {p.stem: _msg_fields(p) for p in sorted(folder.glob("*.msg"))} == UPSTREAM_VISION_MSGS


def test_vision_msgs_is_wire_compatible_with_upstream():
    """Type hashes depend only on names and fields; this one is upstream vision_msgs 4.1's
    (docs/design.md#vision_msgs-on-a-pip-only-machine)."""
    from vision_msgs.msg import Detection2DArray, LabelInfo, VisionClass, VisionInfo

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
    assert list(VisionInfo.get_fields_and_field_types()) == ["header", "method", "database_location",
                                                              "database_version"]


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


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_document_reference_resolves_inside_the_repository():
    """Comments cite docs/*.md (with a heading anchor) and README.md only, never documents a reader of the
    repository does not have (the team's shared notes) or issue numbers."""
    outside = re.compile(r"\b(method|data|stack|ros_conventions|style)\.md\b|shared/docs|issue #\d")
    cited = re.compile(r"\b((?:docs/[\w./-]+|README)\.md)(?:#([\w-]+))?")
    problems = []
    sources = [p for d in ("vltseg_ros", "training", "tests", "bench", "scripts", "launch", "config")
               for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".yaml", ".sh") and p != Path(__file__)]
    for path in sources:
        text = path.read_text()
        problems += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in outside.finditer(text)]
        for match in cited.finditer(text):
            target = ROOT / match.group(1)
            if not target.is_file():
                problems.append(f"{path.relative_to(ROOT)}: {match.group(1)} does not exist")
                continue
            headings = {_slug(line.lstrip("#")) for line in target.read_text().splitlines() if line.startswith("#")}
            if match.group(2) and match.group(2) not in headings:
                problems.append(f"{path.relative_to(ROOT)}: no heading #{match.group(2)} in {match.group(1)}")
    assert not problems, problems


def test_readme_layout_table_names_every_module():
    """Section 10 of the README describes the tree as it is: every module and subpackage of vltseg_ros."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## 10. Repository layout"):]
    package = ROOT / "vltseg_ros"
    names = {p.name for p in package.iterdir() if p.suffix == ".py" and p.name != "__init__.py"}
    names |= {f"vltseg_ros/{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    names |= {p.name for sub in ("node", "bag") for p in (package / sub).glob("*.py") if p.name != "__init__.py"}
    assert not [n for n in sorted(names) if f"`{n}`" not in layout and f"`vltseg_ros/{n}`" not in layout]
