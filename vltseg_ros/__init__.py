"""vltseg_ros: VLTSeg/VLTDet domain-robust segmentation and detection, with a ROS 2 node.

The core (``config``, ``labels``, ``model``, ``checkpoint``, ``predictor``, ``metrics``) never imports rclpy;
the ROS node lives in ``vltseg_ros.node``.
"""
__version__ = "0.1.0"
