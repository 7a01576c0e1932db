"""Where a training process runs: its device, its place in a torchrun process group, and its RNG state."""

import os

import torch
import torch.distributed as dist
from torch import Tensor


def training_device() -> torch.device:
    """This process's GPU (the one of its local rank, under torchrun) when there is one for every process of this
    machine; else the CPU, since NCCL refuses two processes on one GPU."""
    local, per_machine = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if not torch.cuda.is_available() or torch.cuda.device_count() < per_machine:
        return torch.device("cpu")
    gpu = torch.device("cuda", local)
    torch.cuda.set_device(gpu)
    return gpu


def described(device: torch.device) -> str:
    """'the CPU' or 'cuda:0 (NVIDIA H200)': where a run trained, which its report names, since a GPU's arithmetic
    differs in the last bits and a long training can end elsewhere."""
    return "the CPU" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"


def process_group(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun: NCCL on GPUs, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def leave_process_group() -> None:
    """Under torchrun: wait for every process, then leave the group, so that none exits while another still talks
    to it (a gloo process whose threads are cut off at exit aborts: "terminate called without an active
    exception"). Without a group, nothing."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rng_state(device: torch.device) -> dict[str, object]:
    """The CPU generator's state and, on a GPU, that GPU's (router noise draws on the model's device). Every process
    seeds and draws alike, so rank 0's states stand for all; a list, as checkpoints that held every GPU's wrote."""
    return {"cpu": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def set_rng_state(state: dict[str, object] | Tensor, device: torch.device) -> None:
    """Restore `rng_state()` on `device`, whatever GPUs the saving machine had (the first state is the one of
    the device that trained); a bare tensor is the CPU state alone, as older checkpoints hold it."""
    state = state if isinstance(state, dict) else {"cpu": state, "cuda": []}
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)
