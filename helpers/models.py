"""DermNet: a small ResNet for DermSynth, and loading its shipped checkpoints.

The module names mirror torchvision's ResNet (``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1`` .. ``layer4``, ``avgpool``, ``fc``), so ``model.layer4[-1]`` means here what it means on a
real ResNet-50. Three choices make every method in the course apply directly:

- the input is in [0, 1] pixel space (black is 0); normalisation happens inside the model;
- global average pooling comes right before the single linear layer, so CAM applies;
- every ReLU is its own non-in-place ``nn.ReLU`` module, used once (Captum's DeepLift and SHAP's
  DeepExplainer need that; guided backprop overrides ReLU modules, not functional calls).

With 64x64 inputs the feature grids are: conv1 64x64, layer1 32x32, layer2 16x16, layer3 8x8,
layer4 8x8.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .data import CLASSES

if TYPE_CHECKING:
    from .vit import DermViT

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MANIFEST = DATA_DIR / "MANIFEST.json"
CHECKPOINTS = ("shortcut", "debiased")
ARCHITECTURES = ("dermnet", "vit")
# checkpoints that exist for one architecture only: a DermNet trained on permuted labels (notebook 12),
# and notebook 15's: clinic C's DermNet and two repairs of it
EXTRA_CHECKPOINTS = {"dermnet": ("random_labels", "clinic_c", "clinic_c_augmented", "clinic_c_rrr"), "vit": ()}

# mean and std of DermSynth pixels (clinic B, 4,000 images); fixed constants so that the
# model does not depend on the data it is given
PIXEL_MEAN = (0.66, 0.49, 0.40)
PIXEL_STD = (0.20, 0.17, 0.16)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection, as in torchvision (expansion 1).

    Unlike torchvision, each ReLU is a separate module used once (relu1 inside, relu2 after the
    addition), so hooks and ReLU overrides see every non-linearity.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Normalize(nn.Module):
    """(x - mean) / std per channel, with the constants stored as buffers."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class DermNet(nn.Module):
    """A ResNet-10-style classifier for 64x64 DermSynth images (one BasicBlock per stage)."""

    def __init__(self, num_classes: int = len(CLASSES), widths=(16, 32, 64, 128)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.normalize = Normalize(PIXEL_MEAN, PIXEL_STD)
        self.conv1 = nn.Conv2d(3, w1, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(w1, w1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, stride=2))
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, stride=2))
        self.layer4 = nn.Sequential(BasicBlock(w3, w4))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The layer4 feature maps, [B, 128, 8, 8] for 64x64 inputs (what CAM weights)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be [B, 3, H, W], got shape {tuple(x.shape)}")
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def checkpoint_path(name: str, arch: str = "dermnet") -> Path:
    """data/<arch>_<name>.pt, e.g. data/dermnet_shortcut.pt or data/vit_debiased.pt."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    names = CHECKPOINTS + EXTRA_CHECKPOINTS[arch]
    if name not in names:
        raise ValueError(f"name must be one of {names}, got {name!r}")
    return DATA_DIR / f"{arch}_{name}.pt"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify_checkpoint(name: str, arch: str = "dermnet") -> Path:
    """Check a shipped checkpoint against data/MANIFEST.json; return its path."""
    path = checkpoint_path(name, arch)
    rebuild = "Rebuild the checkpoints with `make data` (python -m helpers.train)."
    if not MANIFEST.exists():
        raise FileNotFoundError(f"{MANIFEST} is missing. {rebuild}")
    manifest = json.loads(MANIFEST.read_text())
    entry = manifest.get("files", {}).get(path.name)
    if entry is None:
        raise FileNotFoundError(f"{path.name} is not listed in {MANIFEST}. {rebuild}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} is missing. {rebuild}")
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise RuntimeError(f"checkpoint {path} does not match {MANIFEST.name} "
                           f"(sha256 {digest[:12]}... expected {entry['sha256'][:12]}...): the file "
                           f"was altered or is from another build. {rebuild}")
    return path


def load_dermnet(name: str = "shortcut") -> DermNet:
    """Load a shipped DermNet checkpoint, verified against its sha256, in eval mode.

    name  "shortcut": trained on clinic A, where rulers go with melanoma
          "debiased": trained on clinic B, where the ruler carries no label information
          "random_labels": trained on 1,024 fixed clinic-A images whose labels were permuted; it
          memorizes them and has learned nothing that transfers (notebook 12's data randomization)
    "clinic_c": trained on clinic C (notebook 15's case); "clinic_c_augmented", "clinic_c_rrr":
          two repairs fine-tuned from it (``helpers.train.train_fix``)
    """
    path = verify_checkpoint(name)
    model = DermNet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def load_vit(name: str = "shortcut") -> DermViT:
    """Load a shipped DermSynth ViT checkpoint, verified against its sha256, in eval mode.

    name  "shortcut": trained on clinic A, where rulers go with melanoma
          "debiased": trained on clinic B, where the ruler carries no label information
    """
    from .vit import DermViT

    path = verify_checkpoint(name, "vit")
    model = DermViT()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def __getattr__(name: str):
    # DermViT lives in helpers.vit, imported on first use: timm adds about 2 s to an import
    if name == "DermViT":
        from .vit import DermViT
        return DermViT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
