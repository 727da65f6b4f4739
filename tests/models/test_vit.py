"""attnlab.models.vit: patches, the forward pass against a float64 reference written from the
paper's equations, traces, configs, saving, and learning a small task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.attention import record
from attnlab.models.vit import ViT, ViTConfig, patchify


def _reference_forward(model: ViT, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ViT written out in float64 with plain tensor ops and the model's own weights:
    ``(logits, [attention weights per layer (batch, heads, T, T)])``."""
    c = model.config
    w = {name: t.detach().double() for name, t in model.state_dict().items()}
    w["pos_embed"] = model.position_table().detach().double()
    x = images.double()
    batch = x.shape[0]
    if c.stem_channels:
        # out[j, y, x] = GELU(bias[j] + sum over channels i and offsets (dy, dx) in -1..1 of
        # weight[j, i, dy + 1, dx + 1] * pixel[i, y + dy, x + dx]), zero outside the picture
        kernel, x_padded = w["stem.0.weight"], F.pad(x, (1, 1, 1, 1))
        size = c.image_size
        features = w["stem.0.bias"][None, :, None, None].expand(batch, -1, size, size).clone()
        for dy in range(3):
            for dx in range(3):
                shifted = x_padded[:, :, dy:dy + size, dx:dx + size]  # (batch, C, H, W)
                features += torch.einsum("ji,biyx->bjyx", kernel[:, :, dy, dx], shifted)
        x = F.gelu(features)
    # Patch p (row r, col s) holds pixels [r*P-o : (r+1)*P+o, s*P-o : (s+1)*P+o] (zero outside the
    # picture), channel by channel, with o = patch_overlap (0: the plain P x P square).
    o, size = c.patch_overlap, c.patch_size + 2 * c.patch_overlap
    x_padded = F.pad(x, (o, o, o, o))
    patches = []
    for r in range(c.grid_size):
        for s in range(c.grid_size):
            square = x_padded[:, :, r * c.patch_size:r * c.patch_size + size,
                              s * c.patch_size:s * c.patch_size + size]
            patches.append(square.reshape(batch, -1))
    h = torch.stack(patches, dim=1) @ w["patch_embed.weight"].T + w["patch_embed.bias"]
    h = torch.cat([w["cls_token"].expand(batch, 1, -1), h], dim=1) + w["pos_embed"]
    all_weights = []
    heads, d = c.num_heads, c.embed_dim // c.num_heads
    for i in range(c.num_layers):
        p = f"blocks.{i}."
        a = F.layer_norm(h, (c.embed_dim,), w[p + "attn_norm.weight"], w[p + "attn_norm.bias"])
        q, k, v = (a @ w[p + f"attn.{n}_proj.weight"].T + w[p + f"attn.{n}_proj.bias"] for n in "qkv")
        q, k, v = (t.reshape(batch, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        all_weights.append(weights)
        o = (weights @ v).transpose(1, 2).reshape(batch, -1, c.embed_dim)
        h = h + o @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        f = F.layer_norm(h, (c.embed_dim,), w[p + "ffn_norm.weight"], w[p + "ffn_norm.bias"])
        f = F.gelu(f @ w[p + "ffn.up.weight"].T + w[p + "ffn.up.bias"])
        h = h + f @ w[p + "ffn.down.weight"].T + w[p + "ffn.down.bias"]
    final = F.layer_norm(h[:, 0], (c.embed_dim,), w["norm.weight"], w["norm.bias"])
    return final @ w["head.weight"].T + w["head.bias"], all_weights


def _randomised(config: ViTConfig) -> ViT:
    """A ViT whose every weight (the zero-initialised head included) is random, so a wrong wire
    anywhere changes the output."""
    torch.manual_seed(0)
    model = ViT(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.3)
    return model.eval()


def test_patchify_matches_a_strided_convolution():
    images = torch.randn(2, 3, 8, 8)
    kernel = torch.eye(3 * 16).reshape(48, 3, 4, 4)  # output channel j copies input value j of a patch
    conv = F.conv2d(images, kernel, stride=4).flatten(2).transpose(1, 2)  # (batch, N, 48)
    torch.testing.assert_close(patchify(images, 4), conv)


def test_overlapping_patches_match_a_padded_strided_convolution():
    images = torch.randn(2, 3, 8, 8)
    window = 4 + 2 * 1
    kernel = torch.eye(3 * window ** 2).reshape(-1, 3, window, window)
    conv = F.conv2d(images, kernel, stride=4, padding=1).flatten(2).transpose(1, 2)  # (batch, 4, 108)
    patches = patchify(images, 4, overlap=1)
    torch.testing.assert_close(patches, conv)
    # the first token's window: one zero row/column of padding, then the top-left 5 x 5 pixels
    first = patches[:, 0].reshape(2, 3, window, window)
    torch.testing.assert_close(first[:, :, 1:, 1:], images[:, :, :5, :5])
    assert first[:, :, 0].abs().sum() == 0 and first[:, :, :, 0].abs().sum() == 0


@pytest.mark.parametrize(("positions", "overlap", "stem"),
                         [("learned", 0, 0), ("sinusoidal", 0, 0), ("learned", 2, 0), ("learned", 1, 3)])
def test_forward_matches_float64_reference(positions, overlap, stem):
    model = _randomised(ViTConfig(image_size=12, patch_size=4, in_channels=2, num_classes=5, embed_dim=16,
                                  num_layers=2, num_heads=4, ffn_dim=24, positions=positions,
                                  patch_overlap=overlap, stem_channels=stem))
    images = torch.randn(3, 2, 12, 12)
    with record(model) as recording:
        logits = model(images)
    expected, expected_weights = _reference_forward(model, images)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)
    for trace, weights in zip(recording.traces, expected_weights, strict=True):
        torch.testing.assert_close(trace.attention.weights.double(), weights, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(images), logits)  # the fast path agrees with the traced one


def test_a_broken_layer_fails_the_reference_check():
    model = _randomised(ViTConfig(image_size=8, patch_size=4, embed_dim=16, num_layers=2, num_heads=2,
                                  ffn_dim=16))
    images = torch.randn(2, 1, 8, 8)
    expected, _ = _reference_forward(model, images)
    with torch.no_grad():
        model.blocks[1].attn.v_proj.weight.mul_(1.01)
    assert not torch.allclose(model(images).double(), expected, rtol=1e-4, atol=1e-4)


def test_sinusoidal_positions_are_fixed_and_not_saved(tmp_path):
    model = ViT(ViTConfig.from_preset("tiny", positions="sinusoidal"))
    assert not any("pos" in name for name in model.state_dict())
    table = model.position_table()
    assert table.shape == (1, 17, 64)
    assert torch.equal(table[0, 0], torch.zeros(64))  # the class token has no position
    model.save(tmp_path / "m")
    again = ViT.load(tmp_path / "m")
    images = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(again(images), model.eval()(images))


def test_save_and_load_round_trip(tmp_path):
    model = _randomised(ViTConfig.from_preset("tiny"))
    model.save(tmp_path / "vit")
    loaded = ViT.load(tmp_path / "vit")
    images = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(images), model(images))


def test_attention_weights_shape_rows_and_mode():
    model = _randomised(ViTConfig.from_preset("fashion-mnist", dropout=0.1)).train()
    weights = model.attention_weights(torch.randn(2, 1, 28, 28))
    assert weights.shape == (4, 2, 4, 50, 50)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 2, 4, 50))
    assert model.training  # restored


def test_initial_predictions_are_uniform():
    model = ViT(ViTConfig.from_preset("tiny"))
    loss = model.loss(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
    assert abs(loss.item() - math.log(10)) < 1e-6


@pytest.mark.parametrize(("fields", "message"), [
    ({"image_size": 30, "patch_size": 4}, "not a multiple"),
    ({"embed_dim": 30, "num_heads": 4}, "not divisible"),
    ({"positions": "rotary"}, "positions must be"),
    ({"num_layers": 0}, "num_layers"),
    ({"dropout": 1.0}, "dropout"),
    ({"patch_overlap": -1}, "patch_overlap"),
    ({"stem_channels": -2}, "stem_channels"),
])
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ViTConfig(**fields)


def test_wrong_image_shapes_are_refused():
    model = ViT(ViTConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match=r"\(batch, 1, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="floating point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


STEPS = 150


def test_tiny_vit_learns_where_a_bright_square_is():
    """Four classes: a bright 7 x 7 square in one of the four quadrants, on noise. Only attention
    to the right patches solves it; chance is 25%."""
    generator = torch.Generator().manual_seed(0)

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(4, (size,), generator=generator)
        images = torch.randn(size, 1, 28, 28, generator=generator) * 0.3
        for i, label in enumerate(labels.tolist()):
            top, left = 14 * (label // 2) + 3, 14 * (label % 2) + 3
            images[i, 0, top:top + 7, left:left + 7] += 2.0
        return images, labels

    torch.manual_seed(0)
    model = ViT(ViTConfig.from_preset("tiny", num_classes=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        images, labels = batch(32)
        loss = model.loss(images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = batch(200)
    accuracy = (model.eval()(images).argmax(-1) == labels).double().mean()
    assert accuracy > 0.95
