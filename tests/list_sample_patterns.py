"""Tiny models whose sample is a list of per-sample tensors, one per batch element, as packed-sequence
(NaViT-style) diffusion transformers take it (each written here from a description of the construct):
the forward patchifies every item on its own, embeds the tokens of all items in one call, splits
them back and pads (or stacks) them into a batch, refines the image tokens and, on their own, the
caption tokens, then runs joint blocks on both.

* ``PackedImageNet``: ``forward(x, t, cap_feats)``, x a list of [C, H, W] latents of different sizes,
  cap_feats a list of [L, D] caption features of different lengths; attention masks the padding;
  returns a list of [C, H, W].
* ``PackedVideoNet``: ``forward(t, x, context)``, the timestep first, x a tuple of [C, F, H, W]
  latents of one size, stacked rather than padded.
* ``ContextFirstNet``: ``forward(context, latents, t)``: the caption list comes first, so the spec names
  the sample (``"sample": {"arg": "latents"}``).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence


def embed_time(t, dim):
    freqs = torch.exp(-torch.arange(dim // 2, dtype=torch.float32) / (dim // 2) * 9.2)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def pad_mask(lengths, total):
    """[B, total] True where a token is real, False on the padding after it."""
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


class Block(nn.Module):
    """Pre-norm attention and MLP on tokens [B, L, D]; modulated by c [B, D] when it has one
    (the image refiner and the joint blocks), plain when it has none (the caption refiner)."""

    def __init__(self, dim, heads=2, modulated=True):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mod = nn.Linear(dim, 2 * dim) if modulated else None

    def attend(self, h, mask):
        B, L, D = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, L, D))

    def forward(self, x, mask, c=None):
        scale_attn, scale_mlp = (1 + self.mod(c)[:, None]).chunk(2, dim=-1) if self.mod is not None else (1, 1)
        x = x + self.attend(self.norm1(x) * scale_attn, mask)
        x = x + self.mlp(self.norm2(x) * scale_mlp)
        return x


class PackedNet(nn.Module):
    """The shared parts: embeddings, refiners, joint blocks, head."""

    def __init__(self, channels=4, patch=2, dim=16, cap_dim=8, depth=2):
        super().__init__()
        self.channels, self.patch, self.dim = channels, patch, dim
        self.x_embedder = nn.Linear(channels * patch * patch, dim)
        self.t_embedder = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.cap_embedder = nn.Sequential(nn.LayerNorm(cap_dim), nn.Linear(cap_dim, dim))
        self.noise_refiner = nn.ModuleList([Block(dim)])
        self.context_refiner = nn.ModuleList([Block(dim, modulated=False)])
        self.layers = nn.ModuleList(Block(dim) for _ in range(depth))
        self.final = nn.Linear(dim, channels * patch * patch)

    def patchify(self, image):
        """[C, H, W] -> [H/p * W/p, p*p*C]."""
        p = self.patch
        C, H, W = image.shape
        return image.view(C, H // p, p, W // p, p).permute(1, 3, 2, 4, 0).reshape(H // p * W // p, p * p * C)

    def unpatchify(self, tokens, shape):
        p = self.patch
        C, H, W = shape
        return tokens.view(H // p, W // p, p, p, C).permute(4, 0, 2, 1, 3).reshape(C, H, W)

    def packed(self, items, embedder):
        """Per-sample token lists -> embedded in one call, split back, padded: ([B, L, D], lengths)."""
        lengths = [len(item) for item in items]
        tokens = embedder(torch.cat(list(items), dim=0))
        return pad_sequence(list(tokens.split(lengths, dim=0)), batch_first=True), lengths

    def joint(self, img, img_lens, cap, cap_lens, c):
        """The joint blocks on [image tokens, caption tokens]; the image tokens of each sample come back."""
        u = torch.cat([img, cap], dim=1)
        mask = torch.cat([pad_mask(img_lens, img.shape[1]), pad_mask(cap_lens, cap.shape[1])], dim=1)
        for layer in self.layers:
            u = layer(u, mask, c)
        return self.final(u[:, :img.shape[1]])


class PackedImageNet(PackedNet):
    def example_inputs(self, batch_size=2):
        sizes = [(4, 4), (4, 6), (6, 4)]
        x = [torch.randn(self.channels, *sizes[i % 3]) for i in range(batch_size)]
        cap_feats = [torch.randn(3 + i % 2, 8) for i in range(batch_size)]
        return (), {"x": x, "t": torch.linspace(10, 900, batch_size).long(), "cap_feats": cap_feats}

    def forward(self, x, t, cap_feats):
        c = self.t_embedder(embed_time(t, self.dim))
        img, img_lens = self.packed([self.patchify(image) for image in x], self.x_embedder)
        for layer in self.noise_refiner:
            img = layer(img, pad_mask(img_lens, img.shape[1]), c)
        cap, cap_lens = self.packed(cap_feats, self.cap_embedder)
        for layer in self.context_refiner:
            cap = layer(cap, pad_mask(cap_lens, cap.shape[1]))
        out = self.joint(img, img_lens, cap, cap_lens, c)
        return [self.unpatchify(o[:n], image.shape) for o, n, image in zip(out, img_lens, x)]


class PackedVideoNet(PackedNet):
    def example_inputs(self, batch_size=2):
        x = tuple(torch.randn(self.channels, 2, 4, 4) for _ in range(batch_size))
        context = [torch.randn(3, 8) for _ in range(batch_size)]
        return (torch.linspace(10, 900, batch_size).long(), x, context), {}

    def forward(self, t, x, context):
        c = self.t_embedder(embed_time(t, self.dim))
        frames = x[0].shape[1]
        img = self.x_embedder(torch.stack([torch.cat([self.patchify(v[:, f]) for f in range(frames)]) for v in x]))
        img_lens = [img.shape[1]] * len(x)
        for layer in self.noise_refiner:
            img = layer(img, pad_mask(img_lens, img.shape[1]), c)
        cap = self.cap_embedder(torch.stack(list(context)))
        cap_lens = [cap.shape[1]] * len(context)
        for layer in self.context_refiner:
            cap = layer(cap, pad_mask(cap_lens, cap.shape[1]))
        out = self.joint(img, img_lens, cap, cap_lens, c)
        per_frame = out.shape[1] // frames
        return [torch.stack([self.unpatchify(o[f * per_frame:(f + 1) * per_frame], v[:, f].shape)
                             for f in range(frames)], dim=1) for o, v in zip(out, x)]


class ContextFirstNet(PackedNet):
    def example_inputs(self, batch_size=2):
        latents = [torch.randn(self.channels, 4, 4) for _ in range(batch_size)]
        context = [torch.randn(3, 8) for _ in range(batch_size)]
        return (context, latents, torch.linspace(10, 900, batch_size).long()), {}

    def forward(self, context, latents, t):
        c = self.t_embedder(embed_time(t, self.dim))
        cap, cap_lens = self.packed(context, self.cap_embedder)
        for layer in self.context_refiner:
            cap = layer(cap, pad_mask(cap_lens, cap.shape[1]))
        img, img_lens = self.packed([self.patchify(image) for image in latents], self.x_embedder)
        for layer in self.noise_refiner:
            img = layer(img, pad_mask(img_lens, img.shape[1]), c)
        out = self.joint(img, img_lens, cap, cap_lens, c)
        return [self.unpatchify(o[:n], image.shape) for o, n, image in zip(out, img_lens, latents)]
