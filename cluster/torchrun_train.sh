#!/bin/bash
# Multi-node DDP training with torchrun (no scheduler): run this on every node, from the repo root.
#   HEAD=10.0.0.1 NNODES=2 GPUS=4 bash cluster/torchrun_train.sh sinha mead [--set trainer.max_epochs=50 ...]
# HEAD: address of one node every node can reach (c10d rendezvous on PORT, default 29400).
# The strategy is not forced: pipeline.train builds DDP with what the method needs (GANs:
# find_unused_parameters). On CPU-only machines (or to try it on one machine, as
# tests/test_cluster.py does) use ACCELERATOR=cpu: Lightning then uses gloo; on GPUs NCCL.
set -euo pipefail
METHOD=${1:-eapc}
DATASET=${2:-mead}
shift $(( $# < 2 ? $# : 2 ))
: "${HEAD:?set HEAD to the rendezvous host}" "${NNODES:=2}" "${GPUS:=1}" "${ACCELERATOR:=gpu}" "${PORT:=29400}"
: "${WORKERS:=0}"  # DataLoader workers per rank
exec torchrun --nnodes "${NNODES}" --nproc-per-node "${GPUS}" \
  --rdzv-backend c10d --rdzv-endpoint "${HEAD}:${PORT}" --rdzv-id "talking-face-${METHOD}-${DATASET}" \
  -m pipeline.train --method "${METHOD}" --dataset "${DATASET}" --params "${PARAMS:-params.yaml}" \
  --set trainer.accelerator="${ACCELERATOR}" --set trainer.devices="${GPUS}" --set trainer.num_nodes="${NNODES}" \
  --set data.num_workers="${WORKERS}" "$@"
