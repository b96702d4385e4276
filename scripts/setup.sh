#!/usr/bin/env bash
# One command to set up a fresh machine without a ROS install (this repository's development and CI machines):
#  1. a virtualenv in .venv with every dependency pinned by requirements/lock.txt (torch, the ROS 2 Kilted wheels,
#     colcon, test tools) and this package installed editable;
#  2. the vision_msgs interface package (ros2_ws/src/vision_msgs) built into the venv, unless a ROS install
#     provides vision_msgs;
#  3. where the ROS 2 launch/CLI kit exists (../shared/ros, or $VLTSEG_ROS_KIT): the kit in .venv (ros2 launch,
#     the ros2 CLI, launch_testing), and a small venv .venv/humble-launch with Humble's launch and launch_ros, in
#     which the tests run the launch files once more. Without the kit, the tests that need it skip.
# Re-running is cheap: every step is skipped while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${VLTSEG_VENV:-$root/.venv}
python=${PYTHON:-python3}
kit=${VLTSEG_ROS_KIT:-$root/../shared/ros}

tree_hash() { find "$@" -type f ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16; }

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
stamp="$venv/.vltseg-lock.sha256"
lock_hash=$(sha256sum requirements/lock.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  echo "[setup] installing pinned dependencies (requirements/lock.txt)"
  "$py" -m pip install -q --no-cache-dir --upgrade pip
  "$py" -m pip install -q --no-cache-dir -r requirements/lock.txt
  echo "$lock_hash" > "$stamp"
fi
echo "[setup] installing vltseg_ros (editable)"
"$py" -m pip install -q --no-deps --no-build-isolation -e .

# vision_msgs: rebuilt whenever its sources change; left alone where a ROS install provides it.
vm_src=ros2_ws/src/vision_msgs
vm_hash=$(tree_hash "$vm_src")
vm_stamp="$venv/.vltseg-vision-msgs.sha256"
vm_origin=$("$py" -c "import os, vision_msgs; print(os.path.dirname(vision_msgs.__file__))" 2>/dev/null || true)
if [ "$(cat "$vm_stamp" 2>/dev/null)" = "$vm_hash" ]; then
  echo "[setup] vision_msgs: up to date"
elif [ -n "$vm_origin" ] && [ "${vm_origin#"$venv"/}" = "$vm_origin" ]; then
  echo "[setup] vision_msgs is provided by $vm_origin: not building $vm_src"
else
  echo "[setup] building $vm_src into $venv"
  "$py" scripts/fix_ros_cmake_paths.py
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  CMAKE_PREFIX_PATH="$venv" AMENT_PREFIX_PATH="$venv" cmake -S "$vm_src" -B "$build" \
    -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=Release > "$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
  cmake --build "$build" -j"$(nproc)" > "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
  cmake --install "$build" > /dev/null
  "$py" -c "from vision_msgs.msg import LabelInfo, VisionClass, Detection2DArray, VisionInfo"
  echo "$vm_hash" > "$vm_stamp"
fi

# The ROS 2 launch/CLI kit: rolling into .venv; Humble's launch and launch_ros into a venv of their own, because
# `install.sh --distro humble` removes launch_testing, which the rest of the suite needs.
if [ -f "$kit/install.sh" ]; then
  bash "$kit/install.sh" "$py"
  humble="$venv/humble-launch"
  humble_hash=$(cat requirements/lock.txt requirements/humble-launch.txt | sha256sum | cut -c1-16)
  if [ ! -x "$humble/bin/python" ] || [ "$(cat "$humble/.vltseg-stamp" 2>/dev/null)" != "$humble_hash" ]; then
    echo "[setup] creating $humble (Humble's launch and launch_ros, for the launch-file tests)"
    rm -rf "$humble"
    "$python" -m venv "$humble"
    "$humble/bin/python" -m pip install -q --no-cache-dir -c requirements/lock.txt -r requirements/humble-launch.txt
    echo "$humble_hash" > "$humble/.vltseg-stamp"
  fi
  bash "$kit/install.sh" --distro humble "$humble/bin/python"
else
  echo "[setup] no ROS 2 launch/CLI kit at $kit: the ros2 launch and CLI tests will skip"
fi
echo "[setup] done: activate with 'source $venv/bin/activate'"
