"""Tiny models of blocks whose forward returns a tuple on one branch (each written here from a
description of the construct, not copied).

* ``PosHintNet``: each block adds a position embedding to its input before its residual adds (so
  its stream starts inside the block, after that line) and, when it carries a hint projection,
  returns ``(x, hint)``; the main blocks carry none and return ``x``, a ControlNet copy of them
  carries one and its hints are added to the main stream.
* ``ControlStreamNet``: a control branch whose first block makes its stream inside itself from the
  control input and the hidden state (``c = self.proj_in(c) + x``) and returns ``(hint, c)``; the
  later control blocks take ``c`` as a parameter and return ``(hint, c)`` too.
* ``NormedControlNet``: the same, but a control block may return its stream normalised,
  ``(hint, self.out_norm(c))``: the returns do not tell which item is the stream it made, so the first
  control block is left out with the reason.
* ``RenamedStreamNet``: a control block that takes its stream as a parameter and returns it under
  another name, ``h = x + self.fc(x); return hint, h``: its first add is a residual add of the
  parameter, not where a stream is made, so the block is left out rather than routed after it.
"""

import torch
from torch import nn


def embed_time(t, dim):
    freqs = torch.exp(-torch.arange(dim // 2, dtype=torch.float32) / (dim // 2) * 9.2)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TokenNet(nn.Module):
    """The shared stem and head: x [B, L, in_dim], t [B]."""

    def __init__(self, in_dim=4, dim=16, tokens=6):
        super().__init__()
        self.dim = dim
        self.inp = nn.Linear(in_dim, dim)
        self.temb = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.1)
        self.out = nn.Linear(dim, in_dim)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 6, 4), torch.linspace(10, 900, batch_size).long()), {}


class PosHintBlock(nn.Module):
    def __init__(self, dim, hint=False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mod = nn.Linear(dim, dim)
        self.fc = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.hint = nn.Linear(dim, dim) if hint else None

    def forward(self, x, c, pos):
        x = x + pos
        x = x + self.fc(self.norm(x) * (1 + self.mod(c)[:, None]))
        if self.hint is not None:
            return x, self.hint(x)
        return x


class PosHintNet(TokenNet):
    def __init__(self, dim=16, depth=2):
        super().__init__(dim=dim)
        self.blocks = nn.ModuleList(PosHintBlock(dim) for _ in range(depth))
        self.control = nn.ModuleList(PosHintBlock(dim, hint=True) for _ in range(depth))

    def forward(self, x, t):
        x = self.inp(x)
        c = self.temb(embed_time(t, self.dim))
        pos = self.pos.expand(x.shape[0], -1, -1)
        h, hints = x, []
        for block in self.control:
            h, hint = block(h, c, pos)
            hints.append(hint)
        for block, hint in zip(self.blocks, hints):
            x = block(x, c, pos) + hint
        return self.out(x)


class ControlBlock(nn.Module):
    def __init__(self, dim, first=False):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim) if first else None
        self.norm = nn.LayerNorm(dim)
        self.mod = nn.Linear(dim, dim)
        self.fc = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x, control, c):
        if self.proj_in is not None:
            control = self.proj_in(control) + x
        control = control + self.fc(self.norm(control) * (1 + self.mod(c)[:, None]))
        hint = self.proj_out(control)
        return hint, control


class MainBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mod = nn.Linear(dim, dim)
        self.fc = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, c):
        return x + self.fc(self.norm(x) * (1 + self.mod(c)[:, None]))


class ControlStreamNet(TokenNet):
    def __init__(self, dim=16, depth=2, control_block=ControlBlock):
        super().__init__(dim=dim)
        self.ctrl_in = nn.Linear(4, dim)
        self.blocks = nn.ModuleList(MainBlock(dim) for _ in range(depth))
        self.control = nn.ModuleList(control_block(dim, first=i == 0) for i in range(depth))

    def forward(self, x, t):
        control = self.ctrl_in(x.flip(1))
        x = self.inp(x) + self.pos
        c = self.temb(embed_time(t, self.dim))
        hints = []
        for block in self.control:
            hint, control = block(x, control, c)
            hints.append(hint)
        for block, hint in zip(self.blocks, hints):
            x = block(x, c) + hint
        return self.out(x)


class NormedControlBlock(ControlBlock):
    def __init__(self, dim, first=False):
        super().__init__(dim, first)
        self.out_norm = nn.LayerNorm(dim) if first else None

    def forward(self, x, control, c):
        if self.proj_in is not None:
            control = self.proj_in(control) + x
        control = control + self.fc(self.norm(control) * (1 + self.mod(c)[:, None]))
        hint = self.proj_out(control)
        if self.out_norm is not None:
            return hint, self.out_norm(control)
        return hint, control


class NormedControlNet(ControlStreamNet):
    def __init__(self, dim=16, depth=2):
        super().__init__(dim=dim, depth=depth, control_block=NormedControlBlock)


class RenamedStreamBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x, c):
        h = x + self.fc(x) * c[:, None]
        h = h + self.ff(h)
        return self.proj_out(h), h


class RenamedStreamNet(TokenNet):
    def __init__(self, dim=16, depth=2):
        super().__init__(dim=dim)
        self.blocks = nn.ModuleList(RenamedStreamBlock(dim) for _ in range(depth))
        self.tail = MainBlock(dim)

    def forward(self, x, t):
        x = self.inp(x) + self.pos
        c = self.temb(embed_time(t, self.dim))
        for block in self.blocks:
            hint, x = block(x, c)
            x = x + hint
        return self.out(self.tail(x, c))


class InputHintBlock(nn.Module):
    """Its stream is its input; it returns ``(x, hint)`` only once a hint projection is attached
    (a ControlNet copy made after training started), a branch the example inputs never take."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mod = nn.Linear(dim, dim)
        self.fc = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.hint = None

    def forward(self, x, c):
        x = x + self.fc(self.norm(x) * (1 + self.mod(c)[:, None]))
        if self.hint is not None:
            return x, self.hint(x)
        return x


class InputHintNet(TokenNet):
    def __init__(self, dim=16, depth=2):
        super().__init__(dim=dim)
        self.blocks = nn.ModuleList(InputHintBlock(dim) for _ in range(depth))

    def forward(self, x, t):
        x = self.inp(x) + self.pos
        c = self.temb(embed_time(t, self.dim))
        for block in self.blocks:
            out = block(x, c)
            x = out[0] + out[1] if isinstance(out, tuple) else out
        return self.out(x)
