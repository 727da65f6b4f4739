"""attnlab.data.images: the IDX reader, the two datasets, splits, augmentation, user pictures."""

from __future__ import annotations

import gzip
import io
import struct

import pytest
import torch
from PIL import Image

from attnlab.data.images import (
    FASHION_MNIST_CLASSES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    ONE_PIXEL_SHIFTS,
    ImageDataError,
    Normalization,
    dataset_splits,
    load_fashion_mnist,
    load_image,
    load_mnist_5k,
    load_test_split,
    random_crop,
    read_idx,
    shift,
    train_val_split,
)
from attnlab.errors import AttnlabError


def _idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + payload


def test_read_idx_uint8_gzip_and_plain(tmp_path):
    values = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    raw = _idx_bytes(0x08, (2, 3, 4), values.numpy().tobytes())
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    assert torch.equal(read_idx(tmp_path / "a.idx"), values)
    assert torch.equal(read_idx(tmp_path / "a.idx.gz"), values)


def test_read_idx_big_endian_int32(tmp_path):
    numbers = [1, -2, 70000, 2**31 - 1]
    raw = _idx_bytes(0x0C, (4,), b"".join(struct.pack(">i", n) for n in numbers))
    (tmp_path / "b.idx").write_bytes(raw)
    assert read_idx(tmp_path / "b.idx").tolist() == numbers


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x01\x02\x08\x01", "not an IDX file"),
        (bytes([0, 0, 0x08, 2]) + struct.pack(">I", 3), "truncated inside its header"),
        (_idx_bytes(0x08, (2, 2), b"\x00\x01\x02"), "holds 3 bytes of values"),
    ],
)
def test_read_idx_rejects_damaged_files(tmp_path, content, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(ImageDataError, match=message):
        read_idx(path)


def test_read_idx_bad_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ImageDataError, match="cannot read"):
        read_idx(path)


def test_fashion_mnist_matches_the_published_dataset():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    # The first training labels of Fashion-MNIST: ankle boot, T-shirt, T-shirt, dress, ...
    assert train.labels[:6].tolist() == [9, 0, 0, 3, 0, 2]
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.classes == FASHION_MNIST_CLASSES


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    with pytest.raises(ImageDataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", folder=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_mnist_5k_has_500_digits_per_class():
    digits = load_mnist_5k()
    assert digits.images.shape == (5000, 1, 28, 28)
    assert digits.labels.bincount().tolist() == [500] * 10
    assert int(digits.images.max()) == 255 and int(digits.images.min()) == 0


def test_train_val_split_is_balanced_disjoint_and_fixed():
    labels = torch.arange(10).repeat(100)
    train, val = train_val_split(labels, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert labels[val].bincount().tolist() == [10] * 10
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(val, train_val_split(labels, 0.1, seed=3)[1])
    assert not torch.equal(val, train_val_split(labels, 0.1, seed=4)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(labels, 1.0)


def test_mnist_5k_splits_do_not_overlap():
    train, val, test = dataset_splits("mnist-5k", 0.1)
    assert (len(train), len(val), len(test)) == (3600, 400, 1000)
    assert test.labels.bincount().tolist() == [100] * 10
    assert torch.equal(test.images, load_test_split("mnist-5k").images)
    rows = {bytes(image.numpy().tobytes()) for image in torch.cat([train.images, val.images])}
    overlap = sum(bytes(image.numpy().tobytes()) in rows for image in test.images)
    assert overlap <= 2  # MNIST has a few exact duplicate digits, nothing more


def test_random_crop_shifts_without_changing_the_picture():
    images = torch.zeros(64, 1, 8, 8)
    images[:, :, 3:5, 3:5] = 1.0
    shifted = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))  # the blob stays inside
    assert len({tuple(x.nonzero()[0].tolist()) for x in shifted}) > 5  # shifted to many places
    assert torch.equal(random_crop(images, 0), images)


def test_shift_moves_pixels_and_fills_the_edge_with_background():
    images = torch.arange(1, 2 * 3 * 5 * 4 + 1, dtype=torch.float64).reshape(2, 3, 5, 4)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            moved = shift(images, dy, dx)
            expected = torch.zeros_like(images)  # built pixel by pixel
            for y in range(5):
                for x in range(4):
                    if 0 <= y - dy < 5 and 0 <= x - dx < 4:
                        expected[..., y, x] = images[..., y - dy, x - dx]
            assert torch.equal(moved, expected), (dy, dx)
    assert shift(images, 0, 0) is images


def test_random_crop_draws_exactly_the_shifts_tta_averages():
    """Training's shifts of up to a pixel are the 3 x 3 offsets of :func:`shift`; the views that
    test-time augmentation averages are among them."""
    images = torch.randint(1, 256, (200, 1, 6, 6), dtype=torch.uint8)
    cropped = random_crop(images, 1, torch.Generator().manual_seed(0))
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    drawn = []
    for picture, crop in zip(images, cropped, strict=True):
        matches = [o for o in offsets if torch.equal(shift(picture[None], *o)[0], crop)]
        assert len(matches) == 1
        drawn.append(matches[0])
    assert set(drawn) == set(offsets)
    assert set(ONE_PIXEL_SHIFTS) < set(offsets) and len(set(ONE_PIXEL_SHIFTS)) == 5


def test_normalization_fits_mean_and_std():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    norm = Normalization.fit(images)
    out = norm(images)
    assert abs(float(out.mean())) < 1e-5 and abs(float(out.std()) - 1) < 1e-3


def test_load_image_squares_resizes_and_inverts_a_dark_drawing(tmp_path):
    picture = Image.new("RGB", (120, 60), (255, 255, 255))
    for x in range(50, 70):
        for y in range(20, 40):
            picture.putpixel((x, y), (0, 0, 0))
    path = tmp_path / "drawing.png"
    picture.save(path)
    pixels, original = load_image(path)
    assert pixels.shape == (1, 28, 28) and pixels.dtype == torch.uint8
    assert original.shape == (1, 120, 120)
    # Inverted (light border): the black square became the bright centre, the border is black.
    assert pixels[0, 14, 14] > 200 and pixels[0, 0, 0] < 30
    kept, _ = load_image(path, invert=False)
    assert kept[0, 14, 14] < 60 and kept[0, 0, 0] > 220


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_text("hello, not a picture"), "not an image file"),
        (lambda p: None, "no such file"),
    ],
)
def test_load_image_errors_are_one_line(tmp_path, make, message):
    path = tmp_path / "picture.png"
    make(path)
    with pytest.raises(ImageDataError, match=message) as caught:
        load_image(path)
    assert "\n" not in str(caught.value)


def test_load_image_refuses_a_huge_picture(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 10
    path = tmp_path / "huge.png"
    Image.new("L", (side, side)).save(path)
    with pytest.raises(ImageDataError, match="more than"):
        load_image(path)


def _png_bytes(width: int, height: int, colour: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_load_image_from_bytes_equals_from_the_file(tmp_path):
    picture = Image.new("RGB", (40, 30), (250, 250, 250))
    for x in range(10, 25):
        picture.putpixel((x, 15), (10, 10, 10))
    path = tmp_path / "line.png"
    picture.save(path)
    from_path = load_image(path)
    from_bytes = load_image(path.read_bytes())
    assert all(torch.equal(a, b) for a, b in zip(from_path, from_bytes, strict=True))


def test_load_image_refuses_too_many_bytes(tmp_path):
    with pytest.raises(ImageDataError, match=f"more than the {MAX_IMAGE_BYTES:,}"):
        load_image(b"\x89PNG" + bytes(MAX_IMAGE_BYTES))
    path = tmp_path / "big.png"
    path.write_bytes(bytes(MAX_IMAGE_BYTES + 1))
    with pytest.raises(ImageDataError, match="bytes, more than"):
        load_image(path)


def test_load_image_refuses_a_side_longer_than_the_bound():
    with pytest.raises(ImageDataError, match=f"longer side is more than the {MAX_IMAGE_SIDE:,}"):
        load_image(_png_bytes(MAX_IMAGE_SIDE + 1, 1))


@pytest.mark.parametrize(("width", "height"), [(1, 7500), (7500, 1)])
def test_load_image_refuses_a_strip_whose_square_is_too_large(width, height):
    """A 1 x 7500 strip has few pixels, but padding it to a square would make 56 million."""
    assert width * height < MAX_IMAGE_PIXELS < 7500**2 and MAX_IMAGE_SIDE >= 7500
    with pytest.raises(ImageDataError, match="padded to a square it would have 56,250,000 pixels"):
        load_image(_png_bytes(width, height))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the picture is empty"),
        (b"hello, not a picture", "the picture is not an image file"),
        (_png_bytes(20, 20)[:45], "cannot read the picture: "),  # cut inside the pixels
    ],
    ids=["empty", "not-an-image", "truncated"],
)
def test_load_image_bytes_errors_are_one_line(content, message):
    with pytest.raises(ImageDataError, match=message) as caught:
        load_image(content)
    assert "\n" not in str(caught.value)


def test_image_data_error_is_an_attnlab_error():
    """The explorer answers AttnlabErrors with a 400 and the command line with one line."""
    assert issubclass(ImageDataError, AttnlabError) and issubclass(ImageDataError, RuntimeError)
