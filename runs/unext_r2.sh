#!/usr/bin/env bash
# Recipe r2 of issue 19 (model 0.3): five folds, each trained on the 64 patients of the other four
# folds, the last epoch kept (nnU-Net style); the test fold is only watched.
# Frozen code: runs/code_r2 = `git archive e7f399a pipeline` (the recipe is that of 9c02015), made here
# when missing. Start or resume (finished folds are skipped, an interrupted one resumes from its last
# epoch checkpoint):  nohup runs/unext_r2.sh >> runs/unext_r2.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d runs/code_r2/pipeline ]; then
    mkdir -p runs/code_r2 && git archive e7f399a pipeline | tar -x -C runs/code_r2
fi
FOLDS=${FOLDS:-3 4 0 1 2}
PYTHONSAFEPATH=1 PYTHONPATH=$PWD/runs/code_r2 OMP_NUM_THREADS=2 .venv/bin/python -m pipeline.cli cv \
    --data data/lgg --output runs --name unext_r2 --arch unext \
    --deep-supervision --batch-dice --optimizer adamw --lr 1e-3 --weight-decay 1e-2 --warmup-epochs 2 \
    --context 1 --epochs 30 --val-interval 5 --seed 0 --no-progress --train-on-all \
    --prob-skull-strip 0.25 --prob-sequence-dropout 0.1 --prob-zoom 0.3 --zoom-range 0.75 1.3 \
    --prob-bias-field 0.2 --prob-histogram-shift 0.2 --prob-smooth 0.1 --prob-noise 0.1 \
    --folds $FOLDS
