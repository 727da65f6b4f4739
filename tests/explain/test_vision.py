"""attnlab.explain.vision: attention rollout, the data behind the page, the page in Chromium, PNGs."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.data.images import Normalization
from attnlab.explain.vision import (
    attention_rollout,
    render_vision_page,
    vision_data,
    write_confusion_png,
    write_vision_page,
    write_vision_png,
)
from attnlab.models.vit import ViT, ViTConfig

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = tuple(f"class {i}" for i in range(10))


def test_rollout_of_one_layer_is_half_attention_half_identity():
    weights = torch.tensor([[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.4, 0.6]]])[None]  # (1, 2, 2, 2)
    mean = torch.tensor([[0.75, 0.25], [0.3, 0.7]])
    expected = (mean + torch.eye(2)) / 2  # rows already sum to 1
    torch.testing.assert_close(attention_rollout(weights), expected.double())


def test_rollout_multiplies_layers_later_on_the_left():
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(3, 2, 5, 5), dim=-1).double()
    layers = [(w.mean(0) + torch.eye(5, dtype=torch.float64)) / 2 for w in weights]
    torch.testing.assert_close(attention_rollout(weights), layers[2] @ layers[1] @ layers[0])
    torch.testing.assert_close(attention_rollout(weights).sum(-1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="layers, heads, T, T"):
        attention_rollout(weights[0])


@pytest.fixture(scope="module")
def model() -> ViT:
    torch.manual_seed(0)
    vit = ViT(ViTConfig.from_preset("tiny"))
    with torch.no_grad():
        for param in vit.parameters():
            param.normal_(0, 0.3)
    return vit.eval()


@pytest.fixture(scope="module")
def picture() -> torch.Tensor:
    pixels = torch.zeros(1, 28, 28, dtype=torch.uint8)
    pixels[0, 5:20, 8:14] = 255
    return pixels


@pytest.fixture(scope="module")
def data(model, picture) -> dict:
    return vision_data(model, picture, Normalization((0.2,), (0.3,)), CLASSES, source="bar.png")


def test_vision_data_holds_the_models_numbers(model, picture, data):
    inputs = Normalization((0.2,), (0.3,))(picture[None])
    weights = model.attention_weights(inputs)[:, 0].double()  # (layers, heads, T, T)
    probabilities = torch.softmax(model(inputs)[0].double(), -1)
    assert data["grid"] == 4 and data["patch_size"] == 7 and data["patch_overlap"] == 0
    assert data["stem_channels"] == 0
    def numbers(key: str) -> torch.Tensor:
        return torch.tensor(data[key], dtype=torch.float64)

    torch.testing.assert_close(numbers("cls_attention"), weights[:, :, 0, 1:])
    torch.testing.assert_close(numbers("cls_self"), weights[:, :, 0, 0])
    torch.testing.assert_close(numbers("rollout"), attention_rollout(weights)[0, 1:])
    torch.testing.assert_close(numbers("probabilities"), probabilities)
    top = probabilities.argsort(descending=True)[:3].tolist()
    assert [p["class"] for p in data["predictions"]] == [CLASSES[i] for i in top]
    png = base64.b64decode(data["input_image"].removeprefix("data:image/png;base64,"))
    assert png.startswith(PNG_SIGNATURE)
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(png)))).reshape(1, 28, 28)
    assert torch.equal(decoded, picture)


def test_page_embeds_the_data_and_escapes_script_endings(data):
    tricky = {**data, "source": "</script><b>x</b>"}
    page = render_vision_page(tricky)
    assert "</script><b>" not in page
    embedded = re.search(r'<script type="application/json" id="vision-data">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1)) == json.loads(json.dumps(tricky))
    assert "https://" not in page and "http://" not in page  # self-contained


def test_pngs_are_written(tmp_path, data, picture):
    path = write_vision_png(data, picture, tmp_path / "overlay.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    matrix = torch.tensor([[5, 1], [0, 4]])
    confusion = write_confusion_png(matrix, ["yes", "no"], tmp_path / "confusion.png")
    assert confusion.read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(IsADirectoryError):
        write_vision_page(data, tmp_path)


def test_page_in_chromium_shows_prediction_selector_and_weights(tmp_path, data, browser):
    page_path = write_vision_page(data, tmp_path / "vision.html")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_path.as_uri())
    best = data["predictions"][0]
    assert page.inner_text("h1") == f"The model thinks this is: {best['class']} " \
                                    f"({100 * best['probability']:.1f}%)"
    layers, heads = len(data["cls_attention"]), len(data["cls_attention"][0])
    assert page.locator("#selector option").count() == 1 + layers * (1 + heads)
    assert page.locator("#bars tr").count() == len(CLASSES)
    assert page.locator("#heads canvas").count() == heads
    # Hover the square in row 2, column 3 of the 4 x 4 grid: the readout gives its rollout weight.
    canvas = page.locator("#picture")
    box = canvas.bounding_box()
    canvas.hover(position={"x": box["width"] * 2.5 / 4, "y": box["height"] * 1.5 / 4})
    assert f"{data['rollout'][1 * 4 + 2]:.4f}" in page.inner_text("#readout")
    page.locator("#heads figure").nth(1).click()
    assert page.input_value("#selector") == f"{layers - 1}:1"
    canvas.hover(position={"x": 5, "y": 5})  # (clicking scrolled the page: hover finds the canvas)
    readout = page.inner_text("#readout")
    assert f"{data['cls_attention'][-1][1][0]:.4f}" in readout and "kept" in readout
    page.screenshot(path=str(tmp_path / "vision.png"), full_page=True)
    page.close()
    assert not errors


@pytest.mark.parametrize("overlap, stem, expected", [
    (0, 0, None),
    (1, 0, "made from the 9 × 9 pixels around it: the square and a border of 1 pixel taken from"),
    (2, 0, "made from the 11 × 11 pixels around it: the square and a border of 2 pixels taken from"),
    # the 3 x 3 filters reach one pixel further than the window they feed
    (1, 8, "made from the 11 × 11 pixels around it: the square and a border of 2 pixels taken from"),
    (0, 8, "made from the 9 × 9 pixels around it: the square and a border of 1 pixel taken from")])
def test_page_explains_overlapping_patches(tmp_path, data, browser, overlap, stem, expected):
    page_path = write_vision_page({**data, "patch_overlap": overlap, "stem_channels": stem},
                                  tmp_path / "vision.html")
    page = browser.new_page()
    page.goto(page_path.as_uri())
    how = page.inner_text("#how")
    page.close()
    assert "a 4 × 4 grid of 16 squares" in how and "It has" in how
    if expected is None:
        assert "pixels around it" not in how
    else:
        assert expected in how
    assert ("8 small 3 × 3 filters describe each pixel's neighbourhood" in how) == bool(stem)
