#!/usr/bin/env bash
# Creates bench-venv/ with the Python peers for bench/envs_vs_peers.py. Benchmarks only:
# nothing in the build or the tests needs Python.
set -euo pipefail
# MuJoCo's offscreen renderer without a GPU needs OSMesa (pixel benchmark).
if ! ldconfig -p | grep -q libOSMesa; then apt-get update -qq && apt-get install -y -qq libosmesa6 libgl1; fi
cd "$(dirname "$0")/.."
python3 -m venv bench-venv
bench-venv/bin/pip install -q "gymnasium[mujoco]" mujoco envpool numpy safetensors imageio
