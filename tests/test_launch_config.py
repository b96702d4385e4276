"""Launch-file logic, parameter YAML, RViz config and README tables agree with what the node declares and publishes.

These run everywhere (no launch packages needed): the launch files' logic lives in
``vltseg_ros.node.launch_support``; tests/test_ros_launch.py runs the launch files themselves."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vltseg_ros.node import launch_support as support
from vltseg_ros.node.outputs import OUTPUTS
from vltseg_ros.node.parameters import PARAMETERS, SPECS
from vltseg_ros.node.topics import CameraTopics, resolve, sibling_camera_info

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "vltseg.yaml"
DEFAULTS = {spec.name: spec.default for spec in PARAMETERS}


def test_parameter_yaml_matches_the_declared_table():
    values = support.parameter_defaults(str(CONFIG))
    assert set(values) == set(SPECS)
    for spec in PARAMETERS:
        assert values[spec.name] == spec.default, spec.name
        assert spec.check(spec.default) is None


def test_every_node_parameter_is_a_launch_argument():
    """vltseg.launch.py declares one argument per entry of the parameter file, next to its own arguments."""
    tree = ast.parse((ROOT / "launch" / "vltseg.launch.py").read_text())
    (arguments,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS"]
    own = {ast.literal_eval(k) for k in arguments.keys}
    assert not own & set(SPECS)
    assert {"params_file", "namespace", "node_name", "image_topic", "camera_info_topic", "image_topics",
            "camera_info_topics", "remappings", "use_sim_time", "use_rviz", "fastdds_builtin_transports"} <= own
    source = ast.unparse(tree)
    assert "support.parameter_defaults(DEFAULT_PARAMS)" in source and "for name, default in PARAMETERS.items()" in source


@pytest.mark.parametrize("name, text, value", [
    ("score_threshold", "0.5", 0.5), ("score_threshold", "1", 1.0), ("publish.overlay", "false", False),
    ("cameras", "[front, rear]", ["front", "rear"]), ("cameras", "front", ["front"]),
    ("inference.size", "[256, 512]", [256, 512]), ("checkpoint", "/data/1.safetensors", "/data/1.safetensors"),
    ("device", "cuda:0", "cuda:0"), ("class_filter", "[car, person]", ["car", "person"]),
])
def test_launch_arguments_become_typed_parameters(name, text, value):
    assert support.parameter_overrides({name: text, "frame_queue": ""}, DEFAULTS) == {name: value}


@pytest.mark.parametrize("name, text", [("score_threshold", "high"), ("publish.overlay", "1"),
                                        ("inference.size", "[1.5, 2]"), ("frame_queue", "2.5")])
def test_a_mistyped_launch_argument_is_an_error_naming_it(name, text):
    with pytest.raises(ValueError, match=name):
        support.parameter_value(name, text, DEFAULTS[name])


def test_params_file_sections_apply_by_node_name(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    device: cpu\n    cameras: [a]\n"
                      "/robot/vltseg:\n  ros__parameters:\n    cameras: [front, rear]\n"
                      "other:\n  ros__parameters:\n    device: cuda\n")
    assert support.node_parameters(str(params), "vltseg", "/robot") == {"device": "cpu", "cameras": ["front", "rear"]}
    assert support.node_parameters(str(params), "vltseg", "") == {"device": "cpu", "cameras": ["a"]}


def test_camera_info_follows_a_remapped_image():
    """image_topic:=/camera/image_raw also moves camera_info next to it (image_pipeline's convention)."""
    assert support.input_remappings([""], ["/camera/image_raw"], [""]) == [
        ("image", "/camera/image_raw"), ("image/compressed", "/camera/image_raw/compressed"),
        ("camera_info", "/camera/camera_info")]
    assert support.input_remappings([""], [""], [""]) == []
    assert support.input_remappings([""], [""], ["/calib/info"]) == [("camera_info", "/calib/info")]
    rules = support.input_remappings(["front", "rear"], ["/s/front/image_raw", ""], ["", "/calib/rear"])
    assert rules == [("front/image", "/s/front/image_raw"), ("front/image/compressed", "/s/front/image_raw/compressed"),
                     ("front/camera_info", "/s/front/camera_info"), ("rear/camera_info", "/calib/rear")]
    with pytest.raises(ValueError, match="image_topics has 1 entries for 2 cameras"):
        support.input_remappings(["front", "rear"], ["/x"], [])
    assert sibling_camera_info("image") == "camera_info" and sibling_camera_info("/image") == "/camera_info"


def test_topics_resolve_like_rcl():
    rules = [("~/front/detections", "/perception/boxes"), ("/robot/front/image", "raw")]
    assert resolve("front/image", "/robot", "vltseg", rules) == "/robot/raw"  # absolute source, relative target
    assert resolve("~/front/detections", "/robot", "vltseg", rules) == "/perception/boxes"
    assert resolve("~/front/overlay", "robot/", "vltseg", rules) == "/robot/vltseg/front/overlay"
    assert resolve(CameraTopics("").output("label_mask"), "", "vltseg") == "/vltseg/label_mask"


def test_shipped_rviz_config_is_the_one_generated_for_the_launch_defaults():
    template = yaml.safe_load((ROOT / "rviz" / "vltseg.rviz").read_text())
    views = support.camera_views([""], "", "vltseg", [], compressed=False)
    assert support.rviz_config(template, views, "camera_optical") == template
    topics = {d["Name"]: d["Topic"]["Value"] for d in template["Visualization Manager"]["Displays"]}
    assert topics == {"Camera": "/image", "Segmentation (colored mask)": "/vltseg/colored_mask",
                      "Overlay (mask + boxes)": "/vltseg/overlay", "Detection markers": "/vltseg/detection_markers"}
    shown = {"colored_mask", "overlay", "detection_markers"}
    assert shown <= {o.name for o in OUTPUTS}


def test_rviz_config_follows_namespace_cameras_remappings_and_transport():
    template = yaml.safe_load((ROOT / "rviz" / "vltseg.rviz").read_text())
    rules = support.input_remappings(["front", "rear"], ["/f/image_raw", ""], [])
    views = support.camera_views(["front", "rear"], "/robot", "seg", rules + [("~/rear/overlay", "/ui/rear")],
                                 compressed=True)
    config = support.rviz_config(template, views, "base_link")
    topics = {d["Name"]: d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"]}
    assert topics["front: Camera"] == "/f/image_raw/compressed"
    assert topics["rear: Camera"] == "/robot/rear/image/compressed"
    assert topics["rear: Overlay (mask + boxes)"] == "/ui/rear"
    assert topics["front: Detection markers"] == "/robot/seg/front/detection_markers"
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "base_link"
    assert "front: Camera" in config["Window Geometry"] and "Camera" not in config["Window Geometry"]


@pytest.mark.parametrize("version, supported", [((2, 6, 6), False), ((2, 6, 7), True), ((2, 6, 10), True),
                                                ((2, 10, 0), False), ((2, 11, 2), False), ((2, 11, 3), True),
                                                ((2, 14, 5), True), ((3, 2, 2), True), (None, False)])
def test_builtin_transports_only_where_fast_dds_reads_them(version, supported):
    assert support.supports_builtin_transports(version) is supported
    apply, message = support.builtin_transports_plan("LARGE_DATA", "rmw_fastrtps_cpp", version)
    assert apply is supported and message
    assert support.builtin_transports_plan("", "rmw_fastrtps_cpp", version) == (False, "")
    assert support.builtin_transports_plan("LARGE_DATA", "rmw_cyclonedds_cpp", version)[0] is False


def test_fast_dds_version_is_read_from_the_install(tmp_path):
    humble = tmp_path / "opt_ros_humble" / "share" / "fastrtps"
    humble.mkdir(parents=True)
    (humble / "package.xml").write_text("<package><name>fastrtps</name><version>2.6.9</version></package>")
    wheels = tmp_path / "venv" / "share" / "fastdds" / "cmake"
    wheels.mkdir(parents=True)
    (wheels / "fastdds-config-version.cmake").write_text('set(PACKAGE_VERSION "3.2.2")\n')
    assert support.fastdds_version([str(tmp_path / "nothing"), str(tmp_path / "opt_ros_humble")]) == (2, 6, 9)
    assert support.fastdds_version([str(tmp_path / "venv")]) == (3, 2, 2)
    assert support.fastdds_version([]) is None


def test_readme_documents_every_output_and_parameter():
    readme = (ROOT / "README.md").read_text()
    for output in OUTPUTS:
        assert output.readme_row() in readme, output.readme_row()
    published = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `~/") and "| pub `" in line}
    assert published == {f"~/{o.name}" for o in OUTPUTS}, "the README's topic table lists an output the node lacks"
    table = readme[readme.index("| parameter | default |"):]
    for spec in PARAMETERS:
        assert f"`{spec.name}`" in table or f"`.{spec.name.rsplit('.', 1)[-1]}`" in table, spec.name


def test_node_pages_in_docs_match_the_code():
    """docs/nodes/*.md are generated from the output, parameter and argument tables; rerun the script after a
    change to those tables."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "node_docs.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
