"""Point the ROS 2 wheels' exported CMake targets at this virtualenv's Python and numpy headers.

The ros-kilted-* wheels were built under a manylinux prefix ``<root>/python/cp311-cp311`` and their
``share/*/cmake/*.cmake`` exports keep those include paths, which breaks building interface packages
against them (docs/design.md#vision_msgs-on-a-pip-only-machine). Rewrites files inside ``sys.prefix`` only;
idempotent.
"""
import glob
import os
import re
import sys
import sysconfig

import numpy


def main() -> int:
    """Rewrite the build-machine include paths; print how many files changed."""
    py_inc, np_inc = sysconfig.get_paths()["include"], numpy.get_include()
    build = r'[^\s";]*/python/cp3\d+-cp3\d+'
    rules = [
        (re.compile(build + r"/lib/python3\.\d+/site-packages/numpy/_core/include"), np_inc),
        (re.compile(build + r"/include/python3\.\d+"), py_inc),
    ]
    changed = 0
    for path in glob.glob(os.path.join(sys.prefix, "share", "*", "cmake", "*.cmake")):
        with open(path, encoding="utf-8") as f:
            text = original = f.read()
        for pattern, new in rules:
            text = pattern.sub(lambda _m, new=new: new, text)
        if text != original:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            changed += 1
    print(f"fix_ros_cmake_paths: rewrote {changed} CMake export file(s) in {sys.prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
