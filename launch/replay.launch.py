"""Replay a bag into vltseg_node and score it online with vltseg_eval_node (on a real ROS 2 install).

    ros2 launch vltseg_ros replay.launch.py bag:=data/bags/fog checkpoint:=/data/vltseg_l.safetensors \
        output_dir:=reports/fog_online rate:=0.5

``ros2 bag play <bag> --clock --rate <rate>`` starts after ``play_delay_s`` (the node loads its checkpoint
first); both nodes run on the bag's /clock. When playback ends the launch waits ``drain_s`` for the last
predictions, then shuts down, and the evaluator writes results.json/results.md/frames.jsonl to ``output_dir``.
Without ``ros2 bag`` (this project's CI machines) use ``vltseg bag play`` and start the nodes directly.
"""
import os

from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, OpaqueFunction, RegisterEventHandler,
                            SetEnvironmentVariable, TimerAction)
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from ament_index_python.packages import get_package_share_directory

SHARE = get_package_share_directory("vltseg_ros")

# name -> (default, description)
ARGUMENTS = {
    "bag": ("", "bag directory to replay (mcap or sqlite3, e.g. written by vltseg_ros.bag.BagWriter)"),
    "checkpoint": ("", "path of the .safetensors checkpoint"),
    "rate": ("1.0", "playback rate (1.0 = real time; lower it when the model is slower than the camera)"),
    "output_dir": ("", "evaluator report directory ('' = log the summary only)"),
    "namespace": ("/camera", "camera namespace in the bag: <ns>/image, <ns>/gt/label_mask, <ns>/gt/detections"),
    "use_rviz": ("false", "start RViz with rviz/vltseg.rviz"),
    "params_file": (os.path.join(SHARE, "config", "vltseg.yaml"), "vltseg_node parameter YAML"),
    "score_threshold": ("0.3", "detection score threshold, the same for the node and the evaluator"),
    "domain_name": ("online", "label of this run in the report"),
    "expected_frames": ("0", "frames in the bag; the evaluator finishes when all are scored (0 = at shutdown)"),
    "play_delay_s": ("10.0", "seconds between starting the nodes and starting playback"),
    "drain_s": ("5.0", "seconds to wait after playback for the last predictions before shutting down"),
    "rviz_config": (os.path.join(SHARE, "rviz", "vltseg.rviz"), "RViz config file"),
    "fastdds_builtin_transports": ("LARGE_DATA", "Fast DDS transports; LARGE_DATA is needed for best-effort "
                                                 "images of 1 MB and more"),
}

NODE_NAME = "vltseg"


def _actions(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    camera = "/" + arg("namespace").strip("/") if arg("namespace").strip("/") else ""
    score_threshold = float(arg("score_threshold"))
    play = ExecuteProcess(cmd=["ros2", "bag", "play", arg("bag"), "--clock", "--rate", arg("rate")],
                          output="screen", name="bag_play")
    evaluator = Node(
        package="vltseg_ros",
        executable="vltseg_eval_node",
        name="vltseg_eval",
        parameters=[{
            "use_sim_time": True,
            "pred_label_topic": f"/{NODE_NAME}/label_mask",
            "pred_detections_topic": f"/{NODE_NAME}/detections",
            "label_info_topic": f"/{NODE_NAME}/label_info",
            "gt_label_topic": f"{camera}/gt/label_mask",
            "gt_detections_topic": f"{camera}/gt/detections",
            "image_topic": f"{camera}/image",
            "output_dir": arg("output_dir"),
            "domain_name": arg("domain_name"),
            "expected_frames": int(arg("expected_frames")),
            "score_threshold": score_threshold,
        }],
        output="screen",
        emulate_tty=True,
    )
    perception = Node(
        package="vltseg_ros",
        executable="vltseg_node",
        name=NODE_NAME,
        parameters=[arg("params_file"), {"use_sim_time": True, "checkpoint": arg("checkpoint"),
                                         "score_threshold": score_threshold}],
        remappings=[("image", f"{camera}/image"), ("image/compressed", f"{camera}/image/compressed")],
        output="screen",
        emulate_tty=True,
    )
    shutdown = EmitEvent(event=Shutdown(reason="replay finished"))
    return [
        evaluator,
        perception,
        TimerAction(period=float(arg("play_delay_s")), actions=[play]),
        # Playback over: give the node time to publish its last predictions, then stop (the evaluator writes its
        # report on shutdown). The evaluator ending first (expected_frames scored) also ends the replay.
        RegisterEventHandler(OnProcessExit(target_action=play, on_exit=[
            TimerAction(period=float(arg("drain_s")), actions=[shutdown])])),
        RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=[shutdown])),
    ]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()]
        + [
            SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", LaunchConfiguration("fastdds_builtin_transports")),
            OpaqueFunction(function=_actions),
            Node(package="rviz2", executable="rviz2", arguments=["-d", LaunchConfiguration("rviz_config")],
                 condition=IfCondition(LaunchConfiguration("use_rviz")), parameters=[{"use_sim_time": True}]),
        ]
    )
