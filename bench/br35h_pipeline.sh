#!/usr/bin/env bash
# Br35H 64x64 gray end to end, as reported in docs/RESULTS.md:
# classifier -> medXGAN -> encoder -> fidelity (Table 1 + C2ST) -> explanation report of annotated test positives.
# Usage: bash bench/br35h_pipeline.sh [OUT]   (needs ../shared/data/br35h; ~30 min on 2 CPU cores)
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
  $M train --data "$DATA" --classifier "$OUT/clf" --out "$OUT/gan" --no-progress $RESUME \
    --set gan.steps="$STEPS" --set gan.batch_size=24 --set gan.lam=3 --set gan.lam_start=300 --set gan.lam_warmup=200 \
    --set gan.ema=0.99 --set gan.ema_start=300 --set gan.sample_every=400 --set gan.checkpoint_every=400
fi
[ -f "$OUT/gan/encoder.safetensors" ] || $M train-encoder --model "$OUT/gan" --data "$DATA" --steps 1000 --no-progress
$M fidelity --model "$OUT/gan" --data "$DATA" --no-progress --out "$OUT/fidelity.json"
$M explain --model "$OUT/gan" --data "$DATA" --n 6 --out "$OUT/report" --no-progress --title "medXGAN on Br35H test positives"
