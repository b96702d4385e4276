#!/usr/bin/env bash
# One command to set up a fresh machine: a virtualenv in .venv with every dependency pinned by
# requirements/lock.txt, this package installed editable, and the vision_msgs interface package
# (ros2_ws/src/vision_msgs) built into the venv when no vision_msgs is importable.
# Re-running is cheap: the pip step is skipped while the lock file is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${VLTSEG_VENV:-$root/.venv}
python=${PYTHON:-python3}

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

if "$py" -c "from vision_msgs.msg import LabelInfo, VisionClass, Detection2DArray" 2>/dev/null; then
  echo "[setup] vision_msgs is importable: not building ros2_ws/src/vision_msgs"
else
  echo "[setup] building ros2_ws/src/vision_msgs into $venv"
  "$py" scripts/fix_ros_cmake_paths.py
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  CMAKE_PREFIX_PATH="$venv" AMENT_PREFIX_PATH="$venv" cmake -S ros2_ws/src/vision_msgs -B "$build" \
    -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=Release > "$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
  cmake --build "$build" -j"$(nproc)" > "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
  cmake --install "$build" > /dev/null
  "$py" -c "from vision_msgs.msg import LabelInfo, VisionClass, Detection2DArray"
fi
echo "[setup] done: activate with 'source $venv/bin/activate'"
