"""Tests of the ``manifest`` stage: readers, splits, params validation and the CLI outputs."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.datasets import ClipRow, ManifestIssue
from pipeline.datasets.crema_d import read_crema_d
from pipeline.datasets.csv_list import read_csv_list
from pipeline.datasets.mead import read_mead
from pipeline.manifest import COLUMNS, dataset_config, main, read_manifest
from pipeline.params import ParamsError, get, load_params
from pipeline.splits import assign_sentence_splits, assign_speaker_splits, validate_fractions
from primitives.vocab import EMOTIONS

REPO_ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _problems(issues: list[ManifestIssue]) -> Counter:
    return Counter((i.problem, i.kept) for i in issues)


def _row(speaker: str, sex: str = "", n: int = 1, emotion: str = "neutral", level: int = 1) -> list[ClipRow]:
    return [ClipRow(id=f"{speaker}_{emotion}_{level}_{k:03d}", dataset="t", video_path=f"{speaker}/{k}.mp4",
                    audio_path="", speaker=speaker, sex=sex, emotion=emotion, intensity=level, sentence=f"{k:03d}")
            for k in range(1, n + 1)]


def _speaker_splits(rows: list[ClipRow]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for row in rows:
        out.setdefault(row.speaker, set()).add(row.split)
    return out


# ---------------------------------------------------------------- CREMA-D


def test_crema_d_sample_layout(shared_datasets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shared_datasets)  # relative root: paths must stay as given
    rows, issues = read_crema_d("crema-d-layout", demographics="crema-d-meta/VideoDemographics.csv")
    assert len(rows) == 16 == len(list((shared_datasets / "crema-d-layout/VideoFlash").glob("*.flv")))
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    by_id = {r.id: r for r in rows}
    first = by_id["9901_IEO_SAD_HI"]
    assert first.video_path == "crema-d-layout/VideoFlash/9901_IEO_SAD_HI.flv"
    assert first.audio_path == "crema-d-layout/AudioWAV/9901_IEO_SAD_HI.wav"
    assert (first.speaker, first.emotion, first.intensity, first.sentence, first.split) == ("9901", "sad", 3, "IEO", "")
    assert (by_id["9902_TIE_DIS_XX"].emotion, by_id["9902_TIE_DIS_XX"].intensity) == ("disgusted", 0)
    assert {r.emotion for r in rows} == {"sad", "disgusted", "neutral"} and {r.emotion for r in rows} <= set(EMOTIONS)
    assert len({r.speaker for r in rows}) == 15
    # actors 9901-9915 are not CREMA-D actors: sex unknown, one kept issue per affected clip
    assert all(r.sex == "" and r.audio_path for r in rows)
    assert _problems(issues) == Counter({("missing_demographics", True): 16})
    assert {i.clip_id for i in issues} == set(by_id)


def test_crema_d_crowd_filter_on_sample_drops_unlisted(shared_datasets: Path) -> None:
    meta = shared_datasets / "crema-d-meta"
    rows, issues = read_crema_d(shared_datasets / "crema-d-layout", meta / "VideoDemographics.csv",
                                meta / "summaryTable.csv", crowd_filter="voice")
    assert rows == []
    assert _problems(issues) == Counter({("not_in_summary_table", False): 16})


def _crema_tmp(tmp_path: Path) -> Path:
    root = tmp_path / "crema"
    for name in ("1001_DFA_ANG_XX", "1002_IEO_HAP_HI", "1001_DFA_XYZ_XX", "1003_ITS_SAD_QQ", "9999_DFA_NEU_XX",
                 "1001_IEO_SAD_HI", "1002_IEO_FEA_LO", "abc"):
        _touch(root / "VideoFlash" / f"{name}.flv")
    for name in ("1001_DFA_ANG_XX", "9999_DFA_NEU_XX", "1001_IEO_SAD_HI", "1002_IEO_FEA_LO", "1004_DFA_NEU_XX"):
        _touch(root / "AudioWAV" / f"{name}.wav")
    _touch(root / "VideoFlash" / ".DS_Store")
    _touch(root / "VideoFlash" / "notes.txt")
    return root


def test_crema_d_bad_inputs(tmp_path: Path, shared_datasets: Path) -> None:
    root = _crema_tmp(tmp_path)
    rows, issues = read_crema_d(root, shared_datasets / "crema-d-meta/VideoDemographics.csv")
    assert [r.id for r in rows] == ["1001_DFA_ANG_XX", "1001_IEO_SAD_HI", "1002_IEO_FEA_LO", "1002_IEO_HAP_HI",
                                    "9999_DFA_NEU_XX"]
    by_id = {r.id: r for r in rows}
    assert by_id["1001_DFA_ANG_XX"].sex == "male" and by_id["1002_IEO_HAP_HI"].sex == "female"
    assert by_id["1002_IEO_HAP_HI"].audio_path == "" and by_id["1002_IEO_HAP_HI"].intensity == 3
    assert by_id["9999_DFA_NEU_XX"].sex == ""
    assert _problems(issues) == Counter({
        ("unparseable_name", False): 1, ("unknown_emotion", False): 1, ("unknown_level", False): 1,
        ("missing_audio", True): 1, ("missing_demographics", True): 1, ("unexpected_file", False): 1,
        ("missing_video", False): 1,
    })
    for issue in issues:
        assert Path(issue.path).name in issue.message
    assert {Path(i.path).name for i in issues if i.problem == "unknown_emotion"} == {"1001_DFA_XYZ_XX.flv"}
    assert {Path(i.path).name for i in issues if i.problem == "missing_audio"} == {"1002_IEO_HAP_HI.wav"}


def test_crema_d_crowd_filter_and_no_demographics(tmp_path: Path) -> None:
    root = _crema_tmp(tmp_path)
    table = tmp_path / "summaryTable.csv"
    table.write_text('"","FileName","VoiceVote","FaceVote","MultiModalVote"\n'
                     '"1","1001_DFA_ANG_XX","A","A","A"\n"2","1002_IEO_HAP_HI","N:H","H","H"\n'
                     '"3","1001_IEO_SAD_HI","S","N","S"\n"4","9999_DFA_NEU_XX","N","N","N"\n')
    rows, issues = read_crema_d(root, None, table, crowd_filter="voice")
    assert [r.id for r in rows] == ["1001_DFA_ANG_XX", "1001_IEO_SAD_HI", "9999_DFA_NEU_XX"]
    problems = _problems(issues)
    assert problems[("crowd_vote_mismatch", False)] == 1  # "N:H" is not a sole H vote
    assert problems[("not_in_summary_table", False)] == 1  # 1002_IEO_FEA_LO
    assert problems[("missing_demographics", True)] == 1  # one file-level issue
    assert all(r.sex == "" for r in rows)
    face_rows, _ = read_crema_d(root, None, table, crowd_filter="face")
    assert [r.id for r in face_rows] == ["1001_DFA_ANG_XX", "1002_IEO_HAP_HI", "9999_DFA_NEU_XX"]
    with pytest.raises(ValueError, match="crowd_filter"):
        read_crema_d(root, crowd_filter="vocie")


def test_missing_roots_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_crema_d(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_mead(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read_csv_list(tmp_path / "nowhere.csv")
    root = _crema_tmp(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_crema_d(root, None, tmp_path / "missing.csv", crowd_filter="face")


# ---------------------------------------------------------------- MEAD


def test_mead_sample_layout(shared_datasets: Path) -> None:
    root = shared_datasets / "mead-layout"
    rows, issues = read_mead(root, view="front")
    assert len(rows) == 28 == len(list(root.glob("*/video/front/*/level_*/*.mp4")))
    assert len(list(root.glob("*/audio/*/level_*/*.m4a"))) == 5
    by_id = {r.id: r for r in rows}
    sad = by_id["M030_sad_3_001"]
    assert sad.video_path == str(root / "M030/video/front/sad/level_3/001.mp4")
    assert sad.audio_path == str(root / "M030/audio/sad/level_3/001.m4a")
    assert (sad.speaker, sad.sex, sad.emotion, sad.intensity, sad.sentence) == ("M030", "male", "sad", 3, "001")
    assert by_id["W009_neutral_1_001"].sex == "female" and by_id["W009_neutral_1_001"].intensity == 1
    assert {r.emotion for r in rows} == set(EMOTIONS)
    assert {r.speaker for r in rows} == {"M030", "M930", "W009", "W011", "W901", "W902"}
    assert _problems(issues) == Counter({("missing_audio", True): 23})
    assert sum(not r.audio_path for r in rows) == 23
    assert {i.clip_id for i in issues} == {r.id for r in rows if not r.audio_path}


def test_mead_bad_inputs(tmp_path: Path) -> None:
    root = tmp_path / "mead"
    video = root / "M001" / "video" / "front"
    _touch(video / "happy" / "level_2" / "001.mp4")
    _touch(root / "M001" / "audio" / "happy" / "level_2" / "001.m4a")
    _touch(video / "happy" / "level_2" / "002.mp4")  # no audio: kept
    _touch(video / "happy" / "level_2" / ".DS_Store")  # silently ignored
    _touch(video / "happy" / "level_2" / "notes.txt")  # unexpected
    _touch(video / "happy" / "level_2" / "abc.mp4")  # unparseable
    _touch(video / "calm" / "level_1" / "001.mp4")  # unknown emotion
    _touch(video / "sad" / "level_9" / "001.mp4")  # bad level
    _touch(video / "sad" / "lvl1" / "001.mp4")  # bad level
    _touch(root / "M001" / "audio" / "sad" / "level_1" / "005.m4a")  # audio without video
    _touch(root / "X007" / "video" / "front" / "angry" / "level_3" / "010.mp4")  # unknown sex prefix
    (root / "W002" / "video").mkdir(parents=True)  # no front view
    rows, issues = read_mead(root)
    assert [r.id for r in rows] == ["M001_happy_2_001", "M001_happy_2_002", "X007_angry_3_010"]
    assert [r.sex for r in rows] == ["male", "male", ""]
    assert rows[1].audio_path == "" and rows[0].audio_path.endswith("001.m4a")
    assert _problems(issues) == Counter({
        ("missing_audio", True): 2, ("unexpected_file", False): 1, ("unparseable_name", False): 1,
        ("unknown_emotion", False): 1, ("unknown_level", False): 2, ("missing_video", False): 1,
        ("missing_view", False): 1,
    })


# ---------------------------------------------------------------- CSV list


def test_csv_list(tmp_path: Path) -> None:
    _touch(tmp_path / "clips" / "a.mp4")
    _touch(tmp_path / "clips" / "b.mp4")
    _touch(tmp_path / "clips" / "a.wav")
    absolute = _touch(tmp_path / "elsewhere" / "c.mp4")
    listing = tmp_path / "list.csv"
    listing.write_text(
        "video_path,speaker,emotion,intensity,audio_path,sex,id\n"
        "clips/a.mp4,s1,Happy,2,clips/a.wav,F,\n"
        "clips/b.mp4,s2,sad,,clips/nope.wav,x,\n"
        f"{absolute},s3,neutral,0,,m,own_id\n"
        "clips/b.mp4,s4,joy,1,,,\n"
        "clips/missing.mp4,s4,sad,1,,,\n"
        "clips/a.mp4,s5,sad,1,,,own_id\n"
        "clips/a.mp4,s5,sad,1,,,bad.id\n")
    rows, issues = read_csv_list(listing, dataset="mine")
    assert [r.id for r in rows] == ["own_id", "s1_a", "s2_b"]
    own, a, b = rows
    assert own.video_path == str(absolute) and own.sex == "male" and own.dataset == "mine"
    assert a.video_path == str(tmp_path / "clips" / "a.mp4") and a.audio_path == str(tmp_path / "clips" / "a.wav")
    assert (a.emotion, a.intensity, a.sex) == ("happy", 2, "female")
    assert (b.audio_path, b.intensity, b.sex) == ("", 0, "")
    assert _problems(issues) == Counter({
        ("missing_audio", True): 1, ("unknown_sex", True): 1, ("unknown_emotion", False): 1,
        ("missing_video", False): 1, ("duplicate_id", False): 1, ("bad_id", False): 1,
    })


def test_csv_list_ids_of_non_latin_names_stay_distinct(tmp_path: Path) -> None:
    """Names that differ only in characters an id cannot hold (CJK, emoji) keep one clip each; an
    accent alone is transliterated and adds no hash."""
    names = ["Grüße 你好 clip.mp4", "Grüße 世界 clip.mp4", "😀 take.mp4", "😢 take.mp4", "café.mp4"]
    for name in names:
        _touch(tmp_path / "clips" / name)
    listing = tmp_path / "list.csv"
    listing.write_text("video_path,speaker,emotion,intensity\n" + "".join(f"clips/{n},s1,sad,1\n" for n in names),
                       encoding="utf-8")
    rows, issues = read_csv_list(listing, dataset="mine")
    assert len(rows) == 5 and not [i for i in issues if not i.kept], issues
    ids = sorted(r.id for r in rows)
    assert "s1_cafe" in ids and all(r.id.startswith("s1_Gr") for r in rows if "Gr" in r.video_path)
    assert len({r.id for r in rows}) == 5


def test_csv_list_missing_column(tmp_path: Path) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text("video_path,speaker,intensity\nclips/a.mp4,s1,1\n")
    with pytest.raises(ValueError, match=r"list\.csv.*'emotion'"):
        read_csv_list(listing)


# ---------------------------------------------------------------- splits


def test_speaker_splits_on_samples(shared_datasets: Path) -> None:
    for rows in (read_crema_d(shared_datasets / "crema-d-layout")[0], read_mead(shared_datasets / "mead-layout")[0]):
        split_rows = assign_speaker_splits(rows, FRACTIONS, seed=0)
        assert all(len(s) == 1 for s in _speaker_splits(split_rows).values())  # speaker-disjoint
        assert {r.split for r in split_rows} == {"train", "val", "test"}  # >= 3 speakers: none empty
        assert [r.id for r in split_rows] == [r.id for r in rows]


def test_speaker_splits_deterministic_and_order_independent() -> None:
    rows = [r for k in range(20) for r in _row(f"S{k:02d}", "female" if k % 2 else "male", n=3)]
    first = assign_speaker_splits(rows, FRACTIONS, seed=7)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    again = assign_speaker_splits(shuffled, FRACTIONS, seed=7)
    assert {r.id: r.split for r in first} == {r.id: r.split for r in again}
    other = assign_speaker_splits(rows, FRACTIONS, seed=8)
    assert {r.id: r.split for r in first} != {r.id: r.split for r in other}


def test_speaker_splits_stratified_by_sex() -> None:
    rows = [r for k in range(20) for r in _row(f"S{k:02d}", "female" if k < 10 else "male", n=2)]
    for seed in range(5):
        split_rows = assign_speaker_splits(rows, FRACTIONS, seed=seed)
        speakers = {(r.speaker, r.sex, r.split) for r in split_rows}
        per_split = Counter(split for _, _, split in speakers)
        assert per_split == {"train": 14, "val": 3, "test": 3}
        for sex in ("female", "male"):
            counts = Counter(split for _, s, split in speakers if s == sex)
            assert counts["train"] == 7 and {counts["val"], counts["test"]} == {1, 2}


def test_speaker_splits_small_and_unknown() -> None:
    two = _row("A") + _row("B")
    assert {r.split for r in assign_speaker_splits(two, FRACTIONS, 0)} == {"train"}
    three = _row("A", "male") + _row("B", "male") + _row("C", "")
    assert {r.split for r in assign_speaker_splits(three, FRACTIONS, 0)} == {"train", "val", "test"}
    only_train = assign_speaker_splits(three, {"train": 1.0, "val": 0.0}, 3)
    assert {r.split for r in only_train} == {"train"}


def test_speaker_splits_fixed_by_hand() -> None:
    rows = [r for k in range(20) for r in _row(f"S{k:02d}", "female" if k % 2 else "male", n=2)]
    drawn = {r.speaker: r.split for r in assign_speaker_splits(rows, FRACTIONS, seed=0)}
    test_speaker = next(s for s, split in sorted(drawn.items()) if split == "test")
    fixed = assign_speaker_splits(rows, FRACTIONS, seed=0, fixed={test_speaker: "train", "S00": "test"})
    split_of = {r.speaker: r.split for r in fixed}
    assert split_of[test_speaker] == "train" and split_of["S00"] == "test"
    assert all(len(s) == 1 for s in _speaker_splits(fixed).values())
    others = Counter(s for spk, s in split_of.items() if spk not in (test_speaker, "S00"))
    assert others["train"] in (12, 13) and others["val"] + others["test"] in (5, 6)  # 18 drawn at 0.7 / 0.15 / 0.15
    with pytest.raises(ValueError, match="no clip"):
        assign_speaker_splits(rows, FRACTIONS, 0, fixed={"nobody": "train"})
    with pytest.raises(ValueError, match="not a split"):
        assign_speaker_splits(rows, FRACTIONS, 0, fixed={"S01": "dev"})


def test_crema_d_parts_read_as_one_dataset(shared_datasets: Path) -> None:
    """crema-d-layout + the real CREMA-D files: one dataset; actor 1002's WAVs without FLVs are named."""
    rows, issues = read_crema_d(shared_datasets, shared_datasets / "crema-d-meta/VideoDemographics.csv",
                                parts=("crema-d-layout", "crema-d-real"))
    real = [r for r in rows if r.speaker == "1001"]
    assert len(rows) == 22 and len(real) == 6
    assert {r.emotion for r in real} == {"angry", "disgusted", "fear", "happy", "neutral", "sad"}
    assert {r.sex for r in real} == {"male"} and all(r.audio_path.endswith(f"{r.id}.wav") for r in real)
    missing = sorted(Path(i.path).name for i in issues if i.problem == "missing_video")
    assert missing == [f"1002_DFA_{e}_XX.wav" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")]
    twice, twice_issues = read_crema_d(shared_datasets, parts=("crema-d-real", "crema-d-real"))
    assert len(twice) == 6 and sum(i.problem == "duplicate_id" for i in twice_issues) == 6
    with pytest.raises(FileNotFoundError, match="VideoFlash"):
        read_crema_d(shared_datasets, parts=("crema-d-real", "nowhere"))


@pytest.mark.parametrize("fractions", [{"train": 0.7, "val": 0.2}, {"train": 1.2, "val": -0.2},
                                       {"train": 0.5, "dev": 0.5}, {"val": 0.5, "test": 0.5}, [0.5, 0.5]])
def test_bad_fractions(fractions) -> None:
    with pytest.raises(ValueError, match=r"manifest\.split_fractions"):
        validate_fractions(fractions)


def test_sentence_splits() -> None:
    rows = (_row("M001", "male", n=30, emotion="sad", level=3) + _row("M001", "male", n=2, emotion="happy")
            + _row("W001", "female", n=1) + _row("W002", "female", n=3, emotion="fear"))
    split_of = {r.id: r.split for r in assign_sentence_splits(rows[::-1], 0.1, 0.1, seed=0)}
    sad = [split_of[f"M001_sad_3_{k:03d}"] for k in range(1, 31)]
    assert sad == ["train"] * 24 + ["val"] * 3 + ["test"] * 3  # last sentences -> test, before them -> val
    assert [split_of["M001_happy_1_001"], split_of["M001_happy_1_002"]] == ["train", "test"]
    assert split_of["W001_neutral_1_001"] == "train"
    assert [split_of[f"W002_fear_1_{k:03d}"] for k in (1, 2, 3)] == ["train", "val", "test"]
    with pytest.raises(ValueError, match="test_fraction"):
        assign_sentence_splits(rows, 0.6, 0.5, 0)


# ---------------------------------------------------------------- params + CLI


def _params(tmp_path: Path, shared: Path, **overrides) -> Path:
    params = {"manifest": {"seed": 0, "split_fractions": dict(FRACTIONS), "datasets": {
        "crema_d": {"format": "crema_d", "root": str(shared / "crema-d-layout"),
                    "demographics": str(shared / "crema-d-meta/VideoDemographics.csv"),
                    "summary_table": str(shared / "crema-d-meta/summaryTable.csv"),
                    "crowd_filter": "none", "split": "speaker"},
        "mead": {"format": "mead", "root": str(shared / "mead-layout"), "view": "front", "split": "speaker",
                 "test_sentences": 0.1},
    }}}
    for dotted, value in overrides.items():
        *parents, last = dotted.split("__")
        node = params
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_repo_params_are_valid() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    for name in params["manifest"]["datasets"]:
        assert dataset_config(params, name).name == name


@pytest.mark.parametrize(("override", "value", "key"), [
    ("manifest__datasets__crema_d__crowd_filter", "vocie", "manifest.datasets.crema_d.crowd_filter"),
    ("manifest__datasets__crema_d__format", "flv", "manifest.datasets.crema_d.format"),
    ("manifest__datasets__crema_d__root", None, "manifest.datasets.crema_d.root"),
    ("manifest__datasets__crema_d__split", "random", "manifest.datasets.crema_d.split"),
    ("manifest__datasets__crema_d__crowd_filer", "voice", "manifest.datasets.crema_d.crowd_filer"),
    ("manifest__datasets__crema_d__summary_table", None, None),
    ("manifest__split_fractions", {"train": 0.9}, "manifest.split_fractions"),
    ("manifest__seed", "zero", "manifest.seed"),
    ("manifest__datasets__crema_d__speaker_splits", {"1001": "dev"}, "manifest.datasets.crema_d.speaker_splits.1001"),
    ("manifest__datasets__crema_d__parts", "crema-d-real", "manifest.datasets.crema_d.parts"),
])
def test_params_errors_name_the_key(tmp_path: Path, shared_datasets: Path, override: str, value, key) -> None:
    params = load_params(_params(tmp_path, shared_datasets, **{override: value}))
    if key is None:  # summary_table only matters with a crowd filter
        assert dataset_config(params, "crema_d").summary_table is None
        params["manifest"]["datasets"]["crema_d"]["crowd_filter"] = "face"
        key = "manifest.datasets.crema_d.summary_table"
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        dataset_config(params, "crema_d")


@pytest.mark.parametrize("split", ["train", "test"])
def test_speaker_splits_from_params_reach_the_manifest(tmp_path: Path, shared_datasets: Path, split: str) -> None:
    """``speaker_splits`` goes from params.yaml through the config to the rows: every clip of the
    placed actor lands in its split (both placements, so a default cannot pass by chance)."""
    from pipeline.manifest import build_manifest

    params = load_params(_params(tmp_path, shared_datasets, manifest__datasets__crema_d__root=str(shared_datasets),
                                 manifest__datasets__crema_d__parts=["crema-d-layout", "crema-d-real"],
                                 manifest__datasets__crema_d__speaker_splits={"1001": split}))
    rows, _ = build_manifest(dataset_config(params, "crema_d"))
    placed = {r.split for r in rows if r.speaker == "1001"}
    assert placed == {split} and len([r for r in rows if r.speaker == "1001"]) == 6


def test_load_params_and_get(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(listing)
    params = {"a": {"b": {"c": 3, "flag": True}}}
    assert get(params, "a.b.c", int) == 3 and get(params, "a.b.c", float) == 3.0
    assert get(params, "a.x.y", int, default=5) == 5
    with pytest.raises(ParamsError, match=r"a\.b\.flag"):
        get(params, "a.b.flag", int)
    with pytest.raises(ParamsError, match=r"a\.b\.d"):
        get(params, "a.b.d", str)
    with pytest.raises(ParamsError, match=r"a\.b\.c.*one of"):
        get(params, "a.b.c", int, choices=(1, 2))


def test_main_writes_outputs(tmp_path: Path, shared_datasets: Path, capsys: pytest.CaptureFixture) -> None:
    params = _params(tmp_path, shared_datasets)
    out = tmp_path / "manifest" / "mead.parquet"
    assert main(["--dataset", "mead", "--params", str(params), "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert tuple(frame.columns) == COLUMNS == tuple(f.name for f in dataclasses.fields(ClipRow))
    assert len(frame) == 28 and list(frame["id"]) == sorted(frame["id"])
    assert frame.groupby("speaker")["split"].nunique().max() == 1
    issues = [json.loads(line) for line in (tmp_path / "manifest" / "mead.issues.jsonl").read_text().splitlines()]
    assert len(issues) == 23 and {i["problem"] for i in issues} == {"missing_audio"}
    summary = json.loads((tmp_path / "manifest" / "mead.summary.json").read_text())
    assert sum(summary["clips_per_split"].values()) == 28
    assert sum(summary["speakers_per_split"].values()) == 6
    assert summary["rows_kept_with_issues_by_problem"] == {"missing_audio": 23}
    assert summary["rows_dropped_by_problem"] == {}
    assert "23 issues" in capsys.readouterr().err
    rows = read_manifest(out)
    assert [r.id for r in rows] == list(frame["id"]) and isinstance(rows[0].intensity, int)

    out2 = tmp_path / "again" / "mead.parquet"
    main(["--dataset", "mead", "--params", str(params), "--out", str(out2)])
    assert out.read_bytes() == out2.read_bytes()  # deterministic output


def test_main_errors(tmp_path: Path, shared_datasets: Path) -> None:
    out = tmp_path / "m" / "crema_d.parquet"
    bad = _params(tmp_path, shared_datasets, manifest__datasets__crema_d__crowd_filter="both")
    with pytest.raises(SystemExit, match=r"manifest\.datasets\.crema_d\.crowd_filter"):
        main(["--dataset", "crema_d", "--params", str(bad), "--out", str(out)])
    assert not out.parent.exists()  # validated before any work
    with pytest.raises(SystemExit, match=r"manifest\.datasets\.cremad"):
        main(["--dataset", "cremad", "--params", str(bad), "--out", str(out)])
    missing_root = _params(tmp_path, shared_datasets, manifest__datasets__mead__root=str(tmp_path / "gone"))
    with pytest.raises(SystemExit, match="gone"):
        main(["--dataset", "mead", "--params", str(missing_root), "--out", str(out)])
    # every sample clip is absent from the real summary table -> all dropped -> no train clips
    voice = _params(tmp_path, shared_datasets, manifest__datasets__crema_d__crowd_filter="voice")
    with pytest.raises(SystemExit, match="no clips in the train split"):
        main(["--dataset", "crema_d", "--params", str(voice), "--out", str(out)])
    assert not out.exists()
    issues = (tmp_path / "m" / "crema_d.issues.jsonl").read_text().splitlines()
    assert len(issues) == 16 and all(json.loads(i)["kept"] is False for i in issues)


def test_main_csv_format_and_sentence_split(tmp_path: Path, shared_datasets: Path) -> None:
    listing = tmp_path / "own" / "list.csv"
    lines = ["video_path,speaker,emotion,intensity,sentence"]
    for speaker in ("a", "b", "c"):
        for k in range(1, 4):
            _touch(tmp_path / "own" / speaker / f"{k}.mp4")
            lines.append(f"{speaker}/{k}.mp4,{speaker},happy,1,{k:03d}")
    listing.write_text("\n".join(lines) + "\n")
    params = _params(tmp_path, shared_datasets, manifest__datasets__own={
        "format": "csv", "root": str(listing), "split": "sentence", "test_sentences": 0.3, "val_sentences": 0.3})
    out = tmp_path / "out" / "own.parquet"
    assert main(["--dataset", "own", "--params", str(params), "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert list(frame["split"]) == ["train", "val", "test"] * 3 and set(frame["dataset"]) == {"own"}
    summary = json.loads((tmp_path / "out" / "own.summary.json").read_text())
    assert summary["speakers_per_split"] == {"train": 3, "val": 3, "test": 3}


def test_crema_d_absent_demographics_file(tmp_path: Path) -> None:
    rows, issues = read_crema_d(_crema_tmp(tmp_path), tmp_path / "nope.csv")
    assert all(r.sex == "" for r in rows)
    demo = [i for i in issues if i.problem == "missing_demographics"]
    assert len(demo) == 1 and demo[0].path.endswith("nope.csv") and demo[0].kept and "5 clips" in demo[0].message
