"""Sharded data parallelism for ``examples/train.py --fsdp``: FSDP2 (``fully_shard``) for routed models.

Routing survives sharding because FSDP2 shards parameters only: a routed unit's mask table is a
non-persistent buffer, left whole on every rank, and each unit is its own ``fully_shard`` group,
so a unit's parameters are gathered just for its forward and backward::

    model = dtrsurgeon.transform(DiT(...), spec)      # or a model from a generated file
    sharding = Sharding(model, ema, bf16=True, device=device)  # fully_shard(blocks.0), ..., fully_shard(model)
    loss.backward(); opt.step()                                # gradients reduce-scattered in float32
    sharding.save(out / "ckpt", opt, extras, spec, plan)       # torch.distributed.checkpoint + dtr_config.json

Which modules become groups (``shard_units``): every module that owns a routing mask
(``dtr_mask``: the units of ``transform()`` and of generated files alike) and every element of a
``ModuleList`` (the transformer blocks, the U-Net's levels), innermost first, then the root.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

MASK_BUFFER = "dtr_mask"


def shard_units(model: nn.Module) -> list[str]:
    """Names of the submodules to wrap, deepest first (a parent's group then holds only what its
    children's groups do not)."""
    names = set()
    for name, module in model.named_modules():
        if MASK_BUFFER in dict(module.named_buffers(recurse=False)) and name:
            names.add(name)
        if isinstance(module, nn.ModuleList):
            names.update(f"{name}.{i}" if name else str(i) for i in range(len(module)))
    return sorted(names, key=lambda n: (-n.count("."), n))


def dtr_config(spec, plan: dict | None) -> dict[str, Any]:
    """What a routed checkpoint needs to be rebuilt: the resolved spec and the routing plan."""
    return {"spec": spec.to_dict() if spec is not None else None, "plan": plan}


class Sharding:
    """The training model and its EMA, sharded alike, and their checkpoints. Every method is
    collective: all ranks call it."""

    def __init__(self, model: nn.Module, ema: nn.Module, *, bf16: bool, device: torch.device):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not dist.is_initialized():  # one process without torchrun: a group of one
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1,
                                    init_method=f"tcp://127.0.0.1:{_free_port()}",
                                    device_id=device if device.type == "cuda" else None)
        world = dist.get_world_size()
        self.mesh = init_device_mesh(device.type, (world,))
        # bf16 parameters in forward and backward, gradients reduced in float32
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                  else MixedPrecisionPolicy())
        self.units = shard_units(model)
        self.model, self.ema = model, ema
        self.template = _unsharded_copy(model)  # for the full-weight copies at the end (sampling, results)
        for net in (model, ema):
            for name in self.units:
                fully_shard(net.get_submodule(name), mesh=self.mesh, mp_policy=policy)
            fully_shard(net, mesh=self.mesh, mp_policy=policy)

    def gradient_sync(self, on: bool) -> None:
        """Micro-batches before the last keep their gradients unreduced (FSDP's ``no_sync``)."""
        self.model.set_requires_gradient_sync(on)

    # -- checkpoints -------------------------------------------------------------------------

    def _state(self, opt) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        return {"model": get_model_state_dict(self.model), "ema": get_model_state_dict(self.ema),
                "opt": get_optimizer_state_dict(self.model, opt)}

    def save(self, folder: Path, opt, extras: dict[str, Any], spec, plan: dict | None) -> None:
        """Model, EMA and optimiser state as a ``torch.distributed.checkpoint`` folder (each rank
        writes its shards), the loop's extras (step, loss history, objective state) in
        ``extras.pt`` and ``dtr_config.json`` beside them (rank 0)."""
        import torch.distributed.checkpoint as dcp

        folder.mkdir(parents=True, exist_ok=True)
        dcp.save(self._state(opt), checkpoint_id=str(folder / "state"))
        if dist.get_rank() == 0:
            torch.save(extras, folder / "extras.pt")
            (folder / "dtr_config.json").write_text(json.dumps(dtr_config(spec, plan), indent=1, sort_keys=True) + "\n")
        dist.barrier()

    def load(self, folder: Path, opt) -> dict[str, Any]:
        """Restore model, EMA and optimiser in place from ``save``'s folder; returns the extras."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = self._state(opt)
        dcp.load(state, checkpoint_id=str(folder / "state"))
        set_model_state_dict(self.model, state["model"])
        set_model_state_dict(self.ema, state["ema"])
        set_optimizer_state_dict(self.model, opt, state["opt"])
        return torch.load(folder / "extras.pt", map_location="cpu", weights_only=False)

    # -- full weights ------------------------------------------------------------------------

    def full_state_dict(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """The whole state dict on rank 0's CPU (other ranks get an empty dict)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def unsharded(self, device: torch.device) -> tuple[nn.Module | None, nn.Module | None]:
        """Plain (unsharded) copies of the model and the EMA with the trained weights, on rank 0;
        (None, None) elsewhere. For sampling and evaluation, which run on rank 0 alone."""
        states = [self.full_state_dict(self.model), self.full_state_dict(self.ema)]
        if dist.get_rank() != 0:
            return None, None
        copies = []
        for state in states:
            net = _unsharded_copy(self.template).to(device)
            net.load_state_dict(state)
            copies.append(net)
        copies[1].eval().requires_grad_(False)
        return copies[0], copies[1]


def _unsharded_copy(model: nn.Module) -> nn.Module:
    from examples.train import deepcopy_model

    return deepcopy_model(model).cpu()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
