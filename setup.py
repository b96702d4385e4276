"""ament_python / pip packaging for vltseg_ros.

The dependency ranges are deliberately loose: users on vehicles bring their own torch and ROS 2.
This repository's development environment pins exact versions in requirements/lock.txt.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vltseg_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="VLTSeg/VLTDet domain-robust segmentation and detection, with a ROS 2 node",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "training", "training.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/rviz", glob("rviz/*.rviz")),
    ],
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=1.0.18",
        "open_clip_torch>=2.24",
        "safetensors>=0.4",
        "numpy>=1.23",
        "scipy>=1.10",
        "opencv-python-headless>=4.6",
        "pyyaml>=6",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout"],
        "train": ["pycocotools>=2.0.6", "matplotlib>=3.5", "tensorboard>=2.10"],
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "vltseg = vltseg_ros.cli:main",
            "vltseg_node = vltseg_ros.node.node:main",
            "vltseg_eval_node = vltseg_ros.node.evaluator:main",
        ],
        "vltseg.commands": [
            "synth = vltseg_ros.synth.cli",
            "train = training.train",
            "eval = training.evaluate",
            "bag = training.bag_cli",
            "demo = training.demo",
        ],
    },
)
