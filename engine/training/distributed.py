"""Running one training command on K processes (``torchrun --nproc_per_node=K``): the process
group, gradient averaging over the trainable tensors, agreement on stop / checkpoint decisions,
replica checksums, and optional FSDP sharding of the big repeated blocks.

Data parallelism averages gradients with one flattened ``all_reduce`` over the trainable tensors
after ``backward`` instead of wrapping the model in DDP: the model is called through several
methods (``flow_loss``, ``understanding_forward``, the VAE's encoder/decoder), most of it is
frozen in every stage, and the average over exactly the tensors the optimizer updates is simple
and obviously correct. With ``--fsdp`` each decoder layer (where a 7B model's weights are) is
sharded with PyTorch's ``fully_shard`` (its gradients are reduce-scattered by FSDP); the
remaining tensors stay replicated and are averaged as above.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

    from engine.model import SynerMedGen


def _is_dtensor(t: torch.Tensor) -> TypeGuard[DTensor]:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded (DTensor) value; a plain tensor as it is. Collective for
    DTensors: every rank must call it in the same order."""
    return t.full_tensor() if _is_dtensor(t) else t


def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``reference``: sharded the same way if it is a DTensor."""
    if _is_dtensor(reference):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(reference.device, reference.dtype), reference.device_mesh,
                                 reference.placements)
    return value.to(reference.device, reference.dtype)


@dataclass
class Distributed:
    """This process's place in the run. ``world_size == 1`` (plain ``python``) makes every
    collective a no-op, so the trainer has one code path."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    mesh: object | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str, timeout_s: float = 1800.0) -> Distributed:
        """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*):
        NCCL on CUDA, gloo on CPU. Without those variables: a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        backend = "nccl" if device_type == "cuda" else "gloo"
        if not dist.is_initialized():
            if device_type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return cls(rank=rank, world_size=world, local_rank=local, backend=backend)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            # every rank tears gloo down together: without this barrier rank 0 aborted at teardown
            # ("terminate called without an active exception") in 3 of 9 runs of the 2-process test
            # here, in none of 18 with it
            dist.barrier()
            dist.destroy_process_group()

    # -- collectives ---------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def broadcast_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Make every rank hold rank 0's values (fresh initialisation, before training)."""
        if not self.enabled:
            return
        for t in tensors:
            if _is_dtensor(t):
                continue
            buffer = t.detach().to(self._device())
            dist.broadcast(buffer, src=0)
            with torch.no_grad():
                t.copy_(buffer.to(t.device))

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average the (plain-tensor) gradients over ranks in one flattened all_reduce; sharded
        (DTensor) gradients are left to FSDP, which already reduced them."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None and not _is_dtensor(p.grad)]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads]).to(self._device())
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g).to(g.device, g.dtype))
            offset += n

    def mean(self, value: float) -> float:
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Logical OR of each flag over ranks (stop requests, time-based checkpoints)."""
        if not self.enabled:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([float(bool(f)) for f in flags], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    def gather_floats(self, values: list[float]) -> list[list[float]]:
        """Every rank's ``values`` (same length on each), in rank order."""
        if not self.enabled:
            return [list(values)]
        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.tolist() for o in out]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0, then on the other ranks together: a cache the first run fills
        (an ONNX export beside the model) is filled once, then reused, never raced for."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def clip_gradients(params: list[nn.Parameter], max_norm: float, ctx: Distributed) -> float:
    """Scale gradients so their global L2 norm is at most ``max_norm``; returns the norm before.

    Sharded gradients contribute their shard's squares summed over ranks; replicated ones (already
    averaged, identical on every rank) are counted once."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    sharded = [g.to_local() for g in grads if _is_dtensor(g)]
    plain = [g for g in grads if not _is_dtensor(g)]
    device = grads[0].device if not sharded else sharded[0].device
    square = torch.zeros((), dtype=torch.float32, device=device)
    if sharded:
        square = torch.stack([g.float().pow(2).sum() for g in sharded]).sum()
        if ctx.enabled:
            dist.all_reduce(square)
    if plain:
        square = square + torch.stack([g.float().pow(2).sum().to(device) for g in plain]).sum()
    norm = square.sqrt()
    if max_norm > 0:
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            if _is_dtensor(g):
                g.to_local().mul_(coef.to(g.to_local().device, g.dtype))
            else:
                g.mul_(coef.to(g.device, g.dtype))
    return float(norm)


def shard_model(model: SynerMedGen, ctx: Distributed, device_type: str) -> int:
    """FSDP (``fully_shard``) over every decoder layer; returns how many blocks were sharded.

    Only blocks that every rank runs at every step may be sharded (each forward all-gathers
    their shards): the decoder layers qualify, the ViT does not (CFG dropout skips it on some
    ranks), so it stays replicated with the embeddings, heads, connectors and VAE. Call after
    the weights are loaded and before the optimizer is built."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # FSDP warns that a decoder layer returns a view; the model never modifies a layer's output
    # in place, and tests check that sharded training matches unsharded training.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device_type, (ctx.world_size,))
    ctx.mesh = mesh
    blocks = list(model.language_model.model.layers)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    return len(blocks)


def replica_checksums(tensors: Mapping[str, torch.Tensor], ctx: Distributed) -> list[float]:
    """One float64 fingerprint per rank of the given (replicated) tensors: Σ values weighted by a
    position-dependent factor, so equal checksums mean equal weights up to rounding."""
    total = torch.zeros((), dtype=torch.float64)
    for i, name in enumerate(sorted(tensors)):
        t = full_tensor(tensors[name]).detach().double().cpu().flatten()
        weights = torch.linspace(1.0, 2.0, t.numel(), dtype=torch.float64) * (1 + (i % 7) / 7)
        total += (t * weights).sum()
    return [row[0] for row in ctx.gather_floats([float(total)])]
