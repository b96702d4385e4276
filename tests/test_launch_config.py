"""Launch files, parameter YAML and RViz config agree with what the node declares and publishes.

`launch`/`launch_ros` cannot be installed on the project's machines, so the always-run tests read the launch
files' literal tables with ``ast``; the launch_testing test runs only where launch_testing exists."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from vltseg_ros.node.parameters import PARAMETERS, SPECS

ROOT = Path(__file__).resolve().parents[1]
NODE_OUTPUTS = {"label_mask", "colored_mask", "overlay", "detections", "confidence", "label_info"}


def _literal(path: Path, name: str):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node.value
    raise AssertionError(f"{path.name} has no module-level {name}")


def _launch_tables(path: Path):
    arguments = _literal(path, "ARGUMENTS")
    names = [ast.literal_eval(k) for k in arguments.keys]
    mapping = ast.literal_eval(_literal(path, "PARAMETER_ARGUMENTS"))
    return names, mapping


def test_vltseg_launch_arguments_match_node_parameters():
    path = ROOT / "launch" / "vltseg.launch.py"
    ast.parse(path.read_text())
    names, mapping = _launch_tables(path)
    for required in ("checkpoint", "cameras", "input_transport", "device", "params_file", "use_sim_time", "use_rviz"):
        assert required in names
    assert set(mapping) <= set(names)
    for param in mapping.values():
        assert param in SPECS, f"launch argument maps to undeclared parameter {param}"
    source = path.read_text()
    assert '"FASTDDS_BUILTIN_TRANSPORTS"' in source and '"LARGE_DATA"' in source
    assert '"vltseg_node"' in source and '("image", ' in source


def test_parameter_yaml_matches_the_declared_table():
    data = yaml.safe_load((ROOT / "config" / "vltseg.yaml").read_text())["/**"]["ros__parameters"]

    def flatten(d, prefix=""):
        for key, value in d.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    values = dict(flatten(data))
    assert set(values) == set(SPECS)
    for spec in PARAMETERS:
        assert values[spec.name] == spec.default, spec.name
        assert spec.check(spec.default) is None


def test_rviz_displays_point_at_node_outputs_under_launch_defaults():
    config = yaml.safe_load((ROOT / "rviz" / "vltseg.rviz").read_text())
    arguments = _literal(ROOT / "launch" / "vltseg.launch.py", "ARGUMENTS")
    defaults = {ast.literal_eval(k): ast.literal_eval(v.elts[0]) for k, v in zip(arguments.keys, arguments.values)
                if isinstance(v.elts[0], ast.Constant)}
    node_ns = f"/{defaults['node_name']}/"
    topics = {d["Name"]: d["Topic"]["Value"] for d in config["Visualization Manager"]["Displays"]
              if d["Class"] == "rviz_default_plugins/Image"}
    outputs = {t for t in topics.values() if t.startswith(node_ns)}
    assert {t[len(node_ns):] for t in outputs} == {"colored_mask", "overlay"}
    assert {t[len(node_ns):] for t in outputs} <= NODE_OUTPUTS
    assert "/" + defaults["image_topic"] in topics.values()


def test_launch_file_runs_under_launch_testing():
    launch_testing = pytest.importorskip("launch_testing", reason="launch_testing is not installable here "
                                                                    "(no PyPI wheel); runs on full ROS 2 installs")
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    description = PythonLaunchDescriptionSource(str(ROOT / "launch" / "vltseg.launch.py")).get_launch_description(
        launch_testing)
    assert description is not None
