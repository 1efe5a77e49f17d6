"""Which process this is when a command runs under `torchrun` or `accelerate launch` (else the only one), and
the device it computes on: the one place that asks accelerate."""

from __future__ import annotations

from typing import Any


def process_state() -> Any:
    """accelerate's PartialState (shared by every caller in a process): on the GPU when there is one, on the CPU
    without one or with ACCELERATE_USE_CPU set (without cpu=True accelerate does not take torchrun processes on a
    machine without a GPU as one group)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in the process that writes shared files (rank 0, or the only process)."""
    return bool(process_state().is_main_process)


def process_index() -> int:
    """This process's rank (0 for a lone process)."""
    return int(process_state().process_index)


def num_processes() -> int:
    """How many processes share the work (1 for a lone process)."""
    return int(process_state().num_processes)


def process_device() -> Any:
    """The torch device this process computes on."""
    return process_state().device


def wait_for_everyone() -> None:
    """A barrier across processes (nothing with one process)."""
    process_state().wait_for_everyone()
