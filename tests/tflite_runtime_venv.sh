#!/usr/bin/env bash
# Builds .venv-tflite-runtime: tflite-runtime needs numpy<2, so it cannot share .venv.
# Idempotent: a complete venv (stamp + importable runtime) is left alone.
# The `tflite_runtime` test tier runs pifarm.inference.runtime in it as a subprocess.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tflite-runtime
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.installed-v1"
if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import tflite_runtime.interpreter, numpy" 2>/dev/null; then
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -U pip
"$VENV/bin/pip" install -q "tflite-runtime>=2.13" "numpy<2"
"$VENV/bin/python" -c "import tflite_runtime, numpy; print('tflite-runtime', tflite_runtime.__version__, 'numpy', numpy.__version__)"
touch "$STAMP"
