"""An EDM2-style network (magnitude-preserving layers, ``@persistence.persistent_class`` on every
class), written for the tests: run it from this folder (``torch_utils`` beside it)."""

import math

import torch

from torch_utils import persistence


def mp_silu(x):
    return torch.nn.functional.silu(x) / 0.596


def mp_sum(a, b, t=0.5):
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


@persistence.persistent_class
class MPConv(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x, gain=1):
        w = self.weight * (gain / math.sqrt(self.weight[0].numel()))
        if w.ndim == 2:
            return x @ w.t()
        return torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)


@persistence.persistent_class
class Block(torch.nn.Module):
    def __init__(self, channels, emb_channels, res_balance=0.3):
        super().__init__()
        self.res_balance = res_balance
        self.emb_gain = torch.nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(channels, channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, channels, [])
        self.conv_res1 = MPConv(channels, channels, [3, 3])

    def forward(self, x, emb):
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c.unsqueeze(2).unsqueeze(3))
        y = self.conv_res1(y)
        return mp_sum(x, y, t=self.res_balance)


@persistence.persistent_class
class UNet(torch.nn.Module):
    def __init__(self, img_resolution=8, img_channels=3, label_dim=4, model_channels=16, num_blocks=2):
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dim = label_dim
        self.emb_noise = MPConv(1, model_channels, [])
        self.emb_label = MPConv(label_dim, model_channels, [])
        self.conv_in = MPConv(img_channels, model_channels, [3, 3])
        self.enc = torch.nn.ModuleDict({f"block{i}": Block(model_channels, model_channels) for i in range(num_blocks)})
        self.conv_out = MPConv(model_channels, img_channels, [3, 3])

    def forward(self, x, noise_labels, class_labels):
        emb = self.emb_noise(noise_labels.log().unsqueeze(1) / 4)
        emb = mp_silu(mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))))
        x = self.conv_in(x)
        for name, block in self.enc.items():
            x = block(x, emb)
        return self.conv_out(x)
