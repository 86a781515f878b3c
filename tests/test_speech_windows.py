"""Training targets away from the window's edges (primitives.speech_windows) and their use by sinha and emotalker."""

import torch

from primitives.speech_windows import inner_targets


def test_targets_keep_the_whole_speech_window_inside():
    torch.manual_seed(0)
    t = inner_targets(10_000, 25, 6, "cpu")  # sinha: W = 6 -> frames t - 3 .. t + 2
    assert int(t.min()) == 3 and int(t.max()) == 22  # every inner frame drawn, none outside
    t = inner_targets(10_000, 25, 8, "cpu")  # emotalker: W = 8 -> t - 4 .. t + 3
    assert int(t.min()) == 4 and int(t.max()) == 21
    assert set(inner_targets(1000, 4, 8, "cpu").tolist()) == {0, 1, 2, 3}  # shorter than W: all frames


def test_sinha_and_emotalker_draw_inner_targets():
    from lightning_modules.emotalker import EmoTalkerModule
    from lightning_modules.sinha import SinhaModule

    sinha = SinhaModule(net={"landmark": {"audio_hidden": 8, "dim": 8},
                             "texture": {"crop_size": 64, "encoder_widths": [8, 8, 8], "motion_widths": [8, 8, 8],
                                         "emotion_dim": 8}}, optim={"vgg16_weights": None})
    torch.manual_seed(0)
    t, r = sinha._pick({"lmk": torch.zeros(2000, 25, 68, 2)}, train=True)
    assert int(t.min()) == 3 and int(t.max()) == 22 and bool((t != r).all())
    emotalker = EmoTalkerModule(net={"crop_size": 64, "block_out_channels": [8, 16], "norm_num_groups": 8,
                                     "cross_attention_dim": 16},
                                optim={"autoencoder_path": "unused", "autoencoder_scaling": 1.0, "intensity_block": "untrained"},
                                autoencoder_net={"image_size": 64, "block_out_channels": [8, 8, 8], "norm_num_groups": 8})
    target, ref = emotalker._pick_frames(2000, 25, "cpu")
    assert int(target.min()) == 4 and int(target.max()) == 21 and bool(((target - ref).abs() >= 10).all())
