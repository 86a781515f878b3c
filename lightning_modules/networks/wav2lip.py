"""Wav2Lip's generator in its published layout, so the released checkpoint loads as it is.

Paper 003 stage 2 uses the released Wav2Lip (Prajwal et al. 2020, github.com/Rudrabha/Wav2Lip,
``models/wav2lip.py`` / ``models/conv.py``); :class:`Wav2LipGenerator` builds the same modules
under the same names (``face_encoder_blocks.<i>.<j>.conv_block.0.weight``, ...), so
``wav2lip.pth`` / ``wav2lip_gan.pth`` (``{"state_dict": ...}``, keys as saved or with DataParallel's
``module.`` prefix) load with :func:`load_wav2lip_state`. The forward takes the project's
convention and converts to Wav2Lip's: RGB -> BGR (Wav2Lip reads frames with OpenCV), mel windows
(16 time x 80 bins) -> (80 bins x 16 time), and the window starts AT the frame (``int(80 t / fps)``,
Wav2Lip's ``crop_audio_window`` / inference ``mel_chunks``), not 6 rows before it as ours
(:data:`MEL_OFFSET`, read by ``lightning_modules.two_stage``). 96 x 96 crops only. The released
weights expect Wav2Lip's face crops (S3FD box, 10 px padded below the chin), which our aligned
crops approximate: fine-tune (``train@two_stage``) rather than use them unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

IMAGE_SIZE = 96
MEL_OFFSET = 0
"""Wav2Lip's mel window for frame t starts at row ``int(3.2 t)`` (ours: 6 rows earlier, centred)."""


class Conv(nn.Module):
    """Conv + BatchNorm (+ the input when ``residual``) + ReLU; Wav2Lip's ``Conv2d`` (same attribute names)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride, padding: int, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding), nn.BatchNorm2d(c_out))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        return self.act(out + x if self.residual else out)


class ConvTranspose(nn.Module):
    """Transposed conv + BatchNorm + ReLU; Wav2Lip's ``Conv2dTranspose``."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, output_padding: int = 0):
        super().__init__()
        self.conv_block = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding),
                                        nn.BatchNorm2d(c_out))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


def _down(c_in: int, c_out: int, n_res: int, stride=2, k: int = 3, padding: int = 1) -> list[nn.Module]:
    """A strided conv then ``n_res`` residual 3x3 convs at ``c_out`` channels."""
    return [Conv(c_in, c_out, k, stride, padding)] + [Conv(c_out, c_out, 3, 1, 1, residual=True) for _ in range(n_res)]


def _up(c_in: int, c_out: int, n_res: int, stride: int = 2) -> nn.Sequential:
    up = ConvTranspose(c_in, c_out, 3, 1, 0) if stride == 1 else ConvTranspose(c_in, c_out, 3, 2, 1, output_padding=1)
    return nn.Sequential(up, *[Conv(c_out, c_out, 3, 1, 1, residual=True) for _ in range(n_res)])


class Wav2LipGenerator(nn.Module):
    """``(masked target, reference) (B, 3, 96, 96) RGB in [0, 1], mel (B, 1, 16, 80) in [-4, 4]
    -> (B, 3, 96, 96) RGB in [0, 1]``: the interface of ``networks.two_stage.LipSyncGenerator``.

    Face encoder 96 -> 48 -> 24 -> 12 -> 6 -> 3 -> 1 (16 ... 512 channels), audio encoder over
    80 x 16 mel windows to a 512-d embedding, decoder back up with the encoder's maps concatenated
    at each size, a sigmoid output (Wav2Lip's ``models/wav2lip.py``; 36.3 M parameters).
    """

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv(6, 16, 7, 1, 3)),  # 96
            nn.Sequential(*_down(16, 32, 2)),  # 48
            nn.Sequential(*_down(32, 64, 3)),  # 24
            nn.Sequential(*_down(64, 128, 2)),  # 12
            nn.Sequential(*_down(128, 256, 2)),  # 6
            nn.Sequential(*_down(256, 512, 1)),  # 3
            nn.Sequential(Conv(512, 512, 3, 1, 0), Conv(512, 512, 1, 1, 0))])  # 1
        self.audio_encoder = nn.Sequential(  # (B, 1, 80, 16) -> (B, 512, 1, 1)
            *_down(1, 32, 2, stride=1), *_down(32, 64, 2, stride=(3, 1)), *_down(64, 128, 2, stride=3),
            *_down(128, 256, 1, stride=(3, 2)), Conv(256, 512, 3, 1, 0), Conv(512, 512, 1, 1, 0))
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv(512, 512, 1, 1, 0)),  # 1
            _up(1024, 512, 1, stride=1),  # 3
            _up(1024, 512, 2),  # 6
            _up(768, 384, 2),  # 12
            _up(512, 256, 2),  # 24
            _up(320, 128, 2),  # 48
            _up(160, 64, 2)])  # 96
        self.output_block = nn.Sequential(Conv(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, masked: Tensor, reference: Tensor, mel: Tensor) -> Tensor:
        if masked.shape[-1] != IMAGE_SIZE:
            raise ValueError(f"Wav2Lip's generator takes {IMAGE_SIZE} px crops, got {masked.shape[-1]}")
        x = torch.cat([masked.flip(1), reference.flip(1)], dim=1)  # RGB -> BGR, Wav2Lip's channel order
        h = self.audio_encoder(mel.transpose(-1, -2))  # (B, 512, 1, 1) from (B, 1, 80, 16)
        feats = []
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        for block in self.face_decoder_blocks:
            h = torch.cat([block(h), feats.pop()], dim=1)
        return self.output_block(h).flip(1)  # BGR -> RGB


def load_wav2lip_state(path: str, sha256: str | None = None, where: str = "wav2lip") -> dict[str, Tensor]:
    """The generator state dict of a released Wav2Lip checkpoint (``{"state_dict": ...}``, ``module.``
    prefixes removed as Wav2Lip's ``inference.py`` does).

    Raises:
        FileNotFoundError: no file at ``path`` (the message says where Wav2Lip's weights come from).
        ValueError: checksum mismatch, or the file's tensors do not fit :class:`Wav2LipGenerator`.
    """
    from pathlib import Path

    from primitives.checksum import checked_sha256

    if not Path(path).is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist (Wav2Lip's released generator, wav2lip.pth or "
                                "wav2lip_gan.pth, linked from github.com/Rudrabha/Wav2Lip's README)")
    checked_sha256(path, sha256, where=where)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in saved.get("state_dict", saved).items()}
    own = Wav2LipGenerator().state_dict()
    bad = sorted(set(own) ^ set(state)) + sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if bad:
        raise ValueError(f"{where}: {path} is not a Wav2Lip generator ({len(bad)} keys differ, e.g. {bad[:3]})")
    return state
