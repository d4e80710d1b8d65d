#!/usr/bin/env bash
# One-time, idempotent set-up of the CPU profile.
#   - inside an active conda env ($CONDA_PREFIX): installs into it;
#   - otherwise: creates ./.venv (Python >= 3.10; 3.11 is what the lock was made with).
# Installs the full lock with --no-deps (so torchvision / torchaudio / torchcodec, which break beside
# torch 2.13.0+cpu, never arrive), removes those three if something else brought them, installs the
# kit in editable mode, checks that `import vllm` works, and writes a stamp so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=requirements/cpu.txt
if [[ -n "${CONDA_PREFIX:-}" && "${LABKIT_USE_VENV:-0}" != "1" ]]; then
  py="$CONDA_PREFIX/bin/python"
  where="conda env $CONDA_PREFIX"
else
  if [[ ! -x .venv/bin/python ]]; then
    base=${PYTHON:-}
    if [[ -z "$base" ]]; then
      for cand in python3.11 python3.12 python3.10 python3; do
        if command -v "$cand" >/dev/null 2>&1; then base=$cand; break; fi
      done
    fi
    "$base" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
      echo "labkit setup: Python >= 3.10 is needed, found $("$base" --version 2>&1). Set PYTHON=/path/to/python3.11." >&2
      exit 2
    }
    "$base" -m venv .venv
  fi
  py=.venv/bin/python
  where=".venv"
fi
stamp_dir=$("$py" -c 'import sys; print(sys.prefix)')
want=$(cat "$lock" pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$stamp_dir/.labkit-setup"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "labkit setup: $where is up to date"
  exit 0
fi
echo "labkit setup: installing the CPU profile into $where (a few minutes the first time)"
start=$(date +%s)
"$py" -m pip install -q --upgrade "pip>=24" 2>&1 | grep -v "^WARNING: Location" || true
# torch 2.13.0+cpu: from the configured sources (a local wheel folder or mirror) when they have it,
# else from PyTorch's CPU index (override with LABKIT_TORCH_INDEX).
if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.__version__ == "2.13.0+cpu" else 1)' 2>/dev/null; then
  if ! "$py" -m pip install -q --no-deps "torch==2.13.0+cpu" 2>&1 | grep -v "^WARNING: Location"; then :; fi
  if ! "$py" -c 'import torch' 2>/dev/null; then
    "$py" -m pip install -q --no-deps "torch==2.13.0+cpu" \
      --extra-index-url "${LABKIT_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
fi
"$py" -m pip install -q --no-deps -r "$lock" 2>&1 | grep -v "^WARNING: Location" || true
"$py" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# setuptools prints an informational banner for every editable install: show its output only on failure.
if ! kit_out=$("$py" -m pip install -q --no-deps -e . 2>&1); then
  echo "$kit_out" | grep -v "^WARNING: Location" >&2
  echo "labkit setup: installing the kit itself (pip install -e .) failed; the lines above say why." >&2
  exit 1
fi
# Fail loudly if the stack does not import.
VLLM_LOGGING_LEVEL=WARNING "$py" - <<'PY'  # vLLM's INFO on import is not news here
import importlib, sys
missing = []
for name in ("torch", "vllm", "ray", "ray.serve", "transformers", "labkit", "papermill", "jupyterlab", "matplotlib"):
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001
        missing.append(f"{name}: {err!r}")
if missing:
    print("labkit setup: these imports fail:\n  " + "\n  ".join(missing), file=sys.stderr)
    sys.exit(1)
PY
echo "$want" > "$stamp"
echo "labkit setup: done in $(( $(date +%s) - start )) s ($(du -sh "$stamp_dir" | cut -f1) in $where)"
