"""ament_python / pip packaging for vltseg_ros.

The dependency ranges are deliberately loose: users on vehicles bring their own torch and ROS 2.
This repository's development environment pins exact versions in requirements/lock.txt.
"""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.develop import develop

PACKAGE = "vltseg_ros"
TRAIN_PACKAGE = "vltseg_train"
# colcon --symlink-install runs this file from build/<package>/, where only symlinks to the package's own files
# exist: find the README next to the real setup.py, not in the current directory.
README = Path(__file__).resolve().parent / "README.md"



class EnvShebangDevelop(develop):
    """``setup.py develop`` (what ``colcon build --symlink-install`` runs) writes console scripts for the interpreter
    that ran it and ignores ``[build_scripts] executable``; apt's colcon would name /usr/bin/python3, which cannot
    see a venv's torch. Write the same ``#!/usr/bin/env python3`` scripts that the plain install gets."""

    def install_wrapper_scripts(self, dist):
        from setuptools.command.develop import VersionlessRequirement
        from setuptools.command.easy_install import ScriptWriter

        if self.exclude_scripts:
            return
        header = ScriptWriter.get_header(executable=self.get_finalized_command("build_scripts").executable)
        for args in ScriptWriter.best().get_args(VersionlessRequirement(dist), header):
            self.write_script(*args)


setup(
    name=PACKAGE,
    version="0.1.0",
    description="VLTSeg/VLTDet domain-robust segmentation and detection, with a ROS 2 node",
    long_description=README.read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # The training/ folder installs as vltseg_train: a top-level "training" would collide with anything of that name.
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"])
    + [TRAIN_PACKAGE + name[len("training"):] for name in find_packages(include=["training", "training.*"])],
    package_dir={TRAIN_PACKAGE: "training"},
    package_data={TRAIN_PACKAGE: ["configs/*.yaml"]},
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
        "pillow>=9",
        "pyyaml>=6",
        "tqdm>=4.60",
        "rosbags>=0.10",
        "rosbags-image>=0.10",
        "mcap>=1.1",
        "apsw>=3.40",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout"],
        "train": ["pycocotools>=2.0.6", "matplotlib>=3.5", "tensorboard>=2.10"],
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
    },
    zip_safe=True,
    cmdclass={"develop": EnvShebangDevelop},
    entry_points={
        "console_scripts": [
            "vltseg = vltseg_ros.cli:main",
            "vltseg_node = vltseg_ros.node.node:main",
            "vltseg_eval_node = vltseg_ros.node.evaluator:main",
            "vltseg_bag_play = vltseg_ros.node.player:main",
        ],
        "vltseg.commands": [
            "synth = vltseg_ros.synth.cli",
            "train = vltseg_train.train",
            "eval = vltseg_train.evaluate",
            "bag = vltseg_train.bag_cli",
            "demo = vltseg_train.demo",
            "monitor = vltseg_train.monitor_cli",
        ],
    },
)
