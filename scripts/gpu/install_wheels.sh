#!/usr/bin/env bash
# Install the GPU profile's packed wheels on an offline GPU machine (no network needed).
#   scripts/gpu/install_wheels.sh DIR
# DIR holds the pieces written by scripts/gpu/pack_wheels.py (gpu-wheels.tar.NN, in any sub-folders)
# and gpu-wheels.sha256. Joins the pieces, checks the SHA-256 of the whole and of every wheel,
# installs them with --no-deps into the python3 that holds the machine's CUDA torch (its torch stack
# stays untouched), and checks that vllm, ray.serve and the kit import.
set -euo pipefail
dir=${1:?usage: install_wheels.sh DIR}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
find "$dir" -name 'gpu-wheels.tar.*' | sort -t. -k3 | xargs cat > "$work/gpu-wheels.tar"
if [[ -f "$dir/gpu-wheels.sha256" ]]; then
  (cd "$work" && sha256sum -c "$(realpath "$dir/gpu-wheels.sha256")")
fi
tar -xf "$work/gpu-wheels.tar" -C "$work"
(cd "$work/whl" && awk '{print $4"  "$3}' ../MANIFEST.txt | sha256sum -c --quiet)
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$work"/whl/*.whl
"$py" - <<'PY'
import importlib
for name in ("vllm", "ray", "ray.serve", "pynvml"):
    mod = importlib.import_module(name)
    print(f"{name} {getattr(mod, '__version__', '')}")
PY
