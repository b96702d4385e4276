"""Launch vltseg_node (and optionally RViz) on a real ROS 2 install.

    ros2 launch vltseg_ros vltseg.launch.py checkpoint:=/data/vltseg_l.safetensors image_topic:=/camera/image_raw
    ros2 launch vltseg_ros vltseg.launch.py checkpoint:=... cameras:="[cam_front, cam_rear]" use_rviz:=true

Launch arguments override the parameters file only when they are given (non-empty).
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from ament_index_python.packages import get_package_share_directory

SHARE = get_package_share_directory("vltseg_ros")

# name -> (default, description)
ARGUMENTS = {
    "checkpoint": ("", "path of the .safetensors checkpoint"),
    "params_file": (os.path.join(SHARE, "config", "vltseg.yaml"), "node parameter YAML"),
    "namespace": ("", "namespace of the node and its topics"),
    "node_name": ("vltseg", "node name (outputs are ~/label_mask etc. under it)"),
    "image_topic": ("image", "single camera: remap the node's 'image' input to this topic"),
    "cameras": ("", "several cameras: YAML list of camera namespaces, e.g. [cam_front, cam_rear]"),
    "input_transport": ("", "raw or compressed"),
    "device": ("", "auto, cpu, cuda or cuda:N"),
    "precision": ("", "fp32, bf16 or fp16"),
    "use_sim_time": ("false", "use /clock (bag replay with --clock)"),
    "use_rviz": ("false", "start RViz with rviz/vltseg.rviz"),
    "rviz_config": (os.path.join(SHARE, "rviz", "vltseg.rviz"), "RViz config file"),
    "fastdds_builtin_transports": ("LARGE_DATA", "Fast DDS transports for the node; LARGE_DATA is needed for "
                                                 "best-effort images of 1 MB and more"),
}

# launch argument -> node parameter it overrides when non-empty
PARAMETER_ARGUMENTS = {
    "checkpoint": "checkpoint",
    "cameras": "cameras",
    "input_transport": "input_transport",
    "device": "device",
    "precision": "precision",
}


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {"use_sim_time": arg("use_sim_time").lower() in ("true", "1", "yes")}
    for name, param in PARAMETER_ARGUMENTS.items():
        value = arg(name)
        if value:
            overrides[param] = _yaml_value(value) if param == "cameras" else value
    return [Node(
        package="vltseg_ros",
        executable="vltseg_node",
        name=arg("node_name"),
        namespace=arg("namespace"),
        parameters=[arg("params_file"), overrides],
        remappings=[("image", arg("image_topic")), ("image/compressed", arg("image_topic") + "/compressed")],
        output="screen",
        emulate_tty=True,
    )]


def _yaml_value(text):
    import yaml

    value = yaml.safe_load(text)
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()]
        + [
            SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", LaunchConfiguration("fastdds_builtin_transports")),
            OpaqueFunction(function=_node),
            Node(package="rviz2", executable="rviz2", arguments=["-d", LaunchConfiguration("rviz_config")],
                 condition=IfCondition(LaunchConfiguration("use_rviz")),
                 parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}]),
        ]
    )
