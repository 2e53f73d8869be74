"""Where and how a run executes: device, precision, seeding, the network's placement and DDP
wrapping (for both engines), memory figures."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.errors import SpecError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a stop decision all ranks must share)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where enabled (the norm on GPU); a no-op otherwise."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


def resolve(device: str, precision: str) -> Runtime:
    """Pick the device (``auto`` → CUDA if present), bf16 (``auto`` → on for CUDA, off on CPU:
    measured 12–23 % slower for CNNs there) and join the process group when started by torchrun."""
    rank, world = 0, 1
    if dist.is_available() and dist.is_torchelastic_launched():
        rank, world = _init_distributed(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    return Runtime(dev, bf16, rank, world)


def optimizer_options(runtime: Runtime) -> dict[str, bool]:
    """How AdamW runs: fused kernels on CUDA (one launch for every tensor), torch's default
    multi-tensor path elsewhere (what the CPU runs computed before; fused AdamW rounds
    differently)."""
    return {"fused": True} if runtime.device.type == "cuda" else {}


def compile_in_place(*networks: nn.Module) -> None:
    """``torch.compile`` each network's forward in place (``nn.Module.compile``: the state dict
    keeps its keys, so checkpoints and the EMA are unchanged)."""
    for network in networks:
        network.compile()


def channels_last(runtime: Runtime) -> bool:
    """Channels-last memory format: on CUDA (tensor-core convolutions), not on a CPU."""
    return runtime.device.type == "cuda"


def place(network: nn.Module, runtime: Runtime) -> nn.Module:
    """``network`` on the run's device, ready for the step both engines take: BatchNorm over the
    global batch (SyncBatchNorm) under multi-GPU DDP, channels-last on CUDA."""
    network = network.to(runtime.device)
    if runtime.world_size > 1 and runtime.device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    if channels_last(runtime):
        network = network.to(memory_format=torch.channels_last)
    return network


def wrap_distributed(
    network: nn.Module, runtime: Runtime, *, find_unused_parameters: bool = False
) -> nn.Module:
    """The module the step calls: ``network`` DDP-wrapped under torchrun, else itself."""
    if runtime.world_size == 1:
        return network
    return DistributedDataParallel(
        network,
        device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def _init_distributed(device: str) -> tuple[int, int]:
    if not dist.is_initialized():
        use_nccl = device != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return dist.get_rank(), dist.get_world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _address_space_bytes() -> int:
    """This process's current virtual size (Linux: /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def cap_memory(limit_mb: int, device: str) -> None:
    """Cap what this process may allocate from now on to ``limit_mb`` MiB: on CUDA the GPU
    memory (the caching allocator's per-process fraction), on a CPU the host memory, as an
    address-space limit of the current size plus ``limit_mb`` (Linux). An allocation past it
    raises, and ``run_trial`` fails the trial as out of memory. Call it in a process of its
    own (the isolated runner's child): it binds the whole process."""
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        index = torch.device(device).index if device.startswith("cuda:") else None
        total = torch.cuda.get_device_properties(index or 0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_mb * 2**20 / total), index)
        return
    if not sys.platform.startswith("linux"):
        return
    ceiling = _address_space_bytes() + limit_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, Python's MemoryError, or the CPU
    allocator's RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
