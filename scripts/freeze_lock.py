"""Print exact pins for every distribution pip installed in this environment (the lock file body).

``pip freeze`` is not enough here: the ROS 2 wheels also ship ``*.egg-info`` metadata for their inner Python
packages (e.g. ``action_msgs``), which look like distributions but exist on no index. Only distributions that
pip itself installed (an ``INSTALLER`` file in their metadata) are pinned.
"""
import importlib.metadata
import sys

SKIP = {"pip", "vltseg-ros", "vltseg_ros"}


def main() -> int:
    """Write sorted ``name==version`` lines to stdout."""
    pins = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name or name in SKIP or (dist.read_text("INSTALLER") or "").strip() != "pip":
            continue
        if (dist.read_text("direct_url.json") or "").find('"editable": true') >= 0:
            continue
        pins.add(f"{name}=={dist.version}")
    sys.stdout.write("".join(f"{p}\n" for p in sorted(pins, key=str.lower)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
