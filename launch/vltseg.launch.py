"""Launch vltseg_node (and optionally RViz).

    ros2 launch vltseg_ros vltseg.launch.py checkpoint:=/data/vltseg_l.safetensors image_topic:=/camera/image_raw
    ros2 launch vltseg_ros vltseg.launch.py checkpoint:=... cameras:="[front, rear]" namespace:=/robot \\
        image_topics:="[/front/image_raw, /rear/image_raw]" use_camera_info:=true use_rviz:=true
    ros2 launch vltseg_ros vltseg.launch.py --show-args     # every argument

Every node parameter is also a launch argument of the same name (``score_threshold:=0.5``,
``publish.overlay:=false``); given ones override ``params_file``. Inputs are remapped per camera (camera_info follows
its image topic unless given), any other topic through ``remappings``. With ``use_rviz:=true`` RViz gets a config
generated for the topics of this launch (namespace, cameras, remappings).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from vltseg_ros.node import launch_support as support

SHARE = get_package_share_directory("vltseg_ros")
DEFAULT_PARAMS = os.path.join(SHARE, "config", "vltseg.yaml")
PARAMETERS = support.parameter_defaults(DEFAULT_PARAMS)  # every node parameter -> its default

# name -> (default, description); the node parameters come on top, one argument each
ARGUMENTS = {
    "params_file": (DEFAULT_PARAMS, "node parameter YAML; parameter arguments given here override it"),
    "namespace": ("", "namespace of the node and its topics"),
    "node_name": ("vltseg", "node name (outputs are ~/label_mask etc. under it)"),
    "image_topic": ("", "one camera: the image topic to subscribe ('' = image in the namespace)"),
    "camera_info_topic": ("", "one camera: its CameraInfo topic ('' = camera_info next to image_topic)"),
    "image_topics": ("", "several cameras: YAML list, one image topic per entry of cameras ('' = <camera>/image)"),
    "camera_info_topics": ("", "several cameras: YAML list of CameraInfo topics ('' = next to each image topic)"),
    "remappings": ("", "YAML mapping of any other node topic to a topic, e.g. \"{'~/detections': /perception/boxes}\""),
    "use_sim_time": ("false", "use /clock (bag replay with --clock)"),
    "use_rviz": ("false", "start RViz with a config for this launch's topics"),
    "rviz_config": ("", "RViz config file ('' = generated from rviz/vltseg.rviz for this launch's topics)"),
    "rviz_fixed_frame": ("camera_optical", "RViz fixed frame: the images' frame_id, which the markers use"),
    "fastdds_builtin_transports": ("", "Fast DDS builtin transports for the processes of this launch, e.g. "
                                       "LARGE_DATA; only where the installed Fast DDS supports it. '' = the "
                                       "environment's. Every process that should see the node needs the same"),
}


def _launch(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    node_name, namespace = arg("node_name"), arg("namespace")
    overrides = support.parameter_overrides({name: arg(name) for name in PARAMETERS}, PARAMETERS)
    # What the node will run with: the defaults, the params file, then the arguments given here.
    effective = {**PARAMETERS, **support.node_parameters(arg("params_file"), node_name, namespace), **overrides}
    cameras = effective["cameras"]
    image_topics = support.yaml_list("image_topics", arg("image_topics")) or [arg("image_topic")] * len(cameras)
    info_topics = (support.yaml_list("camera_info_topics", arg("camera_info_topics"))
                   or [arg("camera_info_topic")] * len(cameras))
    if len(cameras) > 1 and (arg("image_topic") or arg("camera_info_topic")):
        raise ValueError(f"cameras {cameras}: give image_topics/camera_info_topics lists, not image_topic")
    remappings = (list(support.yaml_mapping("remappings", arg("remappings")).items())
                  + support.input_remappings(cameras, image_topics, info_topics))

    actions = []
    apply, message = support.builtin_transports_plan(
        arg("fastdds_builtin_transports"), os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"),
        support.fastdds_version(support.ament_prefixes()))
    if message:
        actions.append(LogInfo(msg=message))
    if apply:
        actions.append(SetEnvironmentVariable("FASTDDS_BUILTIN_TRANSPORTS", arg("fastdds_builtin_transports")))
    use_sim_time = arg("use_sim_time").lower() in ("true", "1", "yes")
    # A Ctrl-C while the node's Python is still starting waits for its handlers instead of a traceback; the process
    # keeps its name in launch's log (not the prefix's "sh").
    prefix = support.blocked_start_prefix(context.launch_configurations.get("launch-prefix", ""))
    actions.append(Node(
        package="vltseg_ros",
        executable="vltseg_node",
        name=node_name,
        namespace=namespace,
        parameters=[arg("params_file"), dict(overrides, use_sim_time=use_sim_time)],
        remappings=remappings,
        output="screen",
        emulate_tty=True,
        prefix=prefix,
        exec_name="vltseg_node" if prefix else None,
    ))
    if arg("use_rviz").lower() in ("true", "1", "yes"):
        config = arg("rviz_config") or support.write_rviz_config(
            os.path.join(SHARE, "rviz", "vltseg.rviz"),
            support.camera_views(cameras, namespace, node_name, remappings,
                                 effective["input_transport"] == "compressed"),
            arg("rviz_fixed_frame"))
        actions += [LogInfo(msg=f"RViz config: {config}"),
                    Node(package="rviz2", executable="rviz2", arguments=["-d", config],
                         parameters=[{"use_sim_time": use_sim_time}], output="screen")]
    return actions


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGUMENTS.items()]
        + [DeclareLaunchArgument(name, default_value="", description=f"node parameter (default {default!r}; "
                                                                      f"'' = the params file's value)")
           for name, default in PARAMETERS.items()]
        + [OpaqueFunction(function=_launch)]
    )
