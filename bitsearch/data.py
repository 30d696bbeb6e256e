"""Data you bring on the command line (torch): ``--data imagefolder:DIR``.

``imagefolder:DIR`` reads a torchvision ``ImageFolder`` (``DIR/<class>/<image>``, classes
numbered in sorted order) with the usual transforms for the model's input shape
``(C, H, W)``: resize the short side to ``H * 256 / 224`` and centre-crop ``H x W``, then
``ToTensor`` (grey levels in [0, 1]; 1-channel models get a greyscale conversion) and, for
3-channel models, ImageNet's mean and standard deviation.  With ``DIR/train`` and
``DIR/val`` (or ``DIR/test``) the first calibrates, trains and estimates sensitivities and
the second scores; otherwise ``DIR`` does both.  Images are read batch by batch by a
``DataLoader``: nothing holds the data set in memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import UserInputError

KINDS = ("imagefolder",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CALIBRATION_SAMPLES = 256
BATCH_SIZE = 32


class DataSpecError(UserInputError):
    """A ``--data`` argument that does not parse or names no usable data."""


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_data(text: str) -> DataSpec:
    """``imagefolder:DIR`` -> :class:`DataSpec` (the folder must exist)."""
    kind, sep, path = str(text).partition(":")
    if not sep or not path:
        raise DataSpecError(f"--data {text!r} does not parse: expected KIND:PATH, e.g. imagefolder:~/images "
                            f"(kinds: {', '.join(KINDS)})")
    if kind not in KINDS:
        raise DataSpecError(f"--data {text!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)} "
                            "(e.g. imagefolder:DIR with DIR/<class>/<image>.png)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataSpecError(f"--data {text!r}: {folder} is not a folder")
    return DataSpec(kind, str(folder))


def _splits(folder: Path) -> tuple[Path, Path]:
    train = folder / "train"
    for name in ("val", "test"):
        if train.is_dir() and (folder / name).is_dir():
            return train, folder / name
    return folder, folder


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_digest(folder: Path) -> str:
    """A digest of the image files of ``folder`` (relative names, sizes and modification
    times; not their bytes): names the data in sensitivity cache keys."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            stat = p.stat()
            h.update(f"{p.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def image_transform(input_shape: Sequence[int]):
    from torchvision import transforms

    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise DataSpecError(f"imagefolder data need a model whose input is an image (1 or 3 channels, H, W); "
                            f"this one takes {tuple(input_shape)}")
    channels, height, width = (int(d) for d in input_shape)
    steps = []
    if channels == 1:
        steps.append(transforms.Grayscale(1))
    else:
        steps.append(transforms.Lambda(_to_rgb))
    steps += [transforms.Resize(max(1, round(min(height, width) * 256 / 224))), transforms.CenterCrop((height, width)),
              transforms.ToTensor()]
    if channels == 3:
        steps.append(transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return transforms.Compose(steps)


def _to_rgb(image):
    return image.convert("RGB")


def _image_folder(folder: Path, transform, spec: DataSpec):
    from torchvision import datasets

    if _count_images(folder) == 0:
        raise DataSpecError(f"--data {spec}: {folder} holds no images (expected {folder}/<class>/<image>.png or "
                            f".jpg, one folder per class)")
    try:
        return datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataSpecError(f"--data {spec}: {folder}: {str(exc).splitlines()[0]}") from None


@dataclass
class ImageFolderData:
    """The loaders of an image folder: ``calibration`` (a fixed seeded order of the
    training images), ``train`` (shuffled afresh each pass, seeded), ``test``; ``classes``."""

    calibration: Any
    train: Any
    test: Any
    classes: list
    digest: str
    train_folder: Path
    test_folder: Path


def image_folder_data(spec: DataSpec, input_shape: Sequence[int], *, batch_size: int = BATCH_SIZE,
                      seed: int = 0) -> ImageFolderData:
    """Loaders over ``spec``'s folders for a model taking ``input_shape`` (see the module doc)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    train_folder, test_folder = _splits(Path(spec.path))
    transform = image_transform(input_shape)
    train_set = _image_folder(train_folder, transform, spec)
    test_set = train_set if test_folder == train_folder else _image_folder(test_folder, transform, spec)
    if test_set.classes != train_set.classes:
        raise DataSpecError(f"--data {spec}: {train_folder} and {test_folder} have different classes "
                            f"({', '.join(train_set.classes[:5])}... against {', '.join(test_set.classes[:5])}...)")
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
    calibration = DataLoader(Subset(train_set, order), batch_size=batch_size, shuffle=False)
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed), drop_last=len(train_set) > batch_size)
    test = DataLoader(test_set, batch_size=batch_size, shuffle=False)
    digest = folder_digest(Path(spec.path))
    return ImageFolderData(calibration, train, test, list(train_set.classes), digest, train_folder, test_folder)
