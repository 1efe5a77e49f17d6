"""Which process this is when a command runs under `torchrun` or `accelerate launch` (else the only one)."""

from __future__ import annotations

from typing import Any


def process_state() -> Any:
    """accelerate's PartialState, on the GPU when there is one (the same choice as the training loop's)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """True in the process that writes shared files (rank 0, or the only process)."""
    return bool(process_state().is_main_process)


def wait_for_everyone() -> None:
    """A barrier across processes (nothing with one process)."""
    process_state().wait_for_everyone()
