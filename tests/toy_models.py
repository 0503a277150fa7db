"""Small models that exercise one construct each (their source must be a file:
the compiler rewrites it)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.emb = nn.Linear(dim, dim)

    def forward(self, x, c):
        x = x + self.fc2(F.gelu(self.fc1(self.norm(x) + self.emb(c)[:, None])))
        return x


class TimeEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(1, dim)

    def forward(self, t):
        return torch.sin(self.fc(t.float()[:, None] / 100.0))


class TokenNet(nn.Module):
    """Tokens [B, L, C]; accepts a 0-d timestep by broadcasting it, as diffusers models do."""

    def __init__(self, dim=16, depth=3, tokens=5):
        super().__init__()
        self.inp = nn.Linear(3, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim))
        self.time = TimeEmbed(dim)
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.out = nn.Linear(dim, 3)

    def forward(self, x, t):
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        c = self.time(t)
        h = self.inp(x) + self.pos
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, self.pos.shape[1], 3, generator=g), torch.randint(0, 1000, (batch_size,), generator=g)), {}


class ThroughHelper(TokenNet):
    """Blocks are called from a helper method, not from forward."""

    def forward(self, x, t):
        c = self.time(t)
        h = self.inp(x) + self.pos
        h = self.features(h, c)
        return self.out(h)

    def features(self, h, c):
        for block in self.blocks:
            h = block(h, c)
        return h


class Checkpointed(TokenNet):
    """Blocks run under non-reentrant activation checkpointing."""

    def forward(self, x, t):
        c = self.time(t)
        h = self.inp(x) + self.pos
        for block in self.blocks:
            h = checkpoint(block, h, c, use_reentrant=False)
        return self.out(h)


class ConvBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        h = self.conv2(F.silu(self.conv1(x)))
        return x + h


class ConvNet(nn.Module):
    """Feature maps [B, C, H, W]: channel axis 1."""

    def __init__(self, ch=8):
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.body = nn.Sequential(ConvBlock(ch), ConvBlock(ch))
        self.head = nn.Conv2d(ch, 3, 1)

    def forward(self, x, t):
        h = self.stem(x)
        for blk in self.body:
            h = blk(h)
        return self.head(h) * t.float()[:, None, None, None] / 1000

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 3, 6, 6), torch.tensor([10, 900][:batch_size])), {}


class ConcatOnly(nn.Module):
    """A concat skip and an add of independent operands: no residual at all."""

    def __init__(self, dim=8):
        super().__init__()
        self.f = nn.Linear(dim, dim)
        self.g = nn.Linear(2 * dim, dim)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x, t):
        h = self.g(torch.cat([x, self.f(x)], dim=-1))
        return h + self.bias + t.float()[:, None]

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 8), torch.arange(batch_size)), {}


class DataDependentBlock(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        if x.sum() > 0:
            x = x + self.fc(x)
        return x


class DataDependent(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.block = DataDependentBlock(dim)

    def forward(self, x, t):
        return self.block(x) * t.float()[:, None]

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 8), torch.arange(batch_size)), {}


class ResidualMLP(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc(F.gelu(x))


class DataDependentMapped(DataDependent):
    """A mapping network (a residual MLP on the timestep embedding) beside the data-dependent block:
    conditioning, not a unit, in a real-tensor trace too."""

    def __init__(self, dim=8):
        super().__init__(dim)
        self.time = nn.Linear(1, dim)
        self.mapping = ResidualMLP(dim)

    def forward(self, x, t):
        return self.block(x) * self.mapping(self.time(t.float()[:, None]))

    def example_inputs(self, batch_size=2):
        return (torch.ones(batch_size, 8), torch.arange(batch_size)), {}


class BrokenExample(DataDependent):
    """Its example inputs do not fit its forward (5 features where the block's Linear takes 8)."""

    def example_inputs(self, batch_size=2):
        return (torch.rand(batch_size, 5) + 1, torch.arange(batch_size)), {}


class MPBlock(nn.Module):
    """EDM2-style magnitude-preserving residual: lerp, then rescale."""

    def __init__(self, ch=8, t=0.3):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        self.t = t

    def forward(self, x):
        y = self.conv(F.silu(x))
        return x.lerp(y, self.t) / ((1 - self.t) ** 2 + self.t ** 2) ** 0.5


class MPNet(nn.Module):
    def __init__(self, ch=8):
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 1)
        self.enc = nn.ModuleList([MPBlock(ch), MPBlock(ch)])
        self.out = nn.Conv2d(ch, 3, 1)

    def forward(self, x, noise_labels):
        h = self.stem(x) * noise_labels.float()[:, None, None, None]
        for block in self.enc:
            h = block(h)
        return self.out(h)

    def example_inputs(self, batch_size=2):
        return (torch.randn(batch_size, 3, 4, 4), torch.rand(batch_size) * 80), {}


class DispatchBlock(nn.Module):
    """U-ViT's released block: forward only hands the work to _forward (through checkpoint or a
    call), where an out-block first merges its long skip: its stream starts inside that helper."""

    def __init__(self, dim, skip=False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.use_checkpoint = False

    def forward(self, x, skip=None):
        if self.use_checkpoint:
            return checkpoint(self._forward, x, skip, use_reentrant=False)
        else:
            return self._forward(x, skip)

    def _forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.fc(self.norm(x))
        return x


class DispatchUViT(TokenNet):
    def __init__(self, dim=16, tokens=5):
        super().__init__(dim=dim, depth=1, tokens=tokens)
        self.in_blocks = nn.ModuleList([DispatchBlock(dim) for _ in range(2)])
        self.out_blocks = nn.ModuleList([DispatchBlock(dim, skip=True) for _ in range(2)])

    def forward(self, x, t):
        h = self.inp(x) + self.pos + self.time(t)[:, None]
        skips = []
        for blk in self.in_blocks:
            h = blk(h)
            skips.append(h)
        for blk in self.out_blocks:
            h = blk(h, skips.pop())
        return self.out(h)


class HelperResBlock(nn.Module):
    """guided-diffusion's pattern: forward hands the work to _forward; a 1x1 projection skip
    where the width changes."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.proj = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        return self._forward(x)

    def _forward(self, x):
        h = self.conv(F.silu(x))
        skip = x if self.proj is None else self.proj(x)
        return skip + h


class MaybeResidual(nn.Module):
    """Some instances add their input back, others do not: the latter are not residual units."""

    def __init__(self, dim, residual):
        super().__init__()
        self.residual = residual
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.fc(F.gelu(x))
        if self.residual:
            h = x + h
        return h


class MixedNet(nn.Module):
    """HelperResBlocks of equal and changing width, and MaybeResidual blocks of both kinds."""

    def __init__(self):
        super().__init__()
        self.time = TimeEmbed(8)
        self.convs = nn.ModuleList([HelperResBlock(8, 8), HelperResBlock(8, 16), HelperResBlock(16, 16)])
        self.mixers = nn.ModuleList([MaybeResidual(16, True), MaybeResidual(16, False), MaybeResidual(16, True)])

    def forward(self, x, t):
        h = x + self.time(t)[:, :, None, None]
        for conv in self.convs:
            h = conv(h)
        h = h.mean(dim=(2, 3))
        for mixer in self.mixers:
            h = mixer(h)
        return h

    def example_inputs(self, batch_size=2):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch_size, 8, 4, 4, generator=g), torch.randint(0, 1000, (batch_size,), generator=g)), {}


class CheckpointingNet(TokenNet):
    """diffusers' training branch: blocks go through a checkpoint function only when grads are on."""

    gradient_checkpointing = False

    def forward(self, x, t):
        c = self.time(t)
        h = self.inp(x) + self.pos
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return self.out(h)


class NamedLoopNet(TokenNet):
    """SongUNet's decoder loop: one name for units and plain modules, on separate branches."""

    def __init__(self, dim=16, tokens=5):
        super().__init__(dim=dim, depth=2, tokens=tokens)
        self.stages = nn.ModuleDict({"block0": Block(dim), "aux_norm": nn.LayerNorm(dim), "block1": Block(dim)})

    def forward(self, x, t):
        c = self.time(t)
        h = self.inp(x) + self.pos
        for name, block in self.stages.items():
            if "aux" in name:
                h = block(h)
            else:
                h = block(h, c)
        return self.out(h)


class CastBlock(nn.Module):
    """Wan's block: each residual add computes in float32, ``x.float()`` once for the skip and once
    for the branch, and casts back with ``.type_as(x)``."""

    def __init__(self, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, c):
        h = self.norm1(x.float()) + c[:, None]
        x = (x.float() + self.fc1(h)).type_as(x)
        h = self.norm2(x.float())
        x = (x.float() + self.fc2(h)).type_as(x)
        return x


class CastHintBlock(CastBlock):
    """A VACE-style control block: returns a hint and its stream, its adds written over two lines."""

    def __init__(self, dim):
        super().__init__(dim)
        self.hint = nn.Linear(dim, dim)

    def forward(self, x, c):
        x = (x.float() +
             self.fc1(self.norm1(x.float()) + c[:, None])).type_as(x)
        x = (x.float() +
             self.fc2(self.norm2(x.float()))).type_as(x)
        return self.hint(x), x


class CastNet(TokenNet):
    def __init__(self, dim=16, depth=2, tokens=5):
        super().__init__(dim, depth, tokens)
        self.blocks = nn.ModuleList([CastBlock(dim) for _ in range(depth)])
        self.hint_blocks = nn.ModuleList([CastHintBlock(dim) for _ in range(depth)])

    def forward(self, x, t):
        c = self.time(t)
        h = self.inp(x) + self.pos
        for block, hint_block in zip(self.blocks, self.hint_blocks):
            hint, h = hint_block(h, c)
            h = block(h, c) * torch.sigmoid(hint)
        return self.out(h)


class PosBlock(nn.Module):
    """Cosmos' block: adds the position embedding again before its residual branch."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x, pos):
        x = x + pos
        x = x + self.fc(self.norm(x))
        return x


class PosNet(TokenNet):
    def __init__(self, dim=16, depth=2, tokens=5):
        super().__init__(dim, depth, tokens)
        self.blocks = nn.ModuleList([PosBlock(dim) for _ in range(depth)])

    def forward(self, x, t):
        h = self.inp(x) * self.time(t)[:, None]
        pos = self.pos.expand(x.shape[0], -1, -1)
        for block in self.blocks:
            h = block(h, pos)
        return self.out(h)
