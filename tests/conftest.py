"""Shared fixtures: the real sample clips in ``../shared/datasets`` (override with SHARED_DATASETS)."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """Path of the shared sample data; the tests fail loudly when it is missing."""
    root = Path(os.environ.get("SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))
    if not root.is_dir():
        pytest.fail(f"sample data not found at {root}; set SHARED_DATASETS to ../shared/datasets")
    return root.resolve()


@pytest.fixture(scope="session")
def talking_clips(shared_datasets: Path) -> Path:
    return shared_datasets / "talking-clips"


@pytest.fixture(scope="session")
def crema_shards(tmp_path_factory, shared_datasets: Path) -> Path:
    """Real shards (``<dir>/shards/crema_d``) of 4 CREMA-D-layout clips: 2 train, 1 val, 1 test.

    Returns the working directory holding ``shards/``.
    """
    from pipeline.extract.clip import PreprocessConfig
    from pipeline.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("work")
    crema = shared_datasets / "crema-d-layout"
    rows = [{"id": stem, "dataset": "crema_d", "video_path": str(crema / "VideoFlash" / f"{stem}.flv"),
             "audio_path": str(crema / "AudioWAV" / f"{stem}.wav"), "speaker": stem[:4], "sex": "",
             "emotion": "neutral", "intensity": 0, "sentence": stem[5:8], "split": split}
            for stem, split in [("9903_DFA_NEU_XX", "train"), ("9904_ITS_NEU_XX", "train"),
                                ("9905_IOM_NEU_XX", "val"), ("9906_IOM_NEU_XX", "test")]]
    run_preprocess(rows, root / "shards" / "crema_d",
                   PreprocessConfig(crop_sizes=(64,), decode_max_side=480, clips_per_shard=1), serial=True)
    return root
