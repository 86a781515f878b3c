"""The preprocess stage on real clips: samples, recorded failures, shards, resume, Ray."""

import dataclasses
import io
import json
import os
import tarfile

import numpy as np
import pytest

from pipeline.extract.clip import PreprocessConfig, process_clip
from pipeline.extract.distribute import RayDistributor, TaskError
from pipeline.extract.video import probe_video
from pipeline.preprocess import preprocess_config, run_preprocess
from pipeline.params import ParamsError
from primitives.frame_codec import decode_jpeg_frames, encode_jpeg_frames


def _row(clip_id, video, audio="", split="train", emotion="neutral"):
    return {"id": clip_id, "dataset": "test", "video_path": str(video), "audio_path": str(audio) if audio else "",
            "speaker": clip_id[:4], "sex": "", "emotion": emotion, "intensity": 0, "sentence": "", "split": split}


@pytest.fixture(scope="module")
def rows(shared_datasets):
    crema = shared_datasets / "crema-d-layout"
    eamm = shared_datasets / "talking-clips/eamm"
    return [
        _row("9901_IEO_SAD_HI", crema / "VideoFlash/9901_IEO_SAD_HI.flv", crema / "AudioWAV/9901_IEO_SAD_HI.wav",
             emotion="sad"),
        _row("9903_DFA_NEU_XX", crema / "VideoFlash/9903_DFA_NEU_XX.flv", split="test"),  # audio from the FLV track
        _row("eamm_happy", eamm / "video_happy.mp4", emotion="happy"),  # no audio track
        _row("eamm_sad", eamm / "video_sad.mp4", crema / "AudioWAV/9901_IEO_SAD_HI.wav", emotion="sad"),  # truncated
        _row("eamm_disgusted", eamm / "video_disgusted.mp4", split="val", emotion="disgusted"),  # silent track
    ]


CFG = PreprocessConfig(num_workers=2, clips_per_shard=2, crop_sizes=(128, 64), decode_max_side=480)


def _load(sample, name):
    return np.load(io.BytesIO(sample[name]))


def test_good_clip_sample_shapes(rows):
    result = process_clip(rows[0], CFG)
    assert result.failure is None, result.failure
    s = result.sample
    t = result.n_frames
    assert t == 93
    frames = decode_jpeg_frames(s["frames_128.jpgs"])
    assert frames.shape == (t, 128, 128, 3) and frames.dtype == np.uint8
    assert decode_jpeg_frames(s["frames_64.jpgs"]).shape == (t, 64, 64, 3)
    assert len(s["frames_128.jpgs"]) / t < 0.25 * 128 * 128 * 3  # compressed
    raw = process_clip(rows[0], dataclasses.replace(CFG, frames_format="npy")).sample
    assert not any(k.endswith(".jpgs") for k in raw)
    lossless = _load(raw, "frames_128.npy")
    mse = np.mean((frames.astype(np.float64) - lossless) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 38  # dB
    assert all(raw[k] == s[k] for k in s if not k.startswith(("frames_", "meta")))  # landmarks, audio: identical
    lmk = _load(s, "lmk.npy")
    assert lmk.shape == (t, 68, 2) and lmk.dtype == np.float32
    assert np.all((lmk > 0) & (lmk < 128))  # landmarks in pixels of the largest crop
    assert _load(s, "lmk478.npy").shape == (t, 478, 3)
    mel = _load(s, "mel.npy")
    assert mel.shape == (t * 16 // 5, 80) and mel.min() >= -4 and mel.max() <= 4  # 80 Hz
    assert _load(s, "mfcc.npy").shape == (t, 28, 12)
    assert _load(s, "llf.npy").shape == (t, 25)
    meta = json.loads(s["meta.json"])
    assert meta["emotion"] == "sad" and meta["emotion_id"] == 6 and meta["n_frames"] == t
    assert meta["audio_original_rate"] == 16000 and not meta["audio_from_video_track"]
    import soundfile
    wav, sr = soundfile.read(io.BytesIO(s["audio.wav"]))
    assert sr == 16000 and len(wav) == t * 640


def test_jpeg_frames_round_trip_and_bad_blobs():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    frames[..., 0] = 200  # a flat red channel survives RGB <-> BGR: a swap would show
    blob = encode_jpeg_frames(frames, 95)
    assert blob == encode_jpeg_frames(frames, 95)  # deterministic: byte-identical shards
    decoded = decode_jpeg_frames(blob)
    assert decoded.shape == frames.shape and abs(float(decoded[..., 0].mean()) - 200) < 2
    for bad, match in ((blob[:-10], "bytes"), (b"\x01", "header"), (blob[:16] + b"\x00" * (len(blob) - 16), "JPEG")):
        with pytest.raises(ValueError, match=match):
            decode_jpeg_frames(bad)
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg_frames(frames, 0)


@pytest.mark.parametrize("index, step, reason", [(2, "audio", "no audio stream"), (3, "decode", "truncated"),
                                                 (4, "audio", "silent")])
def test_bad_clips_are_recorded_failures(rows, index, step, reason):
    result = process_clip(rows[index], CFG)
    assert result.sample is None
    assert result.failure["step"] == step and reason in result.failure["reason"]


def test_corrupt_and_missing_files_are_failures(tmp_path, rows):
    corrupt = tmp_path / "corrupt.flv"
    data = open(rows[0]["video_path"], "rb").read()
    corrupt.write_bytes(data[:2000])  # a file cut after its header
    wav = rows[0]["audio_path"]
    for row in (_row("cut", corrupt, wav), _row("gone", tmp_path / "missing.mp4", wav)):
        result = process_clip(row, CFG)
        assert result.sample is None and result.failure["step"] == "decode", result.failure


def test_serial_run_writes_shards_stats_failures_and_resumes(tmp_path, rows):
    out = tmp_path / "shards"
    summary = run_preprocess(rows, out, CFG, serial=True)
    train_mb = summary["splits"]["train"].pop("mb")
    assert summary["splits"]["train"] == {"clips": 1, "failures": 2, "frames": 93, "seconds": 3.72, "shards": 2}
    assert train_mb == round(sum(p.stat().st_size for p in out.glob("train-*.tar")) / 1e6, 2)
    assert summary["splits"]["test"]["clips"] == 1 and summary["splits"]["val"]["failures"] == 1
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["id"]: f["step"] for f in failures} == {"eamm_happy": "audio", "eamm_sad": "decode",
                                                      "eamm_disgusted": "audio"}
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar", "train-000000.tar",
                                                         "train-000001.tar", "val-000000.tar"]
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
    assert "9901_IEO_SAD_HI.lmk.npy" in names and "9901_IEO_SAD_HI.meta.json" in names
    before = {p.name: p.read_bytes() for p in [*out.glob("*.tar"), out / "stats.json"]}

    again = run_preprocess(rows, out, CFG, serial=True)  # nothing to do
    assert again["reused_shards"] == 4 and again["written_shards"] == 0

    (out / "test-000000.tar").unlink()  # an interrupted run: one shard lost
    (out / "train-000000.json").write_text("{not json")  # and one half-written stats file
    resumed = run_preprocess(rows, out, CFG, serial=True)
    assert resumed["written_shards"] == 2
    # byte-identical shards and stats: the folder's DVC hash does not change, nothing downstream re-runs
    assert {p.name: p.read_bytes() for p in [*out.glob("*.tar"), out / "stats.json"]} == before

    # one preprocessing parameter changed: every shard is rebuilt with it, none reused (DVC's
    # `persist: true` keeps the folder, so this check is the only guard against stale samples)
    changed = run_preprocess(rows, out, dataclasses.replace(CFG, jpeg_quality=70), serial=True)
    assert changed["reused_shards"] == 0 and changed["written_shards"] == 4
    stats = json.loads((out / "train-000000.json").read_text())
    assert stats["params_hash"] == dataclasses.replace(CFG, jpeg_quality=70).content_hash() != CFG.content_hash()
    assert (out / "train-000000.tar").read_bytes() != before["train-000000.tar"]


def test_ray_gives_the_same_shards_as_serial(tmp_path, rows):
    serial_out, ray_out = tmp_path / "serial", tmp_path / "ray"
    run_preprocess(rows[:2], serial_out, CFG, serial=True)
    summary = run_preprocess(rows[:2], ray_out, CFG)
    assert summary["splits"]["train"]["clips"] == 1 and summary["splits"]["test"]["clips"] == 1
    for tar in serial_out.glob("*.tar"):
        assert (ray_out / tar.name).read_bytes() == tar.read_bytes()


def test_ray_retries_a_dead_worker_and_records_lost_tasks(tmp_path):
    # local functions: Ray ships them by value (this test module is not importable on workers)
    def _die_once(marker: str) -> int:
        """Kills its worker process the first time it runs (a crashed worker), then succeeds."""
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return os.getpid()

    def _always_die(_: str) -> int:
        os._exit(1)

    distributor = RayDistributor(None, num_workers=1, max_retries=2)
    try:
        results = dict(distributor.imap_unordered(_die_once, [str(tmp_path / "marker")]))
        assert isinstance(results[0], int)  # retried on a fresh worker and succeeded
        distributor.max_retries = 0
        results = dict(distributor.imap_unordered(_always_die, ["x"]))
        assert isinstance(results[0], TaskError)
    finally:
        distributor.close()


def test_params_errors_name_the_key():
    with pytest.raises(ParamsError, match="preprocess.crop_sizes"):
        preprocess_config({"preprocess": {"crop_sizes": [8]}})
    with pytest.raises(ParamsError, match="preprocess.bogus"):
        preprocess_config({"preprocess": {"bogus": 1}})
    with pytest.raises(ParamsError, match="preprocess"):
        preprocess_config({})


def test_worker_failures_are_retried_on_the_next_run(tmp_path):
    """A shard whose clip failed because its task died is not 'done'; bad input stays done."""
    from pipeline.extract.clip import ClipResult
    from pipeline.extract.shards import ShardPlan, shard_is_done, write_shard

    plan = ShardPlan(name="train-000000", split="train", clip_ids=("a",))
    for step, done in (("decode", True), ("worker", False)):
        result = ClipResult("a", failure={"id": "a", "step": step, "reason": "x"})
        write_shard(tmp_path, plan, [result], "hash", 25)
        assert shard_is_done(tmp_path, plan, "hash") is done, step


def test_out_folder_of_other_files_is_refused_and_only_own_stale_shards_are_removed(tmp_path, rows):
    """A mistyped --out holding the user's files (named like shards, too) is refused untouched; a
    shard of an earlier, larger run is removed only because its stats JSON is the stage's own."""
    user = tmp_path / "holiday"
    user.mkdir()
    (user / "vacation-000001.mp4").write_bytes(b"mine")
    (user / "report-202401.pdf").write_bytes(b"also mine")
    with pytest.raises(ValueError, match="holds files this stage did not write .report-202401.pdf, vacation-000001.mp4"):
        run_preprocess(rows[:1], user, CFG, serial=True)
    assert sorted(p.name for p in user.iterdir()) == ["report-202401.pdf", "vacation-000001.mp4"]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run_preprocess(rows[:1], not_a_folder, CFG, serial=True)

    out = tmp_path / "shards"
    run_preprocess(rows, out, CFG, serial=True)  # train-000000, train-000001, val, test
    assert (out / "train-000001.tar").is_file()
    smaller = [r for r in rows if r["split"] != "train"] + [r for r in rows if r["split"] == "train"][:1]
    run_preprocess(smaller, out, CFG, serial=True)
    assert not (out / "train-000001.tar").exists() and not (out / "train-000001.json").exists()
    (out / "train-000007.tar").write_bytes(b"not ours: no stats of ours beside it")
    with pytest.raises(ValueError, match="train-000007.tar"):
        run_preprocess(smaller, out, CFG, serial=True)
    assert (out / "train-000007.tar").read_bytes().startswith(b"not ours")


@pytest.mark.parametrize("case", ["unreadable audio", "silent audio", "too short audio", "unreadable image"])
def test_bad_input_corpus_in_a_dataset_is_a_recorded_failure(case, tmp_path, rows):
    """The corpus's bad speech (tests/bad_inputs.py) as a clip's audio track, and its unreadable
    "image" as a clip's video: each a recorded per-clip failure, never a crash."""
    from bad_inputs import CORPUS

    inputs = CORPUS[case][0](tmp_path, None, rows[0]["audio_path"])
    video = inputs["image"] if case == "unreadable image" else rows[0]["video_path"]
    result = process_clip(_row("corpus", video, inputs["audio"]), CFG)
    expected_step = "decode" if case == "unreadable image" else "audio"
    assert result.sample is None and result.failure["step"] == expected_step, result.failure


def test_failure_fraction_above_the_limit_fails_the_stage_and_keeps_the_shards(tmp_path, rows, monkeypatch):
    """preprocess.max_failure_fraction: 1 broken file of 3 clips (33 %) passes under 0.5 with the
    failure recorded, and fails the stage under 0.25 with a summary by step; the shards stay and are
    reused (the fraction is not part of the params hash)."""
    import pandas as pd
    import yaml

    from pipeline.preprocess import main

    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    good = [dict(r) for r in rows if r["id"] in ("9901_IEO_SAD_HI", "9903_DFA_NEU_XX")]
    for r in good:
        r["split"] = "train"
    manifest = tmp_path / "m.parquet"
    pd.DataFrame(good + [_row("broken", broken)]).to_parquet(manifest)
    out = tmp_path / "shards"
    section = {"num_workers": 1, "clips_per_shard": 2, "crop_sizes": [64], "decode_max_side": 360}

    def run(fraction):
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"preprocess": {**section, "max_failure_fraction": fraction}}))
        return main(["--manifest", str(manifest), "--out", str(out), "--params", str(params), "--serial"])

    assert run(0.5) == 0
    assert [json.loads(line)["id"] for line in (out / "failures.jsonl").read_text().splitlines()] == ["broken"]
    tars = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    with pytest.raises(SystemExit, match=r"1 of 3 clips failed \(33%; by step: audio 1\), above "
                                         r"preprocess.max_failure_fraction=0.25"):
        run(0.25)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == tars and len(tars) == 2


def test_a_wedged_task_is_cancelled_as_a_timeout_and_the_others_finish():
    """RayDistributor(timeout_s): a task that never returns is cancelled and yields
    TaskError(step="timeout"); the other items' results arrive."""
    from pipeline.extract.distribute import RayDistributor, TaskError

    def slow_on_one(item):  # local: Ray ships it by value
        import time

        if item == 1:
            time.sleep(600)
        return item * 10

    distributor = RayDistributor(num_workers=2, timeout_s=8.0, memory_mb=64)
    try:
        results = dict(distributor.imap_unordered(slow_on_one, [0, 1, 2, 3]))
    finally:
        distributor.close()
    assert {k: v for k, v in results.items() if k != 1} == {0: 0, 2: 20, 3: 30}
    assert isinstance(results[1], TaskError) and results[1].step == "timeout"


def test_shards_mix_speakers_and_emotions_and_plans_are_stable():
    """Hash membership: shards of 8 drawn from 4 speakers x 4 emotions x 8 clips hold several of
    each (sorted ids put one speaker's one emotion in a shard); the plan does not depend on row order."""
    import random

    from pipeline.extract.shards import plan_shards

    rows = [{"id": f"S{s}_{e}_{c:03d}", "split": "train"} for s in range(4) for e in ("ang", "hap", "sad", "neu")
            for c in range(8)]
    plans = plan_shards(rows, 8)
    assert len(plans) == 16 and sorted(c for p in plans for c in p.clip_ids) == sorted(r["id"] for r in rows)
    speakers = [len({c.split("_")[0] for c in p.clip_ids}) for p in plans]
    emotions = [len({c.split("_")[1] for c in p.clip_ids}) for p in plans]
    assert min(speakers) >= 2 and sum(speakers) / 16 >= 3 and min(emotions) >= 2, (speakers, emotions)
    by_id = [len({c.split("_")[0] for c in p.clip_ids}) for p in plan_shards(rows, 8, order="id")]
    assert by_id == [1] * 16  # the old layout: one speaker (and emotion) per shard
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert plan_shards(shuffled, 8) == plans
    assert all(list(p.clip_ids) == sorted(p.clip_ids) for p in plans)


def test_shards_are_cut_to_the_target_size(tmp_path, shared_datasets):
    """``shard_target_mb``: clips per shard from the probed clip length x the estimated bytes per
    frame; the written tars land near the target (the estimate is checked against real shards)."""
    from pipeline.extract.shards import size_shards

    real = shared_datasets / "crema-d-real"
    rows = [_row(p.stem, p, real / "AudioWAV" / f"{p.stem}.wav", emotion="angry" if "ANG" in p.stem else "neutral")
            for p in sorted((real / "VideoFlash").glob("*.flv"))]
    cfg = PreprocessConfig(crop_sizes=(128, 64), decode_max_side=480, shard_target_mb=1.0)
    seconds = [probe_video(r["video_path"]).duration_s for r in rows]
    clip_mb = sum(seconds) / len(seconds) * 25 * cfg.frame_bytes() / 1e6
    target = dataclasses.replace(cfg, shard_target_mb=round(2 * clip_mb, 3))
    assert size_shards(rows, target) == 2 and size_shards(rows, dataclasses.replace(target, clips_per_shard=5)) == 5
    missing = [{**r, "video_path": str(tmp_path / "gone.flv")} for r in rows]  # nothing to probe: 3 s assumed
    assert size_shards(missing, dataclasses.replace(cfg, shard_target_mb=4 * 3 * 25 * cfg.frame_bytes() / 1e6)) == 4

    summary = run_preprocess(rows, tmp_path / "shards", target, serial=True)
    assert summary["failures"] == 0 and summary["splits"]["train"]["shards"] == 3
    sizes = [p.stat().st_size / 1e6 for p in sorted((tmp_path / "shards").glob("train-*.tar"))]
    assert all(0.7 * target.shard_target_mb < mb < 1.3 * target.shard_target_mb for mb in sizes), (sizes, target)
