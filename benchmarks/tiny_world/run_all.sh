#!/usr/bin/env bash
# The whole training of the tiny world's models, from scratch, in fixed step counts (seeded: the
# same command makes the same files), about an hour on a 2-core CPU: the frozen T5, the VAE (two
# threads), the latent pool, the two transformers side by side (one thread each: on a 2-core
# machine two one-thread processes run far faster than one two-thread process each in turn), the
# LoRA of the content tests, then the evaluation (not training: the rates of evaluate.py).
#   OUT=/tmp/tw WORK=/tmp/tw_work nohup nice -n 5 benchmarks/tiny_world/run_all.sh > train.log 2>&1 &
# OUT defaults to the shipped folder, cogvideox_core/data/tiny_world. FROM=pool starts after the
# VAE; WAIT_PID waits for a running process first. Every stage logs its losses and minutes; the
# summaries land in $WORK/summary_<stage>.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
PY="${PY:-.venv/bin/python}"
OUT="${OUT:-cogvideox_core/data/tiny_world}"
WORK="${WORK:-${TMPDIR:-/tmp}/tiny_world_work}"
TRAIN="$PY -m benchmarks.tiny_world.train --out $OUT --work $WORK"
if [ -n "${WAIT_PID:-}" ]; then
  while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
fi
if [ "${FROM:-text}" = text ]; then
  OMP_NUM_THREADS=2 $TRAIN --threads 2 --stages text,vae --vae-steps "${VAE_STEPS:-1500}" --wrap 0.5
fi
$TRAIN --threads 2 --stages pool --pool 2048 --wrap 0.5
$TRAIN --threads 1 --stages t2v --t2v-steps "${DIT_STEPS:-4000}" & t2v=$!
$TRAIN --threads 1 --stages inp --inp-steps "${DIT_STEPS:-4000}" --inp-known 1,1,2 & inp=$!
wait "$t2v"
wait "$inp"
$PY -m benchmarks.tiny_world.train_lora --root "$OUT" --steps "${LORA_STEPS:-500}" --threads 1 --eval-n 8
if [ "${EVAL:-1}" = 1 ]; then
  OMP_NUM_THREADS=2 $TRAIN --threads 2 --stages eval --eval-cfg 6
fi
