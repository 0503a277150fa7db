"""Tests for model_zoo.adm_unet: the ADM U-Net of Dhariwal & Nichol (2021).

Large configs are only ever built on the meta device (no weights are allocated), so the whole file runs
in a few seconds on CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_zoo.adm_unet import (
    CONFIGS,
    ADMUNet,
    AttentionBlock,
    ResBlock,
    TimestepEmbedSequential,
    adm_unet,
    timestep_embedding,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, **overrides) -> ADMUNet:
    with torch.device("meta"):
        return adm_unet(name, **overrides)


def randomise_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the zero-initialised layers random weights, so outputs depend on every input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture
def tiny() -> ADMUNet:
    torch.manual_seed(0)
    return randomise_zero_init(adm_unet("tiny")).eval()


# --- parameter counts against published figures -------------------------------------------------------

# (config, published parameter count, source). The published counts are rounded to the nearest
# million, so ours must lie within 0.5M of them.
PUBLISHED_COUNTS = [
    # Dhariwal & Nichol 2021, appendix hyper-parameter table: ImageNet 64x64 model size 296M
    # (also the size quoted for EDM's released "edm-imagenet-64x64-cond-adm" ADM checkpoint).
    ("64", 296_000_000, "ADM paper, ImageNet 64"),
    # Dhariwal & Nichol 2021, same table: ImageNet 256x256 model size 554M (the "ADM-G 554M" entry that
    # later papers, e.g. DiT and Min-SNR, copy into their comparison tables).
    ("256", 554_000_000, "ADM paper, ImageNet 256"),
]


@pytest.mark.parametrize("name, published, source", PUBLISHED_COUNTS)
def test_parameter_count_matches_published_figure(name, published, source):
    count = n_params(build_on_meta(name))
    assert abs(count - published) < 500_000, f"{name}: {count:,} params vs {published:,} ({source})"


def test_cifar10_parameter_count_matches_improved_ddpm_checkpoint_name():
    # openai/improved-diffusion README: the CIFAR-10 L_hybrid checkpoint these flags produce is named
    # "cifar10_uncond_50M_500K.pt" - a coarse, rounded figure (50M), hence the loose tolerance.
    count = n_params(build_on_meta("32"))
    assert 47_500_000 < count < 55_000_000, count


def test_learn_sigma_only_changes_the_output_conv():
    # learn_sigma doubles only the last conv's output channels: in_ch * 3 * 3 * out_extra + out_extra.
    with_sigma = n_params(build_on_meta("64"))
    without = n_params(build_on_meta("64", learn_sigma=False))
    assert with_sigma - without == 192 * 3 * 3 * 3 + 3


# --- shapes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_runs_end_to_end_on_meta(name):
    model = build_on_meta(name)
    args, kwargs = model.example_inputs(batch_size=2)
    out = model(*args, **kwargs)
    cfg = CONFIGS[name]
    size = cfg["image_size"]
    assert out.shape == (2, cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1), size, size)


def test_learn_sigma_doubles_output_channels(tiny):
    args, kwargs = tiny.example_inputs()
    assert tiny(*args, **kwargs).shape == (2, 6, 16, 16)
    plain = adm_unet("tiny", learn_sigma=False)
    args, kwargs = plain.example_inputs()
    assert plain(*args, **kwargs).shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(use_scale_shift_norm=False),
        dict(resblock_updown=False),
        dict(resblock_updown=False, conv_resample=False),
        dict(num_classes=None),
        dict(num_head_channels=-1, num_heads=2, num_heads_upsample=4),
        dict(channel_mult=(1, 2, 2), attention_resolutions=(8, 4), num_res_blocks=2),
        dict(dropout=0.1, out_channels=1, learn_sigma=False),
    ],
)
def test_variants_forward_shapes(overrides):
    model = adm_unet("tiny", **overrides)
    args, kwargs = model.example_inputs()
    out = model(*args, **kwargs)
    assert out.shape == (2, model.out_channels, 16, 16)
    assert torch.isfinite(out).all()


def test_attention_placement_follows_attention_resolutions():
    # tiny: 16 px input, two levels, attention only at 8 px (the second level and the middle block).
    model = adm_unet("tiny")
    attn_paths = [name for name, m in model.named_modules() if isinstance(m, AttentionBlock)]
    assert attn_paths == ["input_blocks.3.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1"]


def test_head_settings():
    # ADM 64/256 use 64 channels per head; the CIFAR-10 model uses 4 heads everywhere.
    heads_64 = {m.channels: m.num_heads for m in build_on_meta("64").modules() if isinstance(m, AttentionBlock)}
    assert heads_64 == {384: 6, 576: 9, 768: 12}
    heads_32 = {m.num_heads for m in build_on_meta("32").modules() if isinstance(m, AttentionBlock)}
    assert heads_32 == {4}


def test_state_dict_keys_use_the_authors_layout():
    keys = set(adm_unet("tiny").state_dict())
    for key in [
        "time_embed.0.weight",
        "time_embed.2.weight",
        "label_emb.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight",  # GroupNorm
        "input_blocks.1.0.in_layers.2.weight",  # conv
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.1.0.out_layers.0.weight",  # GroupNorm
        "input_blocks.1.0.out_layers.3.weight",  # zero conv
        "input_blocks.3.0.skip_connection.weight",  # 32 -> 64 channels: 1x1 conv skip
        "input_blocks.3.1.norm.weight",
        "input_blocks.3.1.qkv.weight",
        "input_blocks.3.1.proj_out.weight",
        "middle_block.0.in_layers.0.weight",
        "middle_block.1.qkv.weight",
        "output_blocks.0.0.skip_connection.weight",
        "out.0.weight",
        "out.2.weight",
    ]:
        assert key in keys, key


# --- zero initialisation: every residual branch starts as the identity --------------------------------


def test_resblock_is_identity_at_init():
    torch.manual_seed(0)
    block = ResBlock(64, 128, dropout=0.0, use_scale_shift_norm=True)
    x, emb = torch.randn(2, 64, 8, 8), torch.randn(2, 128)
    assert isinstance(block.skip_connection, nn.Identity)
    assert torch.equal(block(x, emb), x)


@pytest.mark.parametrize("use_conv", [False, True])
def test_resblock_is_its_skip_connection_at_init_when_channels_change(use_conv):
    torch.manual_seed(0)
    block = ResBlock(32, 128, dropout=0.0, out_channels=64, use_conv=use_conv)
    assert block.skip_connection.kernel_size == ((3, 3) if use_conv else (1, 1))
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    assert torch.equal(block(x, emb), block.skip_connection(x))


@pytest.mark.parametrize("up, size", [(False, 4), (True, 16)])
def test_updown_resblock_resamples_and_is_resampled_skip_at_init(up, size):
    torch.manual_seed(0)
    block = ResBlock(32, 128, dropout=0.0, up=up, down=not up, use_scale_shift_norm=True)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 128)
    out = block(x, emb)
    assert out.shape == (2, 32, size, size)
    assert torch.equal(out, block.x_upd(x))


def test_attention_block_is_identity_at_init():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=16)
    x = torch.randn(2, 64, 4, 4)
    assert block.num_heads == 4
    assert torch.equal(block(x), x)


def test_model_output_is_zero_at_init():
    model = adm_unet("tiny")
    args, kwargs = model.example_inputs()
    assert not model(*args, **kwargs).any()


# --- attention and embeddings ----------------------------------------------------------------------------


def test_attention_matches_a_reference_multi_head_attention():
    torch.manual_seed(0)
    block = randomise_zero_init(AttentionBlock(32, num_heads=4))
    x = torch.randn(2, 32, 3, 5)
    tokens = block.norm(x.reshape(2, 32, 15))
    q, k, v = block.qkv(tokens).reshape(2, 3, 4, 8, 15).permute(1, 0, 2, 4, 3)  # each [B, heads, T, c]
    a = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    expected = x + block.proj_out(a.permute(0, 1, 3, 2).reshape(2, 32, 15)).reshape(2, 32, 3, 5)
    torch.testing.assert_close(block(x), expected)


def test_timestep_embedding_layout():
    t = torch.tensor([0.0, 3.0])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos(0)=1 first, then sin(0)=0
    torch.testing.assert_close(emb[1, 0], torch.cos(torch.tensor(3.0)))
    assert timestep_embedding(t, 7).shape == (2, 7)


def test_timestep_embed_sequential_passes_emb_only_to_timestep_blocks():
    seq = TimestepEmbedSequential(ResBlock(32, 16, 0.0), nn.Identity(), AttentionBlock(32))
    x, emb = torch.randn(1, 32, 4, 4), torch.randn(1, 16)
    assert torch.equal(seq(x, emb), x)


# --- inputs and conditioning ------------------------------------------------------------------------------


def test_example_inputs_are_deterministic_and_valid(tiny):
    (x1, t1), kw1 = tiny.example_inputs(batch_size=3)
    (x2, t2), kw2 = tiny.example_inputs(batch_size=3)
    assert torch.equal(x1, x2) and torch.equal(t1, t2) and torch.equal(kw1["y"], kw2["y"])
    assert x1.shape == (3, 3, 16, 16) and x1.dtype == torch.float32
    assert t1.shape == (3,) and t1.dtype == torch.int64 and ((0 <= t1) & (t1 < 1000)).all()
    assert kw1["y"].shape == (3,) and ((0 <= kw1["y"]) & (kw1["y"] < 10)).all()
    # The global RNG is not consumed.
    state = torch.get_rng_state()
    tiny.example_inputs()
    assert torch.equal(state, torch.get_rng_state())


def test_example_inputs_unconditional_has_no_y():
    args, kwargs = adm_unet("tiny", num_classes=None).example_inputs()
    assert kwargs == {} and len(args) == 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_runs_in_other_dtypes(dtype):
    # float64 matters for exact-equivalence tests of rewritten models; bf16 for mixed-precision runs.
    model = adm_unet("tiny").to(dtype)
    args, kwargs = model.example_inputs()
    assert args[0].dtype == dtype
    out = model(*args, **kwargs)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_zero_dim_timestep_is_broadcast(tiny):
    (x, _), kwargs = tiny.example_inputs(batch_size=3)
    expected = tiny(x, torch.full((3,), 417), **kwargs)
    torch.testing.assert_close(tiny(x, torch.tensor(417), **kwargs), expected)
    torch.testing.assert_close(tiny(x, 417, **kwargs), expected)
    torch.testing.assert_close(tiny(x, torch.tensor(417.0), **kwargs), expected)


def test_output_depends_on_timestep_and_label(tiny):
    (x, t), kwargs = tiny.example_inputs()
    out = tiny(x, t, **kwargs)
    assert not torch.allclose(out, tiny(x, t + 100, **kwargs))
    assert not torch.allclose(out, tiny(x, t, y=(kwargs["y"] + 1) % 10))


def test_label_requirement_is_checked():
    conditional = adm_unet("tiny")
    (x, t), _ = conditional.example_inputs()
    with pytest.raises(ValueError, match="class-conditional"):
        conditional(x, t)
    unconditional = adm_unet("tiny", num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(x, t, y=torch.zeros(2, dtype=torch.long))


def test_backward_reaches_every_parameter(tiny):
    tiny.train()
    args, kwargs = tiny.example_inputs()
    tiny(*args, **kwargs).square().mean().backward()
    for name, p in tiny.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name != "label_emb.weight":  # only the sampled labels' rows get gradient
            assert p.grad.any(), name


# --- factory ---------------------------------------------------------------------------------------------


def test_factory_overrides_and_unknown_name():
    model = adm_unet("tiny", model_channels=64)
    assert model.model_channels == 64 and model.time_embed[0].out_features == 256
    assert CONFIGS["tiny"]["model_channels"] == 32  # the table is not mutated
    with pytest.raises(ValueError, match="known configs: 128, 256, 32, 64, tiny"):
        adm_unet("512")


def test_bad_attention_resolution_is_rejected():
    with pytest.raises(ValueError, match="attention resolution 5"):
        adm_unet("tiny", attention_resolutions=(5,))
