"""Every stage CLI turns a malformed params file into one line naming the file and the key, with
the expected type or values, and exit status 2 (or a SystemExit with that line): no traceback, no work."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.params import set_dotted

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())

# (section the CLI reads) -> malformations: unknown key, wrong type, out-of-range value, with the text expected
MALFORMED = {
    "manifest": [("manifest.datasets.crema_d.bogus", 1, "manifest.datasets.crema_d.bogus: unknown key"),
                 ("manifest.seed", "zero", "manifest.seed: must be int, got 'zero'"),
                 ("manifest.seed", -1, "manifest.seed: must be >= 0")],
    "preprocess": [("preprocess.bogus", 1, "preprocess.bogus: unknown key"),
                   ("preprocess.fps", "fast", "preprocess.fps: must be int, got 'fast'"),
                   ("preprocess.fps", -1, "preprocess.fps: invalid value -1")],
    "evaluate": [("evaluate.crop_sise", 128, "evaluate.crop_sise: unknown key"),
                 ("evaluate.crop_size", "big", "evaluate.crop_size: must be int, got 'big'"),
                 ("evaluate.arcface_arch", "r7", "evaluate.arcface_arch: must be one of")],
    "train": [("train.data.bogus", 1, "train.data.bogus: unknown key"),
              ("train.data.batch_size", "eight", "train.data.batch_size: must be int, got 'eight'"),
              ("train.methods.{method}.optim.lr", -1.0, "train.methods.{method}"),
              ("train.methods.{method}.data.window", "long",
               "train.methods.{method}.data.window: must be int, got 'long'")],
}


METHOD = {"evaluate": "eapc"}  # the method each CLI runs: cvae unless named


def _cli(name: str, params: Path, tmp: Path) -> list[str]:
    return {
        "manifest": ["pipeline.manifest", "--dataset", "crema_d", "--params", params, "--out", tmp / "m.parquet"],
        "preprocess": ["pipeline.preprocess", "--manifest", tmp / "none.parquet", "--out", tmp / "shards",
                       "--params", params],
        "train": ["pipeline.train", "--method", "cvae", "--dataset", "crema_d", "--params", params],
        "evaluate": ["pipeline.evaluate", "--method", "eapc", "--dataset", "crema_d", "--params", params],
        "evaluate_video": ["pipeline.evaluate_video", "--method", "cvae", "--dataset", "crema_d", "--params", params],
        "generate": ["pipeline.generate", "--method", "cvae", "--image", tmp / "face.jpg", "--audio", tmp / "a.wav",
                     "--out", tmp / "o.mp4", "--params", params],
        "web": ["pipeline.web", "--models-dir", tmp, "--params", params],
        "real_stats": ["pipeline.real_stats", "--dataset", "crema_d", "--params", params],
    }[name]


SECTION_OF = {"manifest": "manifest", "preprocess": "preprocess", "train": "train", "evaluate": "train",
              "evaluate_video": "train", "generate": "preprocess", "web": "preprocess", "real_stats": "evaluate"}
CASES = [(cli, *case) for cli, section in SECTION_OF.items() for case in
         [(None, None, "not valid YAML at line 3")] + MALFORMED[section]]
CASES += [("evaluate_video", *case) for case in MALFORMED["evaluate"]]


@pytest.mark.parametrize("cli,key,value,expected", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]!r}" for c in CASES])
def test_malformed_params_are_one_line_naming_file_and_key(cli, key, value, expected, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(REPO)  # the stages read ../shared paths relative to the repository
    method = METHOD.get(cli, "cvae")
    key, expected = (None if key is None else key.format(method=method)), expected.format(method=method)
    params = tmp_path / "my-params.yaml"
    if key is None:
        params.write_text("preprocess:\n  fps: [25\n")
    else:
        data = copy.deepcopy(PARAMS)
        set_dotted(data, key, value)
        params.write_text(yaml.safe_dump(data))
    module, *argv = _cli(cli, params, tmp_path)
    try:
        code = importlib.import_module(module).main([str(a) for a in argv])
        err = capsys.readouterr().err
    except SystemExit as exit_:
        code, err = 2 if exit_.code is None else exit_.code, str(exit_.code) + "\n" + capsys.readouterr().err
    assert code not in (0, None), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(params) in lines[0] and expected in lines[0], lines[0]
    assert not (tmp_path / "shards").exists() and not (tmp_path / "o.mp4").exists()  # no work started
