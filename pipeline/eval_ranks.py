"""The processes of one evaluation run: device, rank, which test clips are this rank's, and sums of
plain counters over the ranks.

``python -m pipeline.evaluate_video`` runs as one process, or as N under ``torchrun`` / ``srun``
(``WORLD_SIZE`` / ``SLURM_NTASKS`` > 1). Every rank renders and scores the clips whose index in the
test split is ``rank`` modulo N; the torchmetrics states (sums and counts) are summed across the
ranks when ``compute()`` is called, which every rank does in the same order. The process group has
gloo for CPU tensors (the metric states stay on the CPU: they are a few scalars) and NCCL for CUDA
tensors when the evaluation runs on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.params import ParamsError


@dataclass(frozen=True)
class EvalRanks:
    """Attributes: ``rank`` / ``world`` (global), ``device`` the networks run on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether clip ``index`` (0-based position in the split) is this rank's."""
        return index % self.world == self.rank

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """``counts`` summed key by key over the ranks (keys that only some ranks have included)."""
        if self.world == 1:
            return dict(counts)
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, dict(counts))
        total: dict[str, int] = {}
        for part in gathered:
            for key, value in part.items():
                total[key] = total.get(key, 0) + value
        return total

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``evaluate.device``: ``auto`` (this rank's GPU when CUDA is available, else the CPU), ``cpu``,
    ``cuda`` (this rank's GPU) or an explicit ``cuda:N``.

    Raises:
        ParamsError: an unknown name, or ``cuda`` without a CUDA device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParamsError(f"evaluate.device: {name!r} but no CUDA device is available (use auto or cpu)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    raise ParamsError(f"evaluate.device: must be auto, cpu, cuda or cuda:N, got {name!r}")


def eval_ranks(device: str = "auto") -> EvalRanks:
    """This process's place in the evaluation, from torchrun's (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) or SLURM's environment (``SLURM_PROCID``,
    ``SLURM_NTASKS``, ``SLURM_LOCALID``; the main address from ``SLURM_NODELIST`` as Lightning reads
    it); initialises the process group when there are several ranks and none exists yet."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        slurm = SLURMEnvironment()
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
        os.environ.setdefault("MASTER_ADDR", slurm.main_address)
        os.environ.setdefault("MASTER_PORT", str(slurm.main_port))
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    resolved = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "cpu:gloo,cuda:nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world)
    return EvalRanks(rank=rank, world=world, device=resolved)
