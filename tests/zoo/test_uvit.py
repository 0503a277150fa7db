"""Tests for model_zoo.uvit: U-ViT of Bao et al. (CVPR 2023).

Paper-sized configs are only ever built on the meta device (no weights are allocated).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_zoo.uvit import CONFIGS, Block, UViT, patchify, unpatchify, uvit


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, **overrides) -> UViT:
    with torch.device("meta"):
        return uvit(name, **overrides)


@pytest.fixture
def tiny() -> UViT:
    torch.manual_seed(0)
    return uvit("tiny").eval()


# --- parameter counts against published figures -------------------------------------------------------

# Bao et al., "All are Worth Words", Table 2 (configurations of U-ViT): #Params of U-ViT-Small 44M,
# U-ViT-Mid 131M, U-ViT-Large 287M, U-ViT-Huge 501M (the 501M of U-ViT-H/2 is also quoted in later
# ImageNet-256 comparison tables). The figures are rounded to the nearest million.
PUBLISHED_COUNTS = [
    ("small", 44_000_000),
    ("mid", 131_000_000),
    ("large", 287_000_000),
    ("huge", 501_000_000),
]


@pytest.mark.parametrize("name, published", PUBLISHED_COUNTS)
def test_parameter_count_matches_paper_table(name, published):
    count = n_params(build_on_meta(name))
    assert abs(count - published) < 500_000, f"{name}: {count:,} params vs published {published:,}"


@pytest.mark.parametrize("name, layers", [("small", 13), ("mid", 17), ("large", 21), ("huge", 29)])
def test_layer_count_matches_paper_table(name, layers):
    # The paper counts every transformer block: in-blocks + mid-block + out-blocks.
    model = build_on_meta(name)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert len(blocks) == layers == len(model.in_blocks) + 1 + len(model.out_blocks)


# --- shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_runs_end_to_end_on_meta(name):
    model = build_on_meta(name)
    args, kwargs = model.example_inputs(batch_size=2)
    out = model(*args, **kwargs)
    assert out.shape == args[0].shape


@pytest.mark.parametrize(
    "overrides",
    [
        dict(conv=False),
        dict(num_classes=-1),
        dict(mlp_time_embed=True),
        dict(qkv_bias=True, patch_size=2, depth=2),
        dict(in_chans=4, img_size=8, patch_size=2),
    ],
)
def test_variants_forward_shapes(overrides):
    model = uvit("tiny", **overrides)
    args, kwargs = model.example_inputs()
    out = model(*args, **kwargs)
    assert out.shape == args[0].shape
    assert torch.isfinite(out).all()


def test_conv_flag_controls_final_layer():
    assert isinstance(uvit("tiny").final_layer, nn.Conv2d)
    assert isinstance(uvit("tiny", conv=False).final_layer, nn.Identity)


def test_token_layout():
    # [label, time, patches...]: 2 extra tokens when class-conditional, 1 otherwise.
    cond, uncond = uvit("tiny"), uvit("tiny", num_classes=-1)
    assert cond.extras == 2 and cond.pos_embed.shape == (1, 2 + 16, 64)
    assert uncond.extras == 1 and uncond.pos_embed.shape == (1, 1 + 16, 64)


def test_state_dict_keys_use_the_authors_layout():
    keys = set(uvit("tiny").state_dict())
    for key in [
        "pos_embed",
        "patch_embed.proj.weight",
        "label_emb.weight",
        "in_blocks.0.norm1.weight",
        "in_blocks.0.attn.qkv.weight",
        "in_blocks.0.attn.proj.weight",
        "in_blocks.0.norm2.weight",
        "in_blocks.0.mlp.fc1.weight",
        "in_blocks.0.mlp.fc2.weight",
        "mid_block.attn.qkv.weight",
        "out_blocks.0.skip_linear.weight",
        "norm.weight",
        "decoder_pred.weight",
        "final_layer.weight",
    ]:
        assert key in keys, key
    assert "in_blocks.0.attn.qkv.bias" not in keys  # qkv_bias=False in every paper config
    assert not any(k.startswith(("in_blocks", "mid_block")) and "skip_linear" in k for k in keys)


# --- structure: the long skips pair shallow and deep blocks like a U-Net ----------------------------------


def test_out_blocks_receive_in_block_outputs_in_reverse_order(tiny):
    in_outputs, skips_seen = [], []
    hooks = [blk.register_forward_hook(lambda m, a, out: in_outputs.append(out)) for blk in tiny.in_blocks]
    hooks += [blk.register_forward_pre_hook(lambda m, a: skips_seen.append(a[1])) for blk in tiny.out_blocks]
    args, kwargs = tiny.example_inputs()
    tiny(*args, **kwargs)
    for h in hooks:
        h.remove()
    assert len(skips_seen) == len(in_outputs) == 2
    for seen, expected in zip(skips_seen, reversed(in_outputs)):
        assert seen is expected


def test_block_computes_skip_fusion_then_pre_norm_residuals():
    torch.manual_seed(0)
    blk = Block(16, num_heads=2, skip=True)
    x, skip = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    h = blk.skip_linear(torch.cat([x, skip], dim=-1))
    q, k, v = blk.attn.qkv(blk.norm1(h)).reshape(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    a = (torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v).transpose(1, 2).reshape(2, 5, 16)
    h = h + blk.attn.proj(a)
    expected = h + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(h))))
    torch.testing.assert_close(blk(x, skip), expected)
    with pytest.raises(ValueError, match="long skip"):
        blk(x)


def test_patchify_roundtrip():
    imgs = torch.randn(2, 3, 8, 8)
    tokens = patchify(imgs, 4)
    assert tokens.shape == (2, 4, 48)
    torch.testing.assert_close(tokens[0, 1], imgs[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(tokens, 3), imgs)


# --- inputs and conditioning ------------------------------------------------------------------------------


def test_example_inputs_are_deterministic_and_valid(tiny):
    (x1, t1), kw1 = tiny.example_inputs(batch_size=3)
    (x2, t2), kw2 = tiny.example_inputs(batch_size=3)
    assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(kw1["y"], kw2["y"])
    assert x1.shape == (3, 3, 16, 16)
    assert t1.shape == (3,) and t1.dtype == torch.int64 and ((0 <= t1) & (t1 < 1000)).all()
    assert kw1["y"].shape == (3,) and ((0 <= kw1["y"]) & (kw1["y"] < 10)).all()
    state = torch.get_rng_state()
    tiny.example_inputs()
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not consumed
    assert uvit("tiny", num_classes=-1).example_inputs()[1] == {}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_runs_in_other_dtypes(dtype):
    model = uvit("tiny").to(dtype)
    args, kwargs = model.example_inputs()
    assert args[0].dtype == dtype
    out = model(*args, **kwargs)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_zero_dim_timestep_is_broadcast(tiny):
    (x, _), kwargs = tiny.example_inputs(batch_size=3)
    expected = tiny(x, torch.full((3,), 417), **kwargs)
    torch.testing.assert_close(tiny(x, torch.tensor(417), **kwargs), expected)
    torch.testing.assert_close(tiny(x, 417, **kwargs), expected)
    fractional = tiny(x, torch.full((3,), 0.5), **kwargs)
    torch.testing.assert_close(tiny(x, torch.tensor(0.5).double(), **kwargs), fractional)


def test_output_depends_on_timestep_and_label(tiny):
    (x, t), kwargs = tiny.example_inputs()
    out = tiny(x, t, **kwargs)
    assert not torch.allclose(out, tiny(x, t + 100, **kwargs))
    assert not torch.allclose(out, tiny(x, t, y=(kwargs["y"] + 1) % 10))


def test_label_requirement_is_checked(tiny):
    (x, t), _ = tiny.example_inputs()
    with pytest.raises(ValueError, match="class-conditional"):
        tiny(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        uvit("tiny", num_classes=-1)(x, t, y=torch.zeros(2, dtype=torch.long))


def test_backward_reaches_every_parameter(tiny):
    tiny.train()
    args, kwargs = tiny.example_inputs()
    tiny(*args, **kwargs).square().mean().backward()
    for name, p in tiny.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name != "label_emb.weight":
            assert p.grad.any(), name


# --- factory ---------------------------------------------------------------------------------------------


def test_factory_overrides_and_errors():
    model = uvit("tiny", embed_dim=32, num_heads=2)
    assert model.embed_dim == 32 and model.pos_embed.shape[-1] == 32
    assert CONFIGS["tiny"]["embed_dim"] == 64
    with pytest.raises(ValueError, match="known configs: huge, large, mid, small, tiny"):
        uvit("xl")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        uvit("tiny", patch_size=5)
