#!/usr/bin/env bash
# Br35H 64x64 gray end to end, as reported in docs/RESULTS.md:
# classifier -> medXGAN -> fidelity (Table 1 + C2ST) -> explanation report of annotated test positives.
# Usage: bash bench/br35h_pipeline.sh [OUT]   (needs ../shared/data/br35h; ~25 min on 2 CPU cores)
set -euo pipefail
OUT=${1:-runs/br35h}
DATA=${DATA:-../shared/data/br35h}
M=${MEDXGAN:-.venv/bin/medxgan}
$M train-classifier --data "$DATA" --positive yes --negative no --out "$OUT/clf" --no-progress
$M train --data "$DATA" --classifier "$OUT/clf" --out "$OUT/gan" --no-progress \
  --set gan.steps=3000 --set gan.lam=2 --set gan.lam_start=800 --set gan.lam_warmup=400 \
  --set gan.sample_every=250 --set gan.checkpoint_every=250
$M fidelity --model "$OUT/gan" --data "$DATA" --no-progress --out "$OUT/fidelity.json"
$M explain --model "$OUT/gan" --data "$DATA" --n 6 --out "$OUT/report" --no-progress --title "medXGAN on Br35H test positives"
