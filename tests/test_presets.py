"""presets/: each paper's configuration builds at full size with the parameter count it states, every
table row is a real override naming a paper row, and the dvc -S command lines are what DVC accepts."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError
from pipeline.preset import (PRESET_DIR, Preset, apply, check, dvc_command, hydra_value, names, overrides_for,
                             set_params_args, step_flops)

REPO = Path(__file__).resolve().parents[1]
PAPER_ROWS = yaml.safe_load((REPO / "reference/paper_results.yaml").read_text())


@pytest.fixture(scope="module")
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_preset_check_builds_every_preset_at_its_stated_size():
    """The CLI a user runs (and CI): exit 0, one line per trained network with both counts."""
    proc = subprocess.run([sys.executable, "-m", "pipeline.preset", "check"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == sum(len(Preset.load(n).trained) for n in names()) >= 9
    assert any("emotalker" in line and "530,369,860 parameters (preset says 530,369,860)" in line for line in lines)
    assert set(names()) == {"cvae", "eapc", "eapc_authors", "eapc_vid2vid", "sinha", "two_stage", "emotalker"}


def test_a_wrong_count_or_a_broken_row_fails_the_check(params, tmp_path):
    body = yaml.safe_load((PRESET_DIR / "eapc.yaml").read_text())
    body["preset"]["parameters"]["eapc"] += 1
    body["preset"]["tables"]["Table 3"]["rows"]["typo"] = {"train.methods.eapc.net.use_atention": False}
    body["preset"]["tables"]["Table 3"]["rows"]["bad value"] = {"train.methods.eapc.optim.lr": -1.0}
    (tmp_path / "eapc.yaml").write_text(yaml.safe_dump(body))
    problems = check(Preset.load("eapc", tmp_path), params)
    assert any("4,830,425" in p and "4,830,424" in p for p in problems)
    assert any("typo" in p and "use_atention" in p for p in problems)
    assert any("bad value" in p and "lr must be > 0" in p for p in problems)
    assert len(problems) == 3
    with pytest.raises(ParamsError, match="no preset 'nope'"):
        Preset.load("nope")


@pytest.mark.parametrize("name", names())
def test_table_rows_name_paper_rows_and_change_something(params, name):
    """Row names are the paper's variants (reference/paper_results.yaml, any table of the method) or
    "full" (the preset itself, at most with the table's protocol filters); every other row changes at
    least one value."""
    from lightning_modules import VIDEO_MODELS

    preset = Preset.load(name)
    method = {video: m for m, video in VIDEO_MODELS.items()}.get(preset.meta["method"], preset.meta["method"])
    variants = {r["variant"] for r in PAPER_ROWS if r["method"] == method and not r.get("baseline")}
    tables = {r["table"] for r in PAPER_ROWS if r["method"] == method}
    merged = apply(params, overrides_for(preset))
    for row, overrides in preset.rows().items():
        table, variant = row.split("/", 1)
        assert table in tables and variant in variants | {"full"}, row
        if variant == "full":  # the preset itself, scored on the data that table used (protocol filters only)
            assert all(key.startswith("evaluate.protocol.") for key in overrides), row
        else:
            assert apply(merged, overrides) != merged, f"{row} changes nothing"


def test_eapc_preset_is_the_papers_configuration(params):
    """§4.3 (500 epochs of passes, batch 32, lr 1e-4), eq. 13 without an emotion term, and both Table 2
    arms without attention (§5.4.1)."""
    merged = apply(params, overrides_for(Preset.load("eapc")))
    eapc = merged["train"]["methods"]["eapc"]
    assert eapc["data"] == {"batch_size": 32, "window": 25, "train_batches": None}
    assert eapc["trainer"]["max_epochs"] == 500 and eapc["optim"]["lr"] == 1e-4 and eapc["optim"]["w_emotion"] == 0.0
    rows = Preset.load("eapc").rows("Table 2")
    assert all(r["train.methods.eapc.net.use_attention"] is False for r in rows.values()) and len(rows) == 2
    assert merged["train"]["data"] == params["train"]["data"]  # other methods keep the shared settings


@pytest.mark.parametrize("name", names())
def test_a_preset_inherits_no_sample_sized_setting(params, name):
    """params.yaml's per-method trainer and data values and the protocol's frame and clip bounds are
    sized for the CPU sample run: a preset sets every one that reaches its run (e.g. emotalker's
    max_steps under the sample's max_epochs 6 would stop at 6 epochs)."""
    preset = Preset.load(name)
    overrides = overrides_for(preset)
    needed = [f"train.methods.{m}.{section}.{key}" for m in preset.trained for section in ("trainer", "data")
              for key in params["train"]["methods"][m].get(section, {})]
    if any(t.startswith("evaluate_video@") for t in preset.meta["targets"]):
        needed += ["evaluate.protocol.max_frames", "evaluate.emotion_control.max_clips",
                   "evaluate.emotion_control.max_frames"]
    assert [key for key in needed if key not in overrides] == []


def test_dvc_set_params_append_missing_keys_and_quote_strings(params):
    args = set_params_args(params, {"train.methods.eapc.net.lm_hidden": 256, "train.methods.eapc.data.batch_size": 32,
                                    "train.methods.eapc.optim.lmd_mode": "point", "x.y": [1, 2.5, None]})
    assert args == ["-S", "train.methods.eapc.net.lm_hidden=256", "-S", "+train.methods.eapc.data.batch_size=32",
                    "-S", "train.methods.eapc.optim.lmd_mode='point'", "-S", "+x.y=[1,2.5,null]"]
    assert hydra_value("it's") == r"'it\'s'" and hydra_value(True) == "true" and hydra_value({}) == "{}"
    command = dvc_command(params, Preset.load("eapc"), "mead", "Table 2/w/o audio i-1", queue=True, max_steps=3)
    assert command[:6] == ["dvc", "exp", "run", "-n", "eapc-table-2-w-o-audio-i-1", "--queue"]
    assert command[-1] == "evaluate@eapc-mead"  # the table's dataset, added to train.datasets
    assert "train.datasets=['crema_d','mead']" in command and "+train.methods.eapc.trainer.max_steps=3" in command
    assert "train.methods.eapc.net.use_prev_frame=false" in command
    split = overrides_for(Preset.load("sinha"), devices=4)  # 4 GPUs: the same global batches as the paper's
    assert split["train.trainer.devices"] == 4 and split["train.methods.sinha.data.batch_size"] == 64
    assert split["train.methods.sinha.optim.texture_batch_size"] == 1
    with pytest.raises(ParamsError, match="does not split over 3 devices"):
        overrides_for(Preset.load("sinha"), devices=3)


def test_step_flops_grow_with_the_batch_and_count_lstms(params):
    """FLOPs of a full-size EAPC step (torch.utils.flop_counter over a real one-step fit) are linear in
    the batch; its LSTMs count (CPU mkldnn_rnn_layer, unknown to torch's counter): a 2-layer LSTM's
    step is 3 x its forward matmuls, 2 T B 4H (I + H) per layer."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.preset import RNN_FLOPS

    lstm = torch.nn.LSTM(16, 32, 2, batch_first=True)
    counter = FlopCounterMode(display=False, custom_mapping=RNN_FLOPS)
    with counter:
        lstm(torch.randn(3, 5, 16, requires_grad=True))[0].sum().backward()
    assert counter.get_total_flops() == 3 * (2 * 15 * 128 * (16 + 32) + 2 * 15 * 128 * (32 + 32))
    preset = Preset.load("eapc")
    f4, f8 = (step_flops(preset, params, "eapc", b) for b in (4, 8))
    assert f8 == pytest.approx(2 * f4, rel=0.02)
    assert f4 / 4 / 25 > 6 * 4.8e6  # at least 6 x parameters per frame (the audio LSTM runs 28 MFCC steps a frame)


def test_one_step_fit_gives_fit_start_hooks_the_training_clips(params):
    """`preset cost` counts a one-step fit: cvae's fit start reads every training clip for its
    speaker-neutral references (``iter_training_clips``), which the synthetic datamodule provides."""
    from pipeline.preset import _fit_flops

    assert Preset.load("cvae").body["train"]["methods"]["cvae"]["optim"]["reference"] == "speaker_neutral"
    assert _fit_flops(Preset.load("cvae"), params, "cvae", 2) > 1e9


def test_one_step_fit_counts_a_step_past_the_warm_up(params):
    """The step counted is one after eapc_authors' emotion pre-training (whose steps train the emotion
    branch alone): the same count as the preset without that phase."""
    import copy

    from pipeline.preset import _fit_flops

    preset = Preset.load("eapc_authors")
    assert preset.body["train"]["methods"]["eapc"]["optim"]["emotion_pretrain_steps"] > 0
    without = copy.deepcopy(preset.body)
    without["train"]["methods"]["eapc"]["optim"]["emotion_pretrain_steps"] = 0
    counted = _fit_flops(preset, params, "eapc", 2)
    assert counted > 1e9
    assert counted == _fit_flops(Preset(preset.name, without, preset.meta), params, "eapc", 2)
