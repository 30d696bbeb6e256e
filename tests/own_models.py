"""A user's own model and files for the tests of the own-model road (tests/test_own_model.py,
tests/test_cli_own_model.py), and factories the CLI imports as ``own_models:...``.

The factories read the files from the folder ``$BITSEARCH_TEST_OWN_MODEL`` names."""

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import bitsearch
from bitsearch.tasks import Task

SIDE = 12
CLASSES = ("diagonal", "horizontal", "vertical")  # sorted, as ImageFolder numbers its folders


def bars(n: int, seed: int):
    """``n`` 12x12 grey images of a horizontal, vertical or diagonal bar in noise, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CLASSES)
    x = 0.25 * torch.rand(n, 1, SIDE, SIDE, generator=generator)
    where = torch.randint(2, SIDE - 2, (n,), generator=generator)
    for i in range(n):
        p = int(where[i])
        if CLASSES[int(y[i])] == "horizontal":
            x[i, 0, p - 1:p + 1, :] += 0.7
        elif CLASSES[int(y[i])] == "vertical":
            x[i, 0, :, p - 1:p + 1] += 0.7
        else:
            idx = torch.arange(SIDE)
            x[i, 0, idx, (idx + p) % SIDE] += 0.7
    return x.clamp(0, 1), y


class BarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 6 * 6, len(CLASSES))

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def write_image_folder(root, x, y):
    """The images as PNG files in ``root/<class>/<i>.png`` (what torchvision's ImageFolder reads)."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image[0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")


def make_user_files(root: Path) -> Path:
    """A BarNet trained with plain torch (``barnet.pt``) and two image folders of PNG files
    (``images/train``, ``images/val``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = BarNet()
        x, y = bars(600, seed=1)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(8):
            for start in range(0, len(x), 50):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x[start:start + 50]), y[start:start + 50])
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    torch.save(model.state_dict(), root / "barnet.pt")
    write_image_folder(root / "images" / "train", *bars(90, seed=2))
    write_image_folder(root / "images" / "val", *bars(60, seed=3))
    return root


def loaders(root):
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Grayscale(), transforms.ToTensor()])
    train = datasets.ImageFolder(str(root / "images" / "train"), transform=transform)
    test = datasets.ImageFolder(str(root / "images" / "val"), transform=transform)
    return (DataLoader(train, batch_size=16, shuffle=False), DataLoader(test, batch_size=32, shuffle=False))


def trained_model(root):
    model = BarNet()
    model.load_state_dict(torch.load(root / "barnet.pt", weights_only=True))
    return model.eval()


def _root() -> Path:
    return Path(os.environ["BITSEARCH_TEST_OWN_MODEL"])


def barnet_task() -> Task:
    """BarNet's architecture as a shape-only task (for --weights and --data)."""
    return Task("barnet", model_factory=lambda width_mult: BarNet(), input_shape=(1, SIDE, SIDE),
                description="BarNet's architecture, no data")


def barnet_trained(metric: str = "top1", higher_is_better: bool = True):
    """The trained BarNet with its loaders: what a user factory returns instead of a Task."""
    from bitsearch.evaluate import classification_metrics

    train_loader, test_loader = loaders(_root())
    return bitsearch.TrainedModel(trained_model(_root()), torch.zeros(1, 1, SIDE, SIDE), calibration=train_loader,
                                  evaluate=classification_metrics(test_loader), metric=metric,
                                  higher_is_better=higher_is_better,
                                  train_loader=train_loader, name="barnet", description="BarNet from barnet.pt")


def wrong_metric():
    return barnet_trained(metric="top5")


def barnet_loss():
    """The trained BarNet scored by its test cross-entropy, lower is better."""
    return barnet_trained(metric="loss", higher_is_better=False)


def resnet18_shapes() -> Task:
    """A user's own ResNet-18 on 3 classes (torchvision's architecture), shape only: HAWQ-V3 names
    its layers, so its policies export to and import from HAWQ's bit_config."""
    from torchvision.models import resnet18

    return Task("my-resnet18", model_factory=lambda width_mult: resnet18(num_classes=3), input_shape=(3, 32, 32),
                description="torchvision's ResNet-18, 3 classes, shape only")
