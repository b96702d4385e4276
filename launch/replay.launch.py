"""Replay a bag into vltseg_node and score it online with vltseg_eval_node.

    ros2 launch vltseg_ros replay.launch.py bag:=data/bags/fog checkpoint:=/data/vltseg_l.safetensors \\
        output_dir:=reports/fog_online rate:=0.5

The node comes from vltseg.launch.py (so every one of its arguments works here too) with ``use_sim_time``, its
input on the bag's ``<bag_namespace>/image``. By default it scores every frame (a frame queue and reliable input instead
of keep-latest; ``score_every_frame:=false`` runs it as on a vehicle). The bag is played with its /clock by
``ros2 bag play`` where rosbag2 is installed, else by this package's player (``vltseg_bag_play``, which waits for
the node and the evaluator). When playback ends the launch waits ``drain_s`` for the last predictions, then shuts
down; the evaluator writes results.json/results.md/frames.jsonl to ``output_dir`` (and ends the launch itself once
``expected_frames`` are scored).
"""
import importlib.util
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, IncludeLaunchDescription, LogInfo,
                            OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable, TimerAction)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vltseg_ros.node import launch_support as support
from vltseg_ros.node.topics import CameraTopics, resolve

SHARE = get_package_share_directory("vltseg_ros")

# name -> (default, description); vltseg.launch.py's arguments are accepted as well
ARGUMENTS = {
    "bag": ("", "bag directory to replay (mcap or sqlite3, e.g. written by vltseg bag make)"),
    "checkpoint": ("", "path of the .safetensors checkpoint"),
    "rate": ("1.0", "playback rate (1.0 = real time; lower it when the model is slower than the camera)"),
    "output_dir": ("", "evaluator report directory ('' = log the summary only)"),
    "bag_namespace": ("/camera", "camera namespace in the bag: <ns>/image, <ns>/gt/label_mask, <ns>/gt/detections"),
    "score_threshold": ("0.3", "detection score threshold, the same for the node and the evaluator"),
    "score_every_frame": ("true", "queue frames (frame_queue, reliable input) so that every frame is scored; false "
                                  "= keep only the newest frame, as on a vehicle"),
    "domain_name": ("online", "label of this run in the report"),
    "expected_frames": ("0", "frames in the bag; the evaluator finishes when all are scored (0 = at shutdown)"),
    "player": ("auto", "auto (ros2 bag where rosbag2 is installed, else vltseg_bag_play), ros2bag or vltseg"),
    "play_delay_s": ("10.0", "ros2 bag play: seconds between starting the nodes and playback (vltseg_bag_play "
                             "waits for the subscribers instead)"),
    "drain_s": ("5.0", "seconds to wait after playback for the last predictions before shutting down"),
    "fastdds_builtin_transports": ("", "as in vltseg.launch.py: for every process of this launch, where supported"),
}

NODE_NAME = "vltseg"
EVALUATOR_STOP_S = "30"
"""Seconds the evaluator gets after SIGINT to write its report before launch sends SIGTERM."""
# What score_every_frame sets, unless given explicitly.
SCORE_EVERY_FRAME = {"frame_queue": "50", "input_qos.reliability": "reliable", "input_qos.depth": "50"}


def _actions(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    camera = "/" + arg("bag_namespace").strip("/") if arg("bag_namespace").strip("/") else ""
    node_args = {"checkpoint": arg("checkpoint"), "score_threshold": arg("score_threshold"), "use_sim_time": "true",
                 "image_topic": f"{camera}/image", "node_name": NODE_NAME}
    if arg("score_every_frame").lower() in ("true", "1", "yes"):
        node_args.update({k: v for k, v in SCORE_EVERY_FRAME.items()
                          if not context.launch_configurations.get(k)})
    outputs = CameraTopics("")
    # our executables start with SIGINT/SIGTERM blocked until their handlers are in (launch_support.py), under
    # their own names in launch's log
    prefix = support.blocked_start_prefix(context.launch_configurations.get("launch-prefix", ""))
    evaluator = Node(
        package="vltseg_ros",
        executable="vltseg_eval_node",
        name="vltseg_eval",
        parameters=[{
            "use_sim_time": True,
            "pred_label_topic": resolve(outputs.output("label_mask"), "", NODE_NAME),
            "pred_detections_topic": resolve(outputs.output("detections"), "", NODE_NAME),
            "pred_frame_score_topic": resolve(outputs.output("frame_score"), "", NODE_NAME),
            "label_info_topic": resolve(outputs.output("label_info"), "", NODE_NAME),
            "gt_label_topic": f"{camera}/gt/label_mask",
            "gt_detections_topic": f"{camera}/gt/detections",
            "image_topic": f"{camera}/image",
            "output_dir": arg("output_dir"),
            "domain_name": arg("domain_name"),
            "expected_frames": int(arg("expected_frames")),
            "score_threshold": float(arg("score_threshold")),
        }],
        output="screen",
        emulate_tty=True,
        # On SIGINT (the launch stopping) the evaluator writes its report and plots, which takes seconds on a busy
        # machine; it exits 0 by itself, so give it that time before escalating (default 5 s, SIGKILL 5 s later).
        sigterm_timeout=EVALUATOR_STOP_S,
        prefix=prefix,
        exec_name="vltseg_eval_node" if prefix else None,
    )
    node = IncludeLaunchDescription(PythonLaunchDescriptionSource(os.path.join(SHARE, "launch", "vltseg.launch.py")),
                                    launch_arguments=node_args.items())
    player = arg("player")
    if player == "auto":
        player = "ros2bag" if importlib.util.find_spec("ros2bag") else "vltseg"
    if player == "ros2bag":
        play = ExecuteProcess(cmd=["ros2", "bag", "play", arg("bag"), "--clock", "--rate", arg("rate")],
                              output="screen", name="bag_play")
        start_play = TimerAction(period=float(arg("play_delay_s")), actions=[play])
    elif player == "vltseg":
        # two subscribers on the camera topic: the node, and the evaluator counting input frames
        play = Node(package="vltseg_ros", executable="vltseg_bag_play", name="vltseg_bag_play", output="screen",
                    arguments=[arg("bag"), "--rate", arg("rate"), "--wait-for-subscribers", "2",
                               "--wait-timeout", "300"],
                    prefix=prefix, exec_name="vltseg_bag_play" if prefix else None)
        start_play = play
    else:
        raise ValueError(f"player:={player!r} is not one of auto, ros2bag, vltseg")
    shutdown = EmitEvent(event=Shutdown(reason="replay finished"))
    return [
        LogInfo(msg=f"replaying {arg('bag')} with {player}"),
        evaluator,
        node,
        start_play,
        # Playback over: give the node time to publish its last predictions, then stop (the evaluator writes its
        # report on shutdown). The evaluator ending first (expected_frames scored) also ends the replay.
        RegisterEventHandler(OnProcessExit(target_action=play, on_exit=[
            TimerAction(period=float(arg("drain_s")), actions=[shutdown])])),
        RegisterEventHandler(OnProcessExit(target_action=evaluator, on_exit=[shutdown])),
    ]


def _transports(context):
    value = LaunchConfiguration("fastdds_builtin_transports").perform(context)
    apply, _ = support.builtin_transports_plan(
        value, os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        support.fastdds_version(support.ament_prefixes()))
    return [SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", value)] if apply else []


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()]
        # before any process starts, so that the evaluator and the player use the node's transports
        + [OpaqueFunction(function=_transports), OpaqueFunction(function=_actions)]
    )
