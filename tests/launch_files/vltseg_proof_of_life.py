"""launch_testing proof of life: vltseg.launch.py with a tiny checkpoint reaches active and turns an image into a
label mask; at shutdown the node exits cleanly.

    launch_test tests/launch_files/vltseg_proof_of_life.py checkpoint:=/path/tiny.safetensors

Run by tests/test_ros_launch.py in a sourced ros2_ws install (the file is not named test_*.py: the main pytest run,
whose environment has no install to launch from, must not collect it).
"""
import array
import os
import time
import unittest

import launch
import launch_testing.actions
import launch_testing.asserts
import pytest
import rclpy
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


@pytest.mark.launch_test
def generate_test_description():
    vltseg = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(get_package_share_directory("vltseg_ros"), "launch",
                                                   "vltseg.launch.py")),
        launch_arguments={"checkpoint": LaunchConfiguration("checkpoint"), "device": "cpu"}.items())
    return launch.LaunchDescription([DeclareLaunchArgument("checkpoint"), vltseg,
                                     launch_testing.actions.ReadyToTest()]), {}


def _frame(stamp_s: int) -> Image:
    msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3)
    msg.header.stamp.sec = stamp_s
    msg.header.frame_id = "camera_optical"
    msg.data = array.array("B", bytes(range(256)) * (48 * 64 * 3 // 256))
    return msg


class TestVLTSegNode(unittest.TestCase):

    def test_node_reaches_active(self, proc_output):
        proc_output.assertWaitFor("]: active: ", timeout=120)

    def test_an_image_gives_a_label_mask(self, proc_output):
        proc_output.assertWaitFor("]: active: ", timeout=120)
        rclpy.init()
        node = rclpy.create_node("proof_of_life_probe")
        try:
            masks = []
            node.create_subscription(Image, "/vltseg/label_mask", masks.append, 10)
            pub = node.create_publisher(Image, "/image", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
            deadline = time.monotonic() + 60
            while not masks and time.monotonic() < deadline:
                pub.publish(_frame(1))
                rclpy.spin_once(node, timeout_sec=0.3)
            self.assertTrue(masks, "no label mask within 60 s")
            self.assertEqual((masks[0].encoding, masks[0].height, masks[0].width), ("mono8", 48, 64))
            self.assertEqual(masks[0].header.frame_id, "camera_optical")
        finally:
            node.destroy_node()
            rclpy.shutdown()


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):

    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
