"""PNG heatmaps: real PNG files of a size that grows with the text, grey cells only for decoders."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from attnlab.explain.collect import build_explanation
from attnlab.explain.plots import MASKED_COLOUR, write_heatmaps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """``(width, height)`` from a PNG's header; fails unless the file starts like a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def masked_pixels(path) -> int:
    """How many pixels have exactly the masked-cell grey."""
    import matplotlib.image

    rgb = np.round(matplotlib.image.imread(path)[..., :3] * 255)
    grey = [int(MASKED_COLOUR[i:i + 2], 16) for i in (1, 3, 5)]
    return int((rgb == grey).all(axis=-1).sum())


@pytest.fixture(scope="module")
def encoder_pngs(minilm_explanation, tmp_path_factory):
    return write_heatmaps(minilm_explanation, tmp_path_factory.mktemp("png"), 3, 1)


@pytest.fixture(scope="module")
def decoder_pngs(tiny_decoder, tmp_path_factory):
    data = build_explanation(*tiny_decoder, "the sleeping cat sat on the mat", model_name="tiny")
    return write_heatmaps(data, tmp_path_factory.mktemp("png"), 1, 2)


def test_two_pngs_named_after_model_layer_and_head(encoder_pngs):
    assert [p.name for p in encoder_pngs] == ["minilm_layer3_head1.png", "minilm_layer3_all_heads.png"]
    for path in encoder_pngs:
        width, height = png_size(path)
        assert 500 < width < 3000 and 500 < height < 3000


def test_decoder_future_cells_are_grey_and_encoder_cells_are_not(encoder_pngs, decoder_pngs):
    # 9 tokens: 36 masked cells of about 50 x 50 pixels in the head's heatmap
    assert masked_pixels(decoder_pngs[0]) > 36 * 1000
    assert masked_pixels(decoder_pngs[1]) > 4 * 36 * 100
    assert all(masked_pixels(p) < 500 for p in encoder_pngs)  # a few antialiased pixels at most


def test_the_picture_grows_with_the_text(minilm, encoder_pngs, tmp_path):
    text = " ".join(["word"] * 40)  # 42 tokens with [CLS] and [SEP]
    data = build_explanation(*minilm, text, model_name="minilm", layer=0, head=0)
    long_png = write_heatmaps(data, tmp_path, 0, 0)[0]
    assert png_size(long_png)[0] > 1.5 * png_size(encoder_pngs[0])[0]


def test_out_of_range_head_is_refused(minilm_explanation, tmp_path):
    with pytest.raises(ValueError, match="layers 0 to 5 and heads 0 to 11"):
        write_heatmaps(minilm_explanation, tmp_path, 0, 12)
    assert not any(tmp_path.iterdir())


def test_missing_folder_is_created(minilm_explanation, tmp_path):
    paths = write_heatmaps(minilm_explanation, tmp_path / "a" / "b", 0, 0)
    assert all(p.is_file() and p.parent == tmp_path / "a" / "b" for p in paths)
