#!/usr/bin/env bash
# Creates bench/.venv with the Python peers of the benchmark suite: NumPy, JAX (CPU), PyTorch
# (CPU only) and Brian2, all from PyPI. Idempotent: re-running only installs what is missing.
#
# PyTorch: the CPU-only wheels live on the PyTorch index, which may be unreachable from a
# machine that only reaches PyPI. Then PyPI's `torch` is installed: on Linux it is a CUDA build
# whose import preloads the CUDA libraries, so it needs its nvidia-*/cuda-toolkit dependencies
# (several GB on disk) even to run on CPU; the benchmark only uses the CPU. What was done is
# written to bench/.venv/torch-source.txt (run.py reports it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --upgrade pip >/dev/null
# Brian2 2.9 (the newest for this Python) uses ndarray.ptp, which NumPy 2.4 removed.
"${pip[@]}" install "numpy<2.4" "jax[cpu]" brian2 setuptools

if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  if timeout 60 "${pip[@]}" install --timeout 20 --retries 0 torch --index-url https://download.pytorch.org/whl/cpu; then
    echo "torch from the PyTorch CPU index" >"$venv/torch-source.txt"
  else
    echo "setup.sh: the PyTorch CPU index is unreachable; installing PyPI's torch (a CUDA build)" >&2
    "${pip[@]}" install torch
    echo "torch from PyPI (CUDA build with its CUDA dependencies; the CPU-only index was unreachable; venv $(du -sh "$venv" | cut -f1))" >"$venv/torch-source.txt"
  fi
fi
"$venv/bin/python" - <<'PY'
import numpy, jax, torch, brian2
print("numpy", numpy.__version__, "| jax", jax.__version__, "| torch", torch.__version__,
      "| brian2", brian2.__version__)
PY
