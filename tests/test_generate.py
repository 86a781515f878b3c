"""`generate`: a real photo + real speech (or text) + emotion -> MP4, and one clear line for each bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile

from bad_inputs import CORPUS, text_file, tone_wav
from pipeline.generate import main


@pytest.fixture(scope="module")
def checkpoints(tiny_models):
    paths = {m: tiny_models / m / "crema_d" / "last.ckpt" for m in ("cvae", "sinha", "two_stage", "emotalker")}
    return {**paths, "eapc": tiny_models / "eapc_vid2vid" / "crema_d" / "last.ckpt"}  # eapc renders through stage 2


@pytest.fixture(scope="module")
def photo(talking_clips):
    return talking_clips / "pcavs/Input/517600055/000000.jpg"  # a 224 px VoxCeleb2 frame, one face


@pytest.fixture(scope="module")
def speech(shared_datasets):
    return shared_datasets / "crema-d-real/AudioWAV/1001_DFA_HAP_XX.wav"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("generate:")], err


def probe(path):
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        n = sum(1 for _ in container.decode(video=0))
        return {"fps": float(video.average_rate), "frames": n, "size": (video.width, video.height),
                "video": video.codec_context.name, "audio": audio.codec_context.name}


@pytest.mark.parametrize("method", ["cvae", "sinha", "two_stage", "emotalker", "eapc"])
def test_photo_and_wav_give_a_browser_mp4_of_the_whole_photo(method, checkpoints, photo, speech, tmp_path, capsys):
    out = tmp_path / f"{method}.mp4"
    code, lines, _ = run(capsys, "--method", method, "--checkpoint", checkpoints[method], "--image", photo,
                         "--audio", speech, "--emotion", "happy", "--out", out)
    assert code == 0 and lines == []
    n_frames = len(soundfile.read(speech)[0]) // 640  # 16 kHz WAV, 25 fps
    info = probe(out)
    assert info == {"fps": 25.0, "frames": n_frames, "size": (224, 224), "video": "h264", "audio": "aac"}
    assert not list(tmp_path.glob(".*partial*"))
    crop = tmp_path / f"{method}_crop.mp4"
    assert run(capsys, "--method", method, "--checkpoint", checkpoints[method], "--image", photo, "--audio", speech,
               "--emotion", "sad", "--crop-only", "--out", crop)[0] == 0
    assert probe(crop)["size"] == (64, 64)


@pytest.mark.parametrize("method", ["cvae", "two_stage"])
def test_text_goes_through_tts(method, checkpoints, photo, tmp_path, capsys):
    out = tmp_path / "text.mp4"
    code, _, _ = run(capsys, "--method", method, "--checkpoint", checkpoints[method], "--image", photo,
                     "--text", "Don't forget a jacket.", "--emotion", "angry", "--out", out)
    assert code == 0 and probe(out)["frames"] > 25  # over a second of speech


def test_emotalker_takes_a_free_text_prompt(checkpoints, photo, speech, tmp_path, capsys):
    out = tmp_path / "prompt.mp4"
    code, lines, _ = run(capsys, "--method", "emotalker", "--checkpoint", checkpoints["emotalker"], "--image", photo,
                         "--audio", speech, "--emotion", "happy", "--prompt", "very happy with a little surprised",
                         "--crop-only", "--out", out)
    assert code == 0 and lines == [] and probe(out)["frames"] == len(soundfile.read(speech)[0]) // 640
    code, lines, _ = run(capsys, "--method", "emotalker", "--checkpoint", checkpoints["emotalker"], "--image", photo,
                         "--audio", speech, "--emotion", "happy", "--prompt", " , ", "--out", out)
    assert code == 2 and "empty emotion prompt" in lines[0]
    code, lines, _ = run(capsys, "--method", "cvae", "--checkpoint", checkpoints["cvae"], "--image", photo,
                         "--audio", speech, "--emotion", "happy", "--prompt", "very happy", "--out", out)
    assert code == 2 and "emotalker" in lines[0]


def test_jobs_file_renders_good_jobs_and_reports_bad_ones(checkpoints, photo, speech, tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    with open(jobs, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "audio", "text", "emotion", "out"])
        w.writerow([photo, speech, "", "angry", "a.mp4"])
        w.writerow([tmp_path / "missing.jpg", speech, "", "sad", "b.mp4"])
        w.writerow([photo, "", "Hello there.", "fear", "c.mp4"])
    code, lines, _ = run(capsys, "--method", "cvae", "--checkpoint", checkpoints["cvae"], "--jobs", jobs)
    assert code == 2
    assert (tmp_path / "a.mp4").is_file() and (tmp_path / "c.mp4").is_file() and not (tmp_path / "b.mp4").exists()
    assert len(lines) == 2 and "image not found" in lines[0]
    assert lines[1] == "generate: 2 done, 1 failed of 3 jobs"


def test_jobs_file_rows_are_checked_up_front_and_bad_rows_do_not_stop_good_ones(checkpoints, photo, speech,
                                                                                 tmp_path, capsys):
    """Excel's UTF-8 CSV (with a byte-order mark); a bad intensity, an empty out, an unknown emotion
    and two rows with the same out are reported by line before any work; the good rows run."""
    jobs = tmp_path / "jobs.csv"
    rows = [["image", "audio", "emotion", "out", "intensity"],
            [photo, speech, "angry", "good1.mp4", ""],                # line 2
            [photo, speech, "sad", "bad_level.mp4", "high"],          # 3
            [photo, speech, "sad", "", ""],                           # 4
            [photo, speech, "ecstatic", "bad_emotion.mp4", ""],       # 5
            [photo, speech, "happy", "same.mp4", ""],                 # 6
            [photo, speech, "fear", "same.mp4", ""],                  # 7
            [photo, speech, "disgust", str(speech), ""],              # 8: would overwrite an input
            [photo, speech, "neutral", "good2.mp4", ""]]              # 9
    with open(jobs, "w", newline="", encoding="utf-8-sig") as fh:
        csv.writer(fh).writerows(rows)
    before = Path(speech).read_bytes()
    code, lines, _ = run(capsys, "--method", "cvae", "--checkpoint", checkpoints["cvae"], "--jobs", jobs)
    assert code == 2
    assert (tmp_path / "good1.mp4").is_file() and (tmp_path / "good2.mp4").is_file()
    assert not any((tmp_path / n).exists() for n in ("bad_level.mp4", "bad_emotion.mp4", "same.mp4"))
    assert Path(speech).read_bytes() == before
    errors = {int(line.split(" line ")[1].split(":")[0]): line for line in lines if " line " in line}
    assert sorted(errors) == [3, 4, 5, 6, 7, 8]
    assert "intensity must be 1 (low), 2 (medium) or 3 (high), got 'high'" in errors[3]
    assert "empty out" in errors[4] and "unknown emotion 'ecstatic'" in errors[5]
    assert "also the out of another row" in errors[6] and "also the out of another row" in errors[7]
    assert "an input of this jobs file" in errors[8]
    assert lines[-1] == "generate: 2 done, 6 failed of 8 jobs"


def test_out_never_overwrites_an_input_and_is_checked_before_the_render(checkpoints, photo, talking_clips,
                                                                        tmp_path, capsys):
    """`--audio clip.mp4 --out clip.mp4` (or a hard link of it), a folder, a path under a file, an
    out-of-range intensity: one line, exit 2, the user's file untouched (the checkpoint is never read)."""
    import os
    import shutil

    clip = tmp_path / "clip.mp4"
    shutil.copy(sorted(talking_clips.rglob("*.mp4"))[0], clip)
    os.link(clip, tmp_path / "linked.mp4")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "folder.mp4").mkdir()
    before = clip.read_bytes()
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    cases = {clip: "is the input", tmp_path / "linked.mp4": "is the input",
             tmp_path / "folder.mp4": "is a folder", tmp_path / "notes.txt" / "out.mp4": "is a file, not a folder"}
    for out, message in cases.items():
        code, lines, _ = run(capsys, "--method", "cvae", "--checkpoint", garbage, "--image", photo, "--audio", clip,
                             "--emotion", "happy", "--out", out)
        assert code == 2 and len(lines) == 1 and message in lines[0], (out, lines)
    assert clip.read_bytes() == before and (tmp_path / "notes.txt").read_text() == "mine"
    for level in ("7", "-1", "high"):
        code, lines, _ = run(capsys, "--method", "sinha", "--checkpoint", garbage, "--image", photo, "--audio", clip,
                             "--emotion", "happy", "--intensity", level, "--out", tmp_path / "o.mp4")
        assert code == 2 and lines == [f"generate: error: intensity must be 1 (low), 2 (medium) or 3 (high), got {level!r}"]


def _two_faces(tmp_path, photo):
    """The 224 px face beside a smaller (140 px) face of another VoxCeleb2 speaker, on grey."""
    canvas = np.full((224, 384, 3), 128, np.uint8)
    canvas[:, :224] = cv2.imread(str(photo))
    canvas[40:180, 234:374] = cv2.resize(cv2.imread(str(photo.parents[1] / "741400163/000000.jpg")), (140, 140))
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), canvas)
    return path


BAD = {  # command-line-only cases -> (argument overrides, expected words in the one error line)
    "too long": (lambda tmp, photo, speech: {"--audio": tone_wav(tmp, "long.wav", 3.0, 0.3), "--max-seconds": 2}, "limit"),
    "other method's checkpoint": (lambda tmp, photo, speech: {"--method": "sinha"}, "not a sinha checkpoint"),
    "not a video method": (lambda tmp, photo, speech: {"--method": "syncnet"}, "not a video-generating method"),
    "garbage checkpoint": (lambda tmp, photo, speech: {"--checkpoint": text_file(tmp, "model.ckpt")},
                           "model.ckpt is not a PyTorch checkpoint"),
}


def _cli_args(inputs: dict) -> dict:
    """A corpus entry (tests/bad_inputs.py) as generate's options."""
    return {f"--{k}": v for k, v in inputs.items() if v is not None}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_input_corpus_on_the_command_line(case, checkpoints, photo, speech, tmp_path, capsys):
    make, words = CORPUS[case]
    args = {"--method": "cvae", "--checkpoint": checkpoints["cvae"], **_cli_args(make(tmp_path, photo, speech)),
            "--out": tmp_path / "out.mp4"}
    code, lines, err = run(capsys, *[x for kv in args.items() for x in kv])
    assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".*partial*"))


def test_bad_input_corpus_in_one_jobs_file(checkpoints, photo, speech, tmp_path, capsys):
    """Every corpus entry as a row of one jobs file: each fails with its words, naming its line; the
    good row between them runs."""
    cases = sorted(CORPUS)
    rows = [{**CORPUS[c][0](tmp_path, photo, speech), "out": f"{i}.mp4"} for i, c in enumerate(cases)]
    rows.insert(3, {"image": photo, "audio": speech, "text": None, "emotion": "sad", "intensity": None, "out": "good.mp4"})
    jobs = tmp_path / "jobs.csv"
    with open(jobs, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["image", "audio", "text", "emotion", "intensity", "out"])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    code, lines, err = run(capsys, "--method", "cvae", "--checkpoint", checkpoints["cvae"], "--jobs", jobs)
    assert code == 2 and (tmp_path / "good.mp4").is_file() and "Traceback" not in err
    by_line = {int(line.split(" line ")[1].split(":")[0]): line for line in lines if " line " in line}
    for position, row in enumerate(rows):
        if row["out"] == "good.mp4":
            assert position + 2 not in by_line
            continue
        case = cases[int(row["out"].split(".")[0])]
        assert CORPUS[case][1] in by_line[position + 2], (case, by_line.get(position + 2))
        assert not (tmp_path / row["out"]).exists()
    assert lines[-1] == f"generate: 1 done, {len(cases)} failed of {len(rows)} jobs"


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_command_line_options_are_one_line_and_no_file(case, checkpoints, photo, speech, tmp_path, capsys):
    overrides, words = BAD[case]
    args = {"--method": "cvae", "--checkpoint": checkpoints["cvae"], "--image": photo, "--audio": speech,
            "--emotion": "happy", "--out": tmp_path / "out.mp4", **overrides(tmp_path, photo, speech)}
    code, lines, err = run(capsys, *[x for kv in args.items() if kv[1] is not None for x in kv])
    assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".*partial*"))


def test_several_faces_use_the_largest_and_say_so(checkpoints, photo, speech, tmp_path, capsys):
    code, lines, err = run(capsys, "--method", "cvae", "--checkpoint", checkpoints["cvae"],
                           "--image", _two_faces(tmp_path, photo), "--audio", speech, "--out", tmp_path / "o.mp4")
    assert code == 0 and any("2 faces found; using the largest" in line for line in lines), err
    assert probe(tmp_path / "o.mp4")["size"] == (384, 224)


def test_eapc_defaults_to_its_stage2_checkpoint():
    from pipeline.generate import default_checkpoint

    assert default_checkpoint("eapc", "mead") == Path("models/eapc_vid2vid/mead/last.ckpt")
    assert default_checkpoint("cvae", "crema_d") == Path("models/cvae/crema_d/last.ckpt")


def test_paste_back_lands_on_the_face_box():
    """A 64 px crop cut from photo pixels x 40..104, y 60..124 (a known affine, half scale into a 128 px
    landmark crop) goes back exactly there: the inverse map, not the forward one."""
    from pipeline.photo import PreparedFace, paste_back

    photo = np.zeros((200, 160, 3), np.uint8)
    to_lmk_crop = np.array([[2.0, 0.0, -80.0], [0.0, 2.0, -120.0]])  # photo -> 128 px crop: (x - 40) * 2
    face = PreparedFace(photo, np.zeros((64, 64, 3), np.uint8), np.zeros((68, 2), np.float32), to_lmk_crop, 128, 1)
    frames = np.full((2, 64, 64, 3), 200, np.uint8)
    out = paste_back(face, frames, feather=0.1)
    assert out.shape == (2, 200, 160, 3)
    assert (out[:, 82:102, 62:82] == 200).all()  # the box's middle, 20 px from its feathered edge
    assert out[:, 62:122, 42:102].mean() > 140  # the box holds most of the crop
    outside = np.ones((200, 160), bool)
    outside[58:126, 38:106] = False
    assert (out[:, outside] == 0).all()  # nothing lands outside the box


def test_failing_encoder_leaves_no_file_and_keeps_an_existing_one(checkpoints, photo, speech, tmp_path, monkeypatch):
    """The MP4 is written under a temporary name and renamed: an encoder dying half-way leaves
    neither a partial file nor a damaged earlier output."""
    import pipeline.extract.video as video

    def dying_encoder(path, *args, **kwargs):
        Path(path).write_bytes(b"\x00" * 1000)  # half an MP4
        raise OSError("No space left on device")

    out = tmp_path / "talk.mp4"
    out.write_bytes(b"an earlier render")
    monkeypatch.setattr(video, "write_mp4", dying_encoder)  # run_job imports it when it runs
    with pytest.raises(OSError, match="No space left"):
        main(["--method", "cvae", "--checkpoint", str(checkpoints["cvae"]), "--image", str(photo), "--audio",
              str(speech), "--emotion", "happy", "--out", str(out)])
    assert out.read_bytes() == b"an earlier render" and sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]
