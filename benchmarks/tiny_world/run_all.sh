#!/usr/bin/env bash
# The whole training of the files in cogvideox_core/data/tiny_world, from scratch, one stage after
# the other: the frozen T5, the VAE, the latent pool, the two transformers side by side (one CPU
# thread each: on a 2-core machine one thread per process runs far faster than two), the
# evaluation, then the LoRA of the content tests. FROM=pool starts after the VAE; WAIT_PID waits
# for a running stage first.
#   nohup nice -n 5 benchmarks/tiny_world/run_all.sh > tiny_world_train.log 2>&1 &
# The shipped VAE was trained in rounds as the world was being designed (each from the one
# before, --vae-init): 1642 + 774 + 782 steps on an earlier version of the world (64x64, more
# colours and shapes, no background or decoder-noise terms), then 900 steps on this world
# (--vae-steps 900 --vae-lr 2e-3 --vae-round 3): 72.7 minutes in all. The transformers and the
# LoRA were trained exactly as below (--t2v-minutes 50 became 5320 steps, --inp-minutes 50 5281:
# pass those as --t2v-steps/--inp-steps to repeat them).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
PY="${PY:-.venv/bin/python}"
TRAIN="$PY -m benchmarks.tiny_world.train --threads 1"
if [ -n "${WAIT_PID:-}" ]; then
  while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
fi
if [ "${FROM:-text}" = text ]; then
  $TRAIN --stages text,vae --vae-minutes "${VAE_MINUTES:-70}"
fi
$TRAIN --stages pool --pool "${POOL:-2048}"
$TRAIN --stages t2v --t2v-minutes "${DIT_MINUTES:-50}" & t2v=$!
$TRAIN --stages inp --inp-minutes "${DIT_MINUTES:-50}" & inp=$!
wait "$t2v"
wait "$inp"
$TRAIN --stages eval --eval-cfg "${EVAL_CFG:-6}"
$PY -m benchmarks.tiny_world.train_lora --minutes "${LORA_MINUTES:-4}" --threads 1 --eval-n 8
