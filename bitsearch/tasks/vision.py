"""Shape-only ImageNet models from torchvision: ``resnet18``, ``resnet50``, ``mobilenet_v2``.

No data and no training: they exist for cost and scale work (a real network's layer
shapes, parameters and MACs).  Built with ``weights=None``; ``trained_model`` returns the
model initialised under the recipe's seed.  Module names are torchvision's, so layer
names (``layer1.0.conv1``, ``features.3.conv.1.0``...) match published configurations.

Width multiplier: ResNets scale every stage's channels (64, 128, 256, 512) with
:func:`scale_width` and keep torchvision's structure and initialisation; MobileNetV2 uses
torchvision's own ``width_mult`` (channels rounded to a multiple of 8, the last 1,280
channels never narrowed, as in the MobileNetV2 paper).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from .base import Task, TrainRecipe, scale_width
from .registry import describe

INPUT_SHAPE = (3, 224, 224)
RECIPE = TrainRecipe(epochs=0, seed=0)


def _scaled_resnet(block_name: str, layers: list[int], width_mult: float) -> nn.Module:
    from torchvision.models import resnet

    block = getattr(resnet, block_name)

    class ScaledResNet(resnet.ResNet):
        """torchvision's ResNet with every stage's width scaled (same module names)."""

        def __init__(self):
            nn.Module.__init__(self)
            widths = [scale_width(c, width_mult) for c in (64, 128, 256, 512)]
            self._norm_layer = nn.BatchNorm2d
            self.dilation = 1
            self.groups = 1
            self.base_width = 64
            self.inplanes = widths[0]
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, widths[0], layers[0])
            self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
            self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
            self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(widths[3] * block.expansion, 1000)
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.constant_(module.weight, 1)
                    nn.init.constant_(module.bias, 0)

    return ScaledResNet()


def build_resnet18(width_mult: float = 1.0) -> nn.Module:
    if width_mult == 1.0:
        from torchvision.models import resnet18

        return resnet18(weights=None)
    return _scaled_resnet("BasicBlock", [2, 2, 2, 2], width_mult)


def build_resnet50(width_mult: float = 1.0) -> nn.Module:
    if width_mult == 1.0:
        from torchvision.models import resnet50

        return resnet50(weights=None)
    return _scaled_resnet("Bottleneck", [3, 4, 6, 3], width_mult)


def build_mobilenet_v2(width_mult: float = 1.0) -> nn.Module:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None, width_mult=width_mult)


FACTORIES = {
    "resnet18": build_resnet18,
    "resnet50": build_resnet50,
    "mobilenet_v2": build_mobilenet_v2,
}


def make_task(name: str) -> Task:
    return Task(name, model_factory=FACTORIES[name], input_shape=INPUT_SHAPE, description=describe(name),
                recipe=RECIPE, data_settings={"shape_only": True})


make_resnet18 = partial(make_task, "resnet18")
make_resnet50 = partial(make_task, "resnet50")
make_mobilenet_v2 = partial(make_task, "mobilenet_v2")
