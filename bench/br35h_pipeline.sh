#!/usr/bin/env bash
# Br35H 64x64 gray end to end, as reported in docs/RESULTS.md:
# classifier -> medXGAN (default recipe, 3000 steps) -> fidelity (Table 1 + realism)
# -> explanation report of outlined test positives -> evaluate (every experiment).
# Usage: bash bench/br35h_pipeline.sh [OUT]   (needs ../shared/data/br35h; about 1.5 h on 2 CPU cores)
# Each stage is skipped when its output exists, so an interrupted run continues where it stopped.
set -euo pipefail
OUT=${1:-runs/br35h}
DATA=${DATA:-../shared/data/br35h}
M=${MEDXGAN:-.venv/bin/medxgan}
STEPS=${STEPS:-3000}
[ -f "$OUT/clf/classifier.safetensors" ] || \
  $M train-classifier --data "$DATA" --positive yes --negative no --out "$OUT/clf" --no-progress
if [ ! -f "$OUT/gan/metrics.json" ]; then
  RESUME=""; [ -f "$OUT/gan/train_state.pt" ] && RESUME="--resume"
  $M train --data "$DATA" --classifier "$OUT/clf" --out "$OUT/gan" --no-progress $RESUME --set gan.steps="$STEPS"
fi
[ -f "$OUT/fidelity.json" ] || $M fidelity --model "$OUT/gan" --data "$DATA" --no-progress --out "$OUT/fidelity.json"
# the first test positives of the split that carry a VIA outline (--with-mask), outlines drawn on every map
$M explain --model "$OUT/gan" --data "$DATA" --with-mask --n 8 --out "$OUT/report" --no-progress --title "medXGAN on Br35H test positives"
[ -f "$OUT/eval/metrics.json" ] || $M evaluate --model "$OUT/gan" --data "$DATA" --out "$OUT/eval" --no-progress
