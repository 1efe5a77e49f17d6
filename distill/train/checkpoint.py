"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

One checkpoint is a directory `<checkpoint dir>/step-<NNNNNNNN>/`:
  <module>.safetensors   the weights of each module trained (the model; the task weighting, when learnt)
  optimizer.safetensors  the optimiser's per-parameter tensors, named `<parameter index>.<name>`
  rng.safetensors        every process's torch, CUDA, NumPy and Python random state, named `<generator>`
                         with one row per process
  state.json             the optimiser's param groups, and what the training loop passes (where it is, the
                         scheduler, the score history, a fingerprint of the settings)
Each is written atomically (a temporary directory renamed into place); only the newest KEEP stay.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from distill.core.errors import DistillError
from distill.core.fileio import atomic_directory, atomic_write_json, read_json

FORMAT_VERSION = 1
KEEP = 2
PREFIX = "step-"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints below `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint below `directory`, if any."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def rng_state() -> dict[str, torch.Tensor]:
    """This process's random generators as int64/float64 tensors with a leading dimension of 1 (gatherable)."""
    version, internal, gauss = random.getstate()
    _, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state().to(torch.int64),
        "python": torch.tensor([version, *internal], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy": torch.tensor([*keys.tolist(), position, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().to(torch.int64)
    return {name: tensor.unsqueeze(0) for name, tensor in state.items()}


def set_rng_state(rows: dict[str, torch.Tensor], rank: int) -> None:
    """Restore the random generators of process `rank` from `rng_state()` rows (stacked over processes)."""
    torch.set_rng_state(rows["torch"][rank].to(torch.uint8))
    python = rows["python"][rank].tolist()
    has_gauss, gauss = rows["python_gauss"][rank].tolist()
    random.setstate((python[0], tuple(python[1:]), gauss if has_gauss else None))
    numpy = rows["numpy"][rank].tolist()
    np.random.set_state(("MT19937", np.asarray(numpy[:-2], dtype=np.uint32), numpy[-2], numpy[-1],
                         float(rows["numpy_gauss"][rank][0])))
    if "cuda" in rows and torch.cuda.is_available():
        torch.cuda.set_rng_state(rows["cuda"][rank].to(torch.uint8))


def save_checkpoint(directory: Path, step: int, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer, rng_rows: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = KEEP) -> Path:
    """Write one checkpoint atomically and drop all but the newest `keep`; returns its path."""
    path = Path(directory) / checkpoint_name(step)
    tensors, optimizer_meta = _split_optimizer_state(optimizer.state_dict())
    with atomic_directory(path) as tmp:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))
        save_file(tensors, str(tmp / OPTIMIZER_FILE))
        save_file({k: v.cpu().contiguous() for k, v in rng_rows.items()}, str(tmp / RNG_FILE))
        atomic_write_json(tmp / STATE_FILE, {"format": FORMAT_VERSION, **state, "optimizer": optimizer_meta})
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_state(path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (checked for its format)."""
    state = read_json(Path(path) / STATE_FILE)
    if state.get("format") != FORMAT_VERSION:
        raise DistillError(f"{path}: checkpoint format {state.get('format')} is not {FORMAT_VERSION}; "
                           "start again without --resume")
    return state


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, rank: int,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load weights, optimiser state and this process's random state in place; returns the JSON state."""
    path = Path(path)
    state = read_state(path)
    for name, module in modules.items():
        load_model(module, str(path / f"{name}.safetensors"), device=str(device))
    optimizer.load_state_dict(_join_optimizer_state(load_file(str(path / OPTIMIZER_FILE)), state["optimizer"]))
    rows = load_file(str(path / RNG_FILE))
    if rank >= rows["torch"].shape[0]:
        raise DistillError(f"{path}: written by {rows['torch'].shape[0]} process(es), this is process {rank}")
    set_rng_state(rows, rank)
    return state


def _split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict as (tensors for safetensors, the rest for JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
