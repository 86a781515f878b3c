"""Which way every adversarial and lip-sync loss pushes, checked by values at each module's call site.

Discriminators, critics and sync experts are replaced by stand-ins with known outputs (the mean of
the image / landmarks they see; a fixed sync probability of 0.8), so each loss has one right value,
and a flipped target, swapped real/fake arguments or a missing detach each give another.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import TINY_INIT, TINY_NETS
from lightning_modules import METHODS

S = 64


def _tiny(method: str, **optim):
    net, base = TINY_NETS[method]
    return METHODS[method](net=net, optim={**base, **optim}, **TINY_INIT.get(method, {}))


class MeanScore(nn.Module):
    """Discriminator stand-in: the mean of its first input per sample, ``(N, 1)``, times a weight
    of 1 (its one parameter); conditions ignored."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, *conditions) -> torch.Tensor:
        return self.weight * x.flatten(1).mean(1, keepdim=True)


class FlatScore(MeanScore):
    """The same, one logit per sample: ``(N,)``."""

    def forward(self, x: torch.Tensor, *conditions) -> torch.Tensor:
        return super().forward(x)[:, 0]


class PatchScores(MeanScore):
    """pix2pixHD multi-scale discriminator stand-in: one scale, [features = the image, score = its mean]."""

    def forward(self, labels: torch.Tensor, images: torch.Tensor) -> list[list[torch.Tensor]]:
        return [[images, super().forward(images)[:, :, None, None]]]


class FixedExpert(nn.Module):
    """SyncNet stand-in: every (video, audio) pair has cosine 0.8, so P(sync) = 0.8 (``relu`` mode)."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(crop_size=S, prob_mode="relu")
        self.anchor = nn.Parameter(torch.zeros(1))  # a parameter, so the module has a device

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(faces)
        return torch.tensor([[1.0, 0.0]]).expand(n, -1), torch.tensor([[0.8, 0.6]]).expand(n, -1)


SYNC_TARGET_ONE = -math.log(0.8)  # BCE of P = 0.8 against "in sync" (eq. 5); against 0 it is -log 0.2


def test_sinha_lsgan_real_to_one_generated_to_one_for_the_generator():
    """Paper 002 eq. 3: D(real) -> 1, D(generated) -> 0; G wants D(generated) -> 1. With D scoring
    real +1 and generated -1: D loss ((1-1)^2 + (-1)^2) / 2 = 0.5, G loss (-1-1)^2 / 2 = 2."""
    model = _tiny("sinha")
    model.landmark_disc, model.frame_disc = MeanScore(), MeanScore()
    pred = torch.full((2, 68, 2), -1.0, requires_grad=True)
    gen = torch.full((2, 3, S, S), -1.0, requires_grad=True)
    out = {"target_canon": torch.ones(2, 68, 2), "pred_canon": pred, "target": torch.ones(2, 3, S, S), "gen": gen}
    labels = torch.tensor([1, 2]), torch.tensor([0, 3])
    d_l, d_t = model.discriminator_losses(out, *labels)
    assert float(d_l) == pytest.approx(0.5) and float(d_t) == pytest.approx(0.5)
    (d_l + d_t).backward()
    assert pred.grad is None and gen.grad is None  # the discriminator step leaves the generators alone
    g_l, g_t = model.generator_gan_losses(out, *labels)
    assert float(g_l) == pytest.approx(2.0) and float(g_t) == pytest.approx(2.0)
    (g_l + g_t).backward()
    assert (pred.grad < 0).all() and (gen.grad < 0).all()  # descending raises D's score of the fakes


def test_eapc_vid2vid_hinge_and_feature_matching():
    """Hinge: D loss relu(1 - D(real)) + relu(1 + D(fake)), G loss -D(fake); with real frames at
    +0.5 and generated at -0.5: D 0.5 + 0.5 = 1, G 0.5, feature matching |(-0.5) - 0.5| = 1."""
    model = _tiny("eapc_vid2vid")
    model.discriminator = PatchScores()
    labels = torch.zeros(2, 1, S, S)
    real, fake = torch.full((2, 3, S, S), 0.5), torch.full((2, 3, S, S), -0.5, requires_grad=True)
    d = model.discriminator_loss(labels, real, fake)
    assert float(d) == pytest.approx(1.0)
    d.backward()
    assert fake.grad is None
    g = model.generator_gan_losses(labels, real, fake)
    assert float(g["gan"]) == pytest.approx(0.5) and float(g["fm"]) == pytest.approx(1.0)


def test_two_stage_wgan_signs_and_sync_target():
    """StarGAN (paper 003 stage 1): critic loss -D(real) + D(fake), generator -D(fake); Wav2Lip's
    stage-2 sync term is BCE against "in sync"."""
    model = _tiny("two_stage")
    n_emotions = model.editor_cfg.n_emotions

    class Critic(nn.Module):
        def forward(self, x):
            return x.flatten(1).mean(1), torch.zeros(len(x), n_emotions) + 0 * x.flatten(1)[:, :1]

    class Negate(nn.Module):
        def forward(self, x, emotion):
            return -x

    model.critic, model.editor = Critic(), Negate()
    x, label, target = torch.full((2, 3, S, S), 0.5), torch.tensor([0, 1]), torch.tensor([2, 3])
    d = model.critic_losses(x, label, target)
    assert float(d["d_real"]) == pytest.approx(-0.5) and float(d["d_fake"]) == pytest.approx(-0.5)
    g = model.generator_losses(x, label, target)
    assert float(g["g_adv"]) == pytest.approx(0.5) and float(g["g_rec"]) == pytest.approx(0.0)
    # stage 2, Wav2Lip's visual-quality discriminator (BCE on logits): real frames scored +2, generated -2
    model.quality = FlatScore()
    real, gen = torch.full((2, 5, 3, S, S), 2.0), torch.full((2, 5, 3, S, S), -2.0, requires_grad=True)
    softplus = torch.nn.functional.softplus
    assert float(model.quality_d_loss(real, gen)) == pytest.approx(2 * float(softplus(torch.tensor(-2.0))))
    assert float(model.quality_g_loss(gen)) == pytest.approx(float(softplus(torch.tensor(2.0))))
    model._expert = (FixedExpert(),)
    term = model.sync_term(torch.rand(2, 5, 3, S, S), torch.zeros(2, 40, 80), torch.zeros(2, dtype=torch.long))
    assert float(term) == pytest.approx(SYNC_TARGET_ONE, rel=1e-5)


def test_cvae_lip_sync_loss_targets_in_sync():
    """Paper 000 eq. 5: the generator's lip-sync loss is BCE of the expert's P(sync) against 1."""
    model = _tiny("cvae", aux_start_step=0)
    model.set_sync_expert(FixedExpert())
    batch = {f"frames_{S}": torch.randint(0, 256, (2, 8, S, S, 3), dtype=torch.uint8),
             "mel": torch.zeros(2, 26, 80), "emotion": torch.tensor([1, 4])}
    _, losses = model.model_step(batch, train=False)
    assert float(losses["sync"]) == pytest.approx(SYNC_TARGET_ONE, rel=1e-5)
