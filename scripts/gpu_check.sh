#!/usr/bin/env bash
# The kit's GPU checks as one prepared call (a lent GPU machine has a few minutes: run this once, fetch OUT):
#   1. the device-dependent tests on CUDA (tests/test_gpu.py, and the layout/exactness tests);
#   2. 15 epochs of `classic` and of the tiny search winner with `train --device cuda` (timings in epochs.csv);
#   3. the tiny submission notebook exported and executed on the GPU.
# Results go under OUT (default logs/bench/gpu/), with summary.txt last. Without CUDA: one error line, exit 2.
#   bash scripts/gpu_check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-logs/bench/gpu}
if [ -z "${MNIST_DATA_DIR:-}" ]; then
  for dir in shared/data/mnist ../shared/data/mnist; do
    [ -d "$dir" ] && export MNIST_DATA_DIR="$(cd "$dir" && pwd)" && break
  done
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "error: no CUDA GPU here (torch.cuda.is_available() is False with $PY): these checks need one" >&2
  exit 2
fi
mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

echo "== tests on CUDA" | tee "$OUT/tests.txt"
"$PY" -m pytest -q tests/test_gpu.py tests/test_layouts.py >> "$OUT/tests.txt" 2>&1 || status=1
tail -n 1 "$OUT/tests.txt"

for spec in classic logs/search/budget-tiny/best_spec.json; do
  name="gpu-$(basename "$(dirname "$spec")")-$(basename "$spec" .json)"
  [ "$spec" = classic ] && name=gpu-classic
  rm -rf "${OUT:?}/runs/$name"
  echo "== 15 epochs of $spec on CUDA -> $OUT/runs/$name"
  "$PY" -m mnist_challenge train --spec "$spec" --epochs 15 --device cuda --out "$OUT/runs" --name "$name" \
    > "$OUT/train-$name.txt" 2>&1 || status=1
  tail -n 2 "$OUT/train-$name.txt"
done

echo "== the tiny submission notebook, executed on CUDA"
"$PY" -m mnist_challenge export-notebook logs/submission/tiny/seed1 -o "$OUT/submission_tiny_gpu.ipynb" \
  --max-params 5000 --max-epochs 15 --execute > "$OUT/notebook.txt" 2>&1 || status=1
tail -n 1 "$OUT/notebook.txt"

"$PY" - "$OUT" > "$OUT/summary.txt" <<'PYEOF'
import csv, sys
from pathlib import Path
out = Path(sys.argv[1])
for run in sorted((out / "runs").glob("*")):
    rows = list(csv.DictReader(open(run / "epochs.csv")))
    if rows:
        train = sum(float(r["seconds"]) for r in rows)
        evals = sum(float(r["eval_seconds"]) for r in rows)
        print(f"{run.name}: {len(rows)} epochs, training {train:.1f} s, evaluation {evals:.1f} s, "
              f"last test acc {float(rows[-1]['test_acc']):.2f}%")
PYEOF
cat "$OUT/summary.txt"
exit $status
