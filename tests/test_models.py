"""Model architecture: MERU's parameter layout, shapes and counts; encoder behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vlunlearn.geometry import lorentz
from vlunlearn.models import MODEL_NAMES, ContrastiveModel, ModelConfig, build_model, model_config
from vlunlearn.models.vit import Attention, sincos_pos_embed_2d

EOT = 49407
SOT = 49406


@pytest.fixture(scope="module")
def clip_s_meta() -> ContrastiveModel:
    with torch.device("meta"):
        return build_model("clip-vit-s")


def tiny(geometry: str, seed: int = 0) -> ContrastiveModel:
    torch.manual_seed(seed)
    return build_model("tiny", geometry).eval()


def padded(captions: list[list[int]], length: int) -> torch.Tensor:
    out = torch.zeros(len(captions), length, dtype=torch.long)
    for i, ids in enumerate(captions):
        out[i, : len(ids)] = torch.tensor(ids)
    return out


# --------------------------------------------------------------------------- layout


def test_meru_vit_s_state_dict_layout(meru_vit_s):
    sd = meru_vit_s.state_dict()
    assert len(sd) == 307
    expected = {
        "logit_scale": (),
        "curv": (),
        "visual_alpha": (),
        "textual_alpha": (),
        "pixel_mean": (3, 1, 1),
        "pixel_std": (3, 1, 1),
        "visual_proj.weight": (512, 384),
        "textual_proj.weight": (512, 512),
        "visual.cls_token": (1, 1, 384),
        "visual.pos_embed": (1, 197, 384),
        "visual.patch_embed.proj.weight": (384, 3, 16, 16),
        "visual.patch_embed.proj.bias": (384,),
        "visual.blocks.11.norm1.weight": (384,),
        "visual.blocks.11.attn.qkv.weight": (1152, 384),
        "visual.blocks.11.attn.qkv.bias": (1152,),
        "visual.blocks.11.attn.proj.weight": (384, 384),
        "visual.blocks.0.mlp.fc1.weight": (1536, 384),
        "visual.blocks.0.mlp.fc2.weight": (384, 1536),
        "visual.blocks.0.norm2.bias": (384,),
        "visual.norm.weight": (384,),
        "textual.token_embed.weight": (49408, 512),
        "textual.posit_embed": (77, 512),
        "textual.attn_mask": (77, 77),
        "textual.resblocks.11.attn.in_proj_weight": (1536, 512),
        "textual.resblocks.11.attn.in_proj_bias": (1536,),
        "textual.resblocks.11.attn.out_proj.weight": (512, 512),
        "textual.resblocks.0.ln_1.weight": (512,),
        "textual.resblocks.0.ln_2.bias": (512,),
        "textual.resblocks.0.mlp.c_fc.weight": (2048, 512),
        "textual.resblocks.0.mlp.c_proj.weight": (512, 2048),
        "textual.ln_final.weight": (512,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert sd["textual.attn_mask"].dtype == torch.bool
    assert sum(k.startswith("visual.") for k in sd) == 150
    assert sum(k.startswith("textual.") for k in sd) == 149
    assert "visual.blocks.12.norm1.weight" not in sd
    assert not any("head" in k or "fc_norm" in k for k in sd)


def test_clip_vit_s_has_no_hyperbolic_scalars(clip_s_meta):
    sd = clip_s_meta.state_dict()
    assert len(sd) == 304
    assert not {"curv", "visual_alpha", "textual_alpha"} & set(sd)
    assert clip_s_meta.curvature() is None


def test_parameter_counts_match_reference(meru_vit_s, clip_s_meta):
    assert sum(p.numel() for p in meru_vit_s.visual.parameters()) == 21_665_664  # pos_embed included
    assert sum(p.numel() for p in meru_vit_s.textual.parameters()) == 63_165_952
    assert meru_vit_s.num_parameters() == 85_290_372
    assert meru_vit_s.num_parameters(trainable_only=True) == 85_290_372 - 197 * 384
    assert clip_s_meta.num_parameters() == 85_290_369


@pytest.mark.parametrize(
    "name, keys, params",
    [("meru-vit-b", 307, 149_619_972), ("meru-vit-l", 451, 367_254_020), ("clip-vit-b", 304, 149_619_969),
     ("clip-vit-l", 448, 367_254_017)],
)
def test_larger_variants_on_meta_device(name, keys, params):
    with torch.device("meta"):
        model = build_model(name)
    assert len(model.state_dict()) == keys
    assert model.num_parameters() == params


def test_scalar_initialisation(meru_vit_s):
    assert meru_vit_s.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert meru_vit_s.curv.item() == 0.0 and meru_vit_s.curv.requires_grad
    assert meru_vit_s.visual_alpha.item() == pytest.approx(math.log(512**-0.5))
    assert meru_vit_s.textual_alpha.item() == pytest.approx(-3.1192, abs=1e-4)
    assert torch.allclose(meru_vit_s.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(meru_vit_s.pixel_std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert meru_vit_s.visual.norm.eps == 1e-5


# --------------------------------------------------------------------------- configs


def test_model_config_names_and_geometry():
    assert model_config("tiny").geometry == "euclidean"
    assert model_config("tiny", "lorentz").geometry == "lorentz"
    assert model_config("meru-vit-b").geometry == "lorentz"
    assert model_config("meru_vit_b", "lorentz").vision_width == 768
    assert model_config("clip-vit-l").vision_heads == 16
    assert model_config("vit-s", "lorentz").name == "meru-vit-s"
    for name in MODEL_NAMES:
        assert model_config(name).name == name
    scenes = model_config("tiny-scenes", "lorentz")
    assert (scenes.geometry, scenes.patch_size, scenes.vision_width, scenes.text_depth) == ("lorentz", 14, 96, 2)
    with pytest.raises(ValueError, match="valid names: tiny, tiny-scenes, tiny-graph, meru-vit-s"):
        model_config("vit-xl")
    with pytest.raises(ValueError, match="lorentz"):
        model_config("meru-vit-s", "euclidean")
    with pytest.raises(ValueError, match="geometry"):
        model_config("vit-s")
    with pytest.raises(ValueError, match="unknown geometry"):
        model_config("tiny", "spherical")


def test_model_config_dict_round_trip():
    config = model_config("tiny", "lorentz").replace(pixel_mean=(0.5,), pixel_std=(0.25,), curv_init=0.5)
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown model configuration keys"):
        ModelConfig.from_dict({**data, "dropout": 0.1})
    with pytest.raises(ValueError, match="incomplete"):
        ModelConfig.from_dict({k: v for k, v in data.items() if k != "patch_size"})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        config.replace(image_size=30)
    with pytest.raises(ValueError, match="divisible"):
        config.replace(text_heads=3)


# --------------------------------------------------------------------------- vision tower


def test_sincos_pos_embed():
    model = tiny("euclidean")
    pos = model.visual.pos_embed
    assert isinstance(pos, nn.Parameter) and not pos.requires_grad
    assert pos.shape == (1, 17, 128)
    assert torch.all(pos[0, 0] == 0)
    assert torch.equal(pos, tiny("euclidean", seed=1).visual.pos_embed)  # not random
    # Independent float64 derivation: patch (r, q) row-major, [sin(r w), cos(r w), sin(q w), cos(q w)].
    grid, width = 4, 128
    n = width // 4
    omega = 10000.0 ** (-np.arange(n) / n)
    table = np.zeros((1 + grid * grid, width))
    for r in range(grid):
        for q in range(grid):
            table[1 + r * grid + q] = np.concatenate(
                [np.sin(r * omega), np.cos(r * omega), np.sin(q * omega), np.cos(q * omega)]
            )
    assert np.allclose(pos[0].numpy(), table, atol=1e-6)
    assert not torch.allclose(pos[0, 1 + 1], pos[0, 1 + grid])  # rows and columns differ
    assert sincos_pos_embed_2d(14, 384).shape == (1, 197, 384)


def test_pos_embed_gets_no_gradient_but_curvature_does():
    model = tiny("lorentz").train()
    images = torch.rand(2, 3, 28, 28)
    tokens = padded([[SOT, 5, EOT], [SOT, 9, 10, EOT]], 6)
    image_emb, text_emb = model(images, tokens)
    (lorentz.paired_dist(image_emb, text_emb, model.curvature()).sum()).backward()
    assert model.visual.pos_embed.grad is None
    assert model.curv.grad is not None and model.visual_alpha.grad is not None
    assert model.visual.cls_token.grad is not None


def test_vit_attention_matches_multihead_attention():
    # timm's qkv layout (3, heads, head_dim) is nn.MultiheadAttention's in_proj layout.
    torch.manual_seed(0)
    attn = Attention(32, 4)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False)[0]
        assert torch.allclose(attn(x), expected, atol=1e-5)


def test_single_channel_images_are_expanded():
    model = tiny("euclidean")
    gray = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.encode_image(gray), model.encode_image(gray.expand(-1, 3, -1, -1).contiguous()))
    with pytest.raises(ValueError, match="floating point"):
        model.encode_image((gray * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        model.encode_image(torch.rand(1, 3, 32, 32))


def test_image_normalisation_uses_buffers():
    model = tiny("euclidean")
    images = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        before = model.encode_image(images, project=False)
        model.pixel_mean.fill_(0.5)
        after = model.encode_image(images, project=False)
        manual = model.visual_proj(model.visual((images - 0.5) / model.pixel_std))
    assert not torch.allclose(before, after)
    assert torch.allclose(after, manual)


# --------------------------------------------------------------------------- text tower


def test_padding_does_not_change_text_features():
    model = tiny("lorentz")
    captions = [[SOT, 5, 77, 900, EOT], [SOT, 7, EOT]]
    with torch.no_grad():
        short = model.encode_text(padded(captions, 10))
        long = model.encode_text(padded(captions, 20))
        full = model.encode_text(padded(captions, model.config.context_length))
    assert torch.allclose(short, long, atol=1e-6, rtol=1e-5)
    assert torch.allclose(short, full, atol=1e-6, rtol=1e-5)


def test_text_mask_is_causal_and_pools_at_eot():
    model = tiny("euclidean")
    base = padded([[SOT, 5, 77, 900, EOT]], 12)
    after_eot = base.clone()
    after_eot[0, 7:10] = torch.tensor([123, 456, 789])
    before_eot = base.clone()
    before_eot[0, 2] = 78
    with torch.no_grad():
        reference = model.encode_text(base)
        assert torch.allclose(reference, model.encode_text(after_eot), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(reference, model.encode_text(before_eot), atol=1e-4)
    mask = model.textual.attn_mask
    assert mask.dtype == torch.bool and mask[0, 1] and not mask[1, 0] and not mask.diagonal().any()


def test_text_longer_than_context_is_rejected():
    model = tiny("euclidean")
    tokens = torch.ones(1, model.config.context_length + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(tokens)


# --------------------------------------------------------------------------- projection and scalars


def test_lorentz_projection_is_exp_map_of_scaled_features():
    model = tiny("lorentz")
    images = torch.rand(3, 3, 28, 28)
    tokens = padded([[SOT, 5, EOT], [SOT, 6, 7, EOT], [SOT, 8, EOT]], 6)
    with torch.no_grad():
        model.curv.fill_(math.log(0.3))
        c = model.curvature()
        f = model.encode_image(images, project=False)
        x = model.encode_image(images)
        g = model.encode_text(tokens, project=False)
        y = model.encode_text(tokens)
    assert torch.allclose(x, lorentz.exp_map0(model.visual_alpha.exp() * f, c))
    assert torch.allclose(y, lorentz.exp_map0(model.textual_alpha.exp() * g, c))
    d = lorentz.dist_to_origin(x, c)
    assert torch.isfinite(d).all() and (d > 0).all()
    # |log_map0(x)| = distance to the origin = |alpha * f|
    assert torch.allclose(d, (model.visual_alpha.exp() * f).norm(dim=-1), rtol=1e-4)
    assert torch.allclose(model.curvature(), torch.tensor(0.3))


def test_euclidean_projection_is_normalisation():
    model = tiny("euclidean")
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        f = model.encode_image(images, project=False)
        z = model.encode_image(images)
    assert torch.allclose(z, f / f.norm(dim=-1, keepdim=True))
    assert model.geometry.name == "euclidean" and model.curvature() is None


def test_clamp_scalars_and_encoders_never_clamp():
    model = tiny("lorentz")
    images = torch.rand(1, 3, 28, 28)
    tokens = padded([[SOT, 5, EOT]], 4)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        model.curv.fill_(5.0)
        model.visual_alpha.fill_(0.5)
        model.textual_alpha.fill_(0.7)
        f = model.encode_image(images, project=False)
        x = model.encode_image(images)
        model(images, tokens)
    # inference used the raw, out-of-range values and left them alone
    assert torch.allclose(x, lorentz.exp_map0(math.exp(0.5) * f, math.exp(5.0)))
    assert model.logit_scale.item() == 10.0 and model.curv.item() == 5.0
    assert model.visual_alpha.item() == 0.5 and model.textual_alpha.item() == pytest.approx(0.7)
    model.clamp_scalars_()
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    assert model.curv.item() == pytest.approx(math.log(10))
    assert model.visual_alpha.item() == 0.0 and model.textual_alpha.item() == 0.0
    with torch.no_grad():
        model.curv.fill_(-5.0)
    model.clamp_scalars_()
    assert model.curv.item() == pytest.approx(math.log(0.1))
    assert model.curv.requires_grad


def test_clamp_range_follows_curv_init():
    config = model_config("tiny", "lorentz").replace(curv_init=0.5, learn_curv=False)
    model = ContrastiveModel(config)
    assert model.curvature().item() == pytest.approx(0.5) and not model.curv.requires_grad
    with torch.no_grad():
        model.curv.fill_(10.0)
    model.clamp_scalars_()
    assert model.curv.item() == pytest.approx(math.log(5.0))


def test_meru_vit_s_forward(meru_vit_s):
    torch.manual_seed(1)
    images = torch.rand(1, 3, 224, 224)
    tokens = padded([[SOT, 320, 1125, 539, 320, 2368, EOT]], 9)
    with torch.no_grad():
        image_emb, text_emb = meru_vit_s(images, tokens)
    assert image_emb.shape == text_emb.shape == (1, 512)
    c = meru_vit_s.curvature()
    assert torch.isfinite(lorentz.pairwise_dist(image_emb, text_emb, c)).all()
