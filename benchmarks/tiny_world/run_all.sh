#!/usr/bin/env bash
# The whole training of the files in cogvideox_core/data/tiny_world, from scratch, one stage after
# the other: the frozen T5, the VAE, the latent pool, the two transformers side by side (one CPU
# thread each: on a 2-core machine one thread per process runs far faster than two), the
# evaluation, then the LoRA of the content tests. FROM=pool starts after the VAE; WAIT_PID waits
# for a running stage first.
#   nohup nice -n 5 benchmarks/tiny_world/run_all.sh > tiny_world_train.log 2>&1 &
# The shipped models were trained in rounds as the world was being designed, each from the one
# before (so this script, from scratch, has not made these exact files):
# - VAE (--vae-init): 1642 + 774 + 782 steps on an earlier version of the world (64x64, more
#   colours and shapes, no background or decoder-noise terms), 900 steps on this world inside the
#   frame (--vae-steps 900 --vae-lr 2e-3 --vae-round 3), then 700 steps with half the clips
#   anywhere on the torus (--vae-steps 700 --vae-lr 1e-3 --vae-round 4 --wrap 0.5): 88.5 minutes
#   in all (23.6 + 16.1 + 11.2 + 21.8 + 15.8).
# - transformers: 5320 (text-to-video) and 5281 (Fun InP) steps on a pool of clips inside the
#   frame (--t2v-minutes 50 / --inp-minutes 50 below, no --wrap: 45.9 and 45.6 minutes), then
#   continued on a pool of 2048 clips, half of them anywhere on the torus (--stages pool --pool
#   2048 --wrap 0.5): --continue --round 2 --lr 7e-4 --t2v-steps 3669 (32.1 min) and the same with
#   --inp-steps 3684 --inp-known 1,1,2 (32.4 min; twice the start+end samples).
# - the LoRA: 500 steps (--steps 500) on the final text-to-video model.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
PY="${PY:-.venv/bin/python}"
TRAIN="$PY -m benchmarks.tiny_world.train --threads 1"
if [ -n "${WAIT_PID:-}" ]; then
  while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
fi
if [ "${FROM:-text}" = text ]; then
  $TRAIN --stages text,vae --vae-minutes "${VAE_MINUTES:-70}" --wrap "${WRAP:-0.5}"
fi
$TRAIN --stages pool --pool "${POOL:-2048}" --wrap "${WRAP:-0.5}"
$TRAIN --stages t2v --t2v-minutes "${DIT_MINUTES:-50}" & t2v=$!
$TRAIN --stages inp --inp-minutes "${DIT_MINUTES:-50}" & inp=$!
wait "$t2v"
wait "$inp"
$TRAIN --stages eval --eval-cfg "${EVAL_CFG:-6}"
$PY -m benchmarks.tiny_world.train_lora --minutes "${LORA_MINUTES:-4}" --threads 1 --eval-n 8
