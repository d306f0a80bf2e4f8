#!/usr/bin/env bash
# The whole training as run for the files it writes to cogvideox_core/data/tiny_world (not shipped yet):
# the T5 and the VAE, then the latent pool, then the two transformers side by side (one CPU
# thread each: on a shared 2-core machine one thread per process runs far faster than two),
# then the evaluation. FROM=pool starts after the VAE; WAIT_PID waits for a running stage first.
#   nohup nice -n 5 benchmarks/tiny_world/run_all.sh > tiny_world_train.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
TRAIN="${PY:-.venv/bin/python} -m benchmarks.tiny_world.train --threads 1"
if [ -n "${WAIT_PID:-}" ]; then
  while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 10; done
fi
if [ "${FROM:-text}" = text ]; then
  $TRAIN --stages text,vae --vae-minutes "${VAE_MINUTES:-22}"
fi
$TRAIN --stages pool --pool "${POOL:-4096}"
$TRAIN --stages t2v --t2v-minutes "${DIT_MINUTES:-50}" & t2v=$!
$TRAIN --stages inp --inp-minutes "${DIT_MINUTES:-50}" & inp=$!
wait "$t2v"
wait "$inp"
$TRAIN --stages eval --eval-cfg "${EVAL_CFG:-6}"
