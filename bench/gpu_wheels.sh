#!/usr/bin/env bash
# Wheels of the packages lorafit needs that the device machines' image lacks (datasets and its
# pure-Python dependencies dill and multiprocess), for the device's Python 3.12 on x86-64, at the
# versions installed in .venv, into .whl/ (ignored by git). Carry .whl with the device run and
# install it there first (see README, "GPU"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# WITH_PYARROW=1 also fetches pyarrow (~45 MB) for an image whose pyarrow is older than datasets needs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
pkgs=(datasets dill multiprocess)
[ "${WITH_PYARROW:-0}" = 1 ] && pkgs+=(pyarrow)
mkdir -p .whl
for pkg in "${pkgs[@]}"; do
  v=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg==$v"
done
ls -la .whl
