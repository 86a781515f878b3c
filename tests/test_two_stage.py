"""Two-stage method (paper 003): StarGAN emotion editor + Wav2Lip-style lip-sync generator."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from datamodules.talking_face import DataConfig, TalkingFaceDataModule
from lightning_modules.networks.two_stage import (EditorConfig, EditorDiscriminator, EmotionEditor, LipSyncConfig,
                                                   LipSyncGenerator, QualityDiscriminator, gradient_penalty)
from lightning_modules.two_stage import TwoStageModule
from primitives.vocab import EMOTIONS

ROOT = Path(__file__).resolve().parents[1]
S = 64
NET = {"crop_size": S, "editor": {"g_conv_dim": 8, "g_repeat": 2, "d_conv_dim": 8, "d_repeat": 4},
       "lipsync": {"widths": [8, 8, 16, 16, 32, 32, 32], "audio_widths": [8, 16, 32], "d_widths": [8, 16]}}


def test_shapes_and_ranges_of_both_stages():
    cfg = EditorConfig(image_size=S, g_conv_dim=8, g_repeat=2, d_conv_dim=8, d_repeat=4)
    x = torch.rand(2, 3, S, S) * 2 - 1
    out = EmotionEditor(cfg)(x, torch.tensor([1, 5]))
    assert out.shape == (2, 3, S, S) and out.abs().max() <= 1
    src, cls = EditorDiscriminator(cfg)(x)
    assert src.shape == (2, 1, S // 16, S // 16) and cls.shape == (2, 8)
    lcfg = LipSyncConfig(image_size=S, widths=(8, 8, 16, 16, 32, 32, 32), audio_widths=(8, 16, 32), d_widths=(8, 16))
    gen = LipSyncGenerator(lcfg)(torch.rand(3, 3, S, S), torch.rand(3, 3, S, S), torch.randn(3, 1, 16, 80))
    assert gen.shape == (3, 3, S, S) and 0 <= gen.min() and gen.max() <= 1
    assert QualityDiscriminator(lcfg)(gen).shape == (3,)
    with pytest.raises(ValueError, match="needs 7 entries at 64 px"):
        LipSyncConfig(image_size=S, widths=(8, 8))


def test_wav2lip_96_px_encoder_ends_in_a_valid_3x3_conv():
    """Wav2Lip's 96 px: stride-2 stages 96 -> 3, then a 3x3 valid conv to 1x1 (7 widths with the stem)."""
    from lightning_modules.networks.two_stage import face_stages

    assert face_stages(96) == [96, 48, 24, 12, 6, 3] and face_stages(64) == [64, 32, 16, 8, 4, 2]
    cfg = LipSyncConfig(image_size=96, widths=(8, 8, 16, 16, 32, 32, 32), audio_widths=(8, 16, 32), d_widths=(8, 16))
    gen = LipSyncGenerator(cfg)
    last = gen.face[-1][0]
    assert (last.kernel_size, last.stride, last.padding) == ((3, 3), (1, 1), (0, 0))
    out = gen(torch.rand(2, 3, 96, 96), torch.rand(2, 3, 96, 96), torch.randn(2, 1, 16, 80))
    assert out.shape == (2, 3, 96, 96)
    for bad in (100, 24):
        with pytest.raises(ValueError, match="power of two >= 32 or three times one"):
            face_stages(bad)


def test_instance_norm_behaves_the_same_in_eval_mode():
    editor = EmotionEditor(EditorConfig(image_size=S, g_conv_dim=8, g_repeat=1))
    x, e = torch.rand(2, 3, S, S) * 2 - 1, torch.tensor([0, 3])
    assert torch.allclose(editor.train()(x, e), editor.eval()(x, e), atol=1e-6)


class _Linear(nn.Module):
    """D(x) = sum(w * x): its input gradient is w at every x, so the penalty is (||w|| - 1)^2."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).sum((1, 2, 3)).view(-1, 1, 1, 1), None


def test_gradient_penalty_matches_a_hand_computed_case():
    w = torch.zeros(1, 3, 2, 2)
    w[0, 0, 0, 0], w[0, 1, 1, 1] = 3.0, 4.0  # ||w|| = 5
    gp = gradient_penalty(_Linear(w), torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 2))
    assert float(gp.detach()) == pytest.approx(16.0)  # (5 - 1)^2
    gp.backward()  # differentiable w.r.t. the critic: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    d = _Linear(w.clone())
    gradient_penalty(d, torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 2)).backward()
    assert torch.allclose(d.w.grad, 2 * 4 * w / 5)


def test_cycle_reconstruction_overfits_one_batch():
    torch.manual_seed(0)
    model = TwoStageModule(net=NET)
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8), size=S, mode="bilinear") * 2 - 1  # smooth "faces"
    label, target = torch.tensor([0, 1, 5, 6]), torch.tensor([5, 6, 0, 1])
    opt = torch.optim.Adam(model.editor.parameters(), 2e-3)
    first = None
    for _ in range(60):
        rec = model.generator_losses(x, label, target)["g_rec"]
        first = first if first is not None else float(rec.detach())
        opt.zero_grad()
        rec.backward()
        opt.step()
    assert float(rec) < first / 3


class _Expert(nn.Module):
    cfg = type("cfg", (), {"crop_size": S, "prob_mode": "relu"})()

    def forward(self, faces, mels):
        return faces.flatten(1)[:, :8], mels.flatten(1)[:, :8]


def test_sync_loss_switches_on_below_the_threshold_and_stays_on():
    model = TwoStageModule(net=NET)
    model.set_sync_expert(_Expert())
    strategy = type("S", (), {"reduce": staticmethod(lambda tensor, reduce_op: tensor)})()  # one process
    model.trainer = type("T", (), {"callback_metrics": {"val/sync": torch.tensor(0.8)}, "strategy": strategy})()
    model.on_validation_epoch_end()
    assert not model.sync_on
    model.trainer.callback_metrics["val/sync"] = torch.tensor(0.7)
    model.on_validation_epoch_end()
    assert model.sync_on
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    fresh = TwoStageModule(net=NET)
    fresh.on_load_checkpoint(checkpoint)
    assert fresh.sync_on


def test_validation_edits_target_only_emotions_of_the_training_data():
    """Trained on CREMA-D's six emotions, the validation edit target of each clip is the next of
    those six: never contempt or surprised, which CREMA-D has not (the old (label + 1) % 8 was)."""
    model = TwoStageModule(net=NET)
    assert model.edit_targets(torch.tensor([0])) is None  # nothing seen yet: no edit to score
    crema = [EMOTIONS.index(e) for e in ("neutral", "angry", "disgusted", "fear", "happy", "sad")]
    model.seen_emotions[torch.tensor(crema)] = True
    targets = model.edit_targets(torch.tensor(crema))
    assert [EMOTIONS[i] for i in targets] == ["angry", "disgusted", "fear", "happy", "sad", "neutral"]
    assert "seen_emotions" in model.state_dict()  # a checkpoint keeps what its training data held


def test_training_reference_is_never_the_target_frame():
    model = TwoStageModule(net=NET)
    batch = {f"frames_{S}": torch.zeros(64, 12, S, S, 3, dtype=torch.uint8)}
    start, targets, refs = model._windows(batch, train=True)
    assert targets.shape == refs.shape == (64, 5) and int(refs.max()) <= 11 and int(refs.min()) >= 0
    assert bool((refs != targets).all())  # no target frame is its own reference


def test_emotion_preserving_weight_ramps_and_its_loss_is_the_classifier_ce(tmp_path):
    from lightning_modules.networks.emotion import EmotionClassifier, EmotionClassifierConfig
    from lightning_modules.two_stage import TwoStageTrainConfig

    ckpt = tmp_path / "emotion.ckpt"
    ckpt.touch()
    cfg = TwoStageTrainConfig(emotion_wt=0.1, emotion_wt_final=0.2, emotion_ramp_steps=2000, emotion_ckpt=str(ckpt))
    assert [cfg.emotion_weight(t) for t in (0, 1000, 2000, 9000)] == pytest.approx([0.1, 0.15, 0.2, 0.2])
    assert TwoStageTrainConfig().emotion_max == 0 and TwoStageTrainConfig(emotion_wt=0.1, emotion_ckpt=str(ckpt)).emotion_max == 0.1
    torch.manual_seed(0)
    classifier = EmotionClassifier(EmotionClassifierConfig(widths=(4, 8), image_size=32)).eval()
    model = TwoStageModule(net=NET)
    model.set_emotion_classifier(classifier)
    levels = torch.randint(0, 256, (2, 5, S, S, 3))
    generated = (levels.permute(0, 1, 4, 2, 3).float() / 255.0).requires_grad_(True)  # (B, 5, 3, S, S) in [0, 1]
    label = torch.tensor([1, 5])
    ce = model.emotion_term(generated, label)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(classifier(levels.to(torch.uint8)), label)
    assert float(ce) == pytest.approx(float(expected), rel=1e-5)
    ce.backward()
    assert generated.grad.abs().sum() > 0 and all(p.grad is None for p in classifier.parameters())


@pytest.fixture(scope="module")
def trained(crema_shards):
    L.seed_everything(0)
    model = TwoStageModule(net=NET, optim={"n_critic": 2})
    dm = TalkingFaceDataModule(DataConfig(shard_dir=str(crema_shards / "shards/crema_d"), keys=model.data_keys,
                                          window=12, batch_size=4, train_batches=4, seed=0))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    return model, dm, trainer


def test_fit_logs_both_stages_and_generate_renders_the_edited_still(trained):
    model, dm, trainer = trained
    for key in ("train/d_total", "train/g_total", "train/gp", "train/l1", "train/gan_d", "val/l1"):
        assert math.isfinite(float(trainer.callback_metrics[key])), key
    # the fixture's training clips are all neutral: no other emotion of the data to edit toward, so no
    # edit accuracy (the old target, label + 1, scored edits to emotions the data never had)
    assert model.seen_emotions.tolist() == [e == "neutral" for e in EMOTIONS]
    assert not [k for k in trainer.callback_metrics if k.startswith("val/edit_acc")]
    batch = next(iter(dm.test_dataloader()))
    ref, mel = batch[f"frames_{S}"][:1, 0], batch["mel"][:1]
    video = model.eval().generate(ref, mel, torch.tensor([1]), 10)
    assert video.shape == (1, 10, S, S, 3) and video.dtype == torch.uint8
    happy, angry = model.edit(ref, torch.tensor([5])), model.edit(ref, torch.tensor([1]))
    assert not torch.equal(happy, angry)  # the emotion condition reaches the edit
    # the dubbing protocol: real upper half, generated lower half, every frame
    real = batch[f"frames_{S}"][0]
    dubbed = model.dub(real, batch["mel"][0])
    assert dubbed.shape == real.shape and torch.equal(dubbed[:, : S // 2], real[:, : S // 2])
    assert not torch.equal(dubbed[:, S // 2:], real[:, S // 2:])


def test_paper_table_rows_and_bad_params():
    import yaml

    rows = [r for r in yaml.safe_load(open(ROOT / "reference/paper_results.yaml")) if r["method"] == "two_stage"]
    assert {r["variant"] for r in rows} >= {"Wav2lip", "Video-retalking", "PC-AVS (without head pose)"}
    wav2lip = next(r for r in rows if r["variant"] == "Wav2lip")["metrics"]
    assert wav2lip == {"psnr": 36.236, "mse": 46.699, "ssim": 0.963, "fid": 17.459}
    with pytest.raises(ValueError, match="emotion_ckpt"):
        TwoStageModule(net=NET, optim={"emotion_wt": 0.1})
    with pytest.raises(ValueError, match="emotion weight < 1"):
        TwoStageModule.validate_params(NET, {"emotion_wt": 0.95, "emotion_ckpt": "x.ckpt"})
    with pytest.raises(FileNotFoundError, match="emotion_ckpt"):
        TwoStageModule.validate_params(NET, {"emotion_wt": 0.1, "emotion_ckpt": "models/none/last.ckpt"})
    TwoStageModule.validate_params(NET, {"emotion_ckpt": "models/none/last.ckpt"})  # off: the file is not needed
    with pytest.raises(FileNotFoundError, match="syncnet_ckpt"):
        TwoStageModule.validate_params(NET, {"syncnet_ckpt": "models/none/last.ckpt"})


def test_video_protocol_adds_the_dubbing_protocol_and_the_edit_scores(trained, crema_shards, monkeypatch, tmp_path,
                                                                      tiny_inception):
    import json

    import cv2

    from pipeline.evaluate_video import main

    _, _, trainer = trained
    work = tmp_path / "work"
    work.mkdir()
    (work / "shards").symlink_to(crema_shards / "shards")
    monkeypatch.chdir(work)
    trainer.save_checkpoint(work / "models/two_stage/crema_d/last.ckpt")
    params = {"evaluate": {"crop_size": S, "n_videos": 0, "fid_weights": tiny_inception, "fid_sha256": None},
              "train": {"data": {"window": 12, "batch_size": 4}},
              "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}", "experiment": "two_stage"}}
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    assert main(["--method", "two_stage", "--dataset", "crema_d", "--params", str(tmp_path / "params.yaml")]) == 0
    out = work / "eval/two_stage/crema_d"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert {"psnr", "mse", "ssim", "dub_psnr", "dub_mse", "dub_ssim", "dub_fid"} <= set(metrics)
    # MSE on 0-255 and PSNR on [0, 1] describe the same errors: PSNR = 10 log10(255^2 / MSE) for one clip's frames
    # (per-frame PSNR averaged >= the PSNR of the mean MSE, by Jensen)
    assert metrics["dub_psnr"] >= 10 * math.log10(255**2 / metrics["dub_mse"]) - 1e-6
    assert metrics["dub_psnr"] > metrics["psnr"]  # the real upper half is kept
    assert {"edit_csim_dlib"} <= set(metrics)
    grid = cv2.imread(str(out / "edit_grid.png"))
    assert grid.shape == (S, 7 * S, 3)  # one test clip: its input and six edits


def test_edit_scores_expose_identical_outputs_across_emotions_per_target():
    from types import SimpleNamespace

    from eval_metrics.emotion import EmotionAccuracy
    from pipeline.protocol.extras import EditScores
    from primitives.vocab import EMOTION_TO_ID

    happy = EMOTION_TO_ID["happy"]

    def classifier(windows):  # (W, T, S, S, 3): says "happy" for everything
        return torch.nn.functional.one_hot(torch.full((len(windows),), happy), 8).float()

    evaluators = SimpleNamespace(metrics={"emo_acc_neutral": EmotionAccuracy(classifier, "stub")},
                                 evaluators={"emo_acc_neutral": "stub"}, emotion_key="emo_acc_neutral")
    scores = EditScores(evaluators)
    collapsed = SimpleNamespace(edit=lambda faces, emotion: faces.clone())  # the same output for every emotion
    for _ in range(2):
        scores.update(collapsed, torch.zeros(S, S, 3, dtype=torch.uint8))
    result = scores.compute()
    assert result["edit_emo_acc"] == pytest.approx(100 / 6)
    assert result["edit_emo_acc_happy"] == 100.0
    assert all(result[f"edit_emo_acc_{e}"] == 0.0 for e in ("angry", "disgusted", "fear", "neutral", "sad"))
    assert scores.evaluators["edit_emo_acc_sad"] == "stub, on the stage-1 edits"


def _seeded_wav2lip_state(state: dict, seed: int = 0) -> dict:
    """Deterministic weights for every float tensor of a Wav2Lip state dict (in state-dict order)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        if not v.dtype.is_floating_point:
            out[k] = v.clone()
        elif "running_var" in k:
            out[k] = torch.rand(v.shape, generator=g) * 0.5 + 0.5
        elif "running_mean" in k or k.endswith("bias"):
            out[k] = torch.randn(v.shape, generator=g) * 0.1
        elif v.dim() == 1:  # BatchNorm weight
            out[k] = 1 + torch.randn(v.shape, generator=g) * 0.1
        else:
            out[k] = torch.randn(v.shape, generator=g) * (0.5 / v[0].numel()) ** 0.5
    return out


def test_wav2lip_generator_gives_the_released_code_s_values():
    """Known answer: Rudrabha/Wav2Lip's models/wav2lip.py (Wav2Lip()), loaded with these seeded weights
    and fed BGR faces [masked, reference] and the (1, 80, 16) mel, gave these RGB values (rounded to
    1e-5); our layout loads the same state dict under the same names."""
    from lightning_modules.networks.wav2lip import Wav2LipGenerator

    net = Wav2LipGenerator().eval()
    assert sum(p.numel() for p in net.parameters()) == 36_298_035
    net.load_state_dict(_seeded_wav2lip_state(net.state_dict()))
    g = torch.Generator().manual_seed(1)
    masked, reference = torch.rand(1, 3, 96, 96, generator=g), torch.rand(1, 3, 96, 96, generator=g)
    mel = torch.randn(1, 1, 16, 80, generator=g) * 2
    masked[..., 48:, :] = 0
    with torch.no_grad():
        y = net(masked, reference, mel)
    expected = {(20, 30): [0.45433, 0.49266, 0.42669], (70, 50): [0.4782, 0.52016, 0.46471],
                (90, 5): [0.48256, 0.51746, 0.48356]}
    for (row, col), rgb in expected.items():
        assert y[0, :, row, col].tolist() == pytest.approx(rgb, abs=2e-5)


def test_two_stage_starts_stage_2_from_a_released_wav2lip_file(tmp_path):
    from lightning_modules.cvae import frame_mel_windows
    from lightning_modules.networks.wav2lip import Wav2LipGenerator
    from primitives.checksum import file_sha256

    state = _seeded_wav2lip_state(Wav2LipGenerator().state_dict())
    path = tmp_path / "wav2lip_gan.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "global_step": 1}, path)  # DataParallel's
    net = {"crop_size": 96, "editor": {"d_repeat": 5}, "lipsync": {"architecture": "wav2lip"}}
    model = TwoStageModule(net=net, optim={"lipsync_init": str(path), "lipsync_init_sha256": file_sha256(path)})
    assert not torch.equal(model.lipsync.state_dict()["output_block.1.weight"], state["output_block.1.weight"])
    model.setup("fit")
    assert all(torch.equal(v, state[k]) for k, v in model.lipsync.state_dict().items())
    mel = torch.arange(40.0).view(1, 40, 1).expand(1, 40, 80)
    assert frame_mel_windows(mel, torch.tensor([[5]]), offset=0)[0, 0, 0, :, 0].tolist() == list(range(16, 32))
    with pytest.raises(ValueError, match="sha256|checksum"):
        TwoStageModule(net=net, optim={"lipsync_init": str(path), "lipsync_init_sha256": "0" * 64}).setup("fit")
    with pytest.raises(ValueError, match="architecture to wav2lip"):
        TwoStageModule(net={"crop_size": 96, "editor": {"d_repeat": 5}}, optim={"lipsync_init": str(path)})
    with pytest.raises(ValueError, match="96 px"):
        TwoStageModule(net={"crop_size": 64, "lipsync": {"architecture": "wav2lip"}})
    torch.save({"state_dict": {"face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a Wav2Lip generator"):
        TwoStageModule(net=net, optim={"lipsync_init": str(tmp_path / "other.pth")}).setup("fit")
    with pytest.raises(FileNotFoundError, match="Rudrabha"):
        TwoStageModule(net=net, optim={"lipsync_init": str(tmp_path / "none.pth")}).setup("fit")
