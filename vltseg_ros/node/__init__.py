"""The ROS 2 node: a thin adapter between camera topics and the ROS-free ``Predictor``.

This subpackage is the only part of ``vltseg_ros`` that imports rclpy and ROS message packages.
"""
