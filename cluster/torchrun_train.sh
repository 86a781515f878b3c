#!/bin/bash
# Multi-node DDP training with torchrun (no scheduler): run this on every node.
#   HEAD=10.0.0.1 NNODES=2 GPUS=4 bash cluster/torchrun_train.sh eapc mead
# HEAD: address of one node every node can reach (c10d rendezvous on port 29400).
# On CPU-only machines (or to try it on one machine, as tests/test_train.py does) use
# ACCELERATOR=cpu: Lightning then uses the gloo backend; on GPUs it uses NCCL.
set -euo pipefail
METHOD=${1:-eapc}
DATASET=${2:-mead}
: "${HEAD:?set HEAD to the rendezvous host}" "${NNODES:=2}" "${GPUS:=1}" "${ACCELERATOR:=gpu}"
exec torchrun --nnodes "${NNODES}" --nproc-per-node "${GPUS}" \
  --rdzv-backend c10d --rdzv-endpoint "${HEAD}:29400" --rdzv-id "talking-face-${METHOD}-${DATASET}" \
  -m pipeline.train --method "${METHOD}" --dataset "${DATASET}" \
  --set trainer.accelerator="${ACCELERATOR}" --set trainer.strategy=ddp \
  --set trainer.devices="${GPUS}" --set trainer.num_nodes="${NNODES}"
