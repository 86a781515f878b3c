"""How much emotion does each speech-content feature carry, and how well does it predict the mouth?

Paper 002 uses DeepSpeech's character logits because they are emotion-independent; they cannot be
had offline here. This script compares the candidates that exist without extra downloads, on the
training clips of ``shards/<dataset>`` (per video frame, the W = 6 frame window of
``lightning_modules.sinha.speech_windows``, averaged over its rows):

* ``mel``: the 80 log-mel bins; ``mfcc``: their 13 DCT-II coefficients (sinha's ``speech_feature``);
* ``eapc_mfcc``: the shards' 28 x 12 EAPC MFCC window, averaged over time (12);
* ``llf``: EAPC's 25 low-level prosodic features (a feature that should leak: a reference point).

Per feature, leave-one-clip-out (every clip's frames held out once, scikit-learn):

* emotion leak: accuracy of a linear probe (logistic regression) of the clip's emotion label,
  against the majority-class rate of the held-out frames' training folds (chance);
* mouth: R^2 of a ridge regression of the inner-lip opening (inter-ocular units).

    python benchmarks/speech_feature_leak.py [--dataset crema_d]

Not measured (packages / weights not installed here): pocketsphinx phones, Moonshine and Whisper
encoders. On the sample (17 training clips, one emotional actor) the numbers are a smoke test of
the method, not a finding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import webdataset as wds

from datamodules.talking_face import DecodeSample, ReadShards, SelectMembers, shard_urls
from lightning_modules.sinha import mouth_opening, speech_windows


def clip_features(clip: dict) -> dict[str, np.ndarray]:
    """Per-frame (T, F) features of one clip."""
    mel = torch.from_numpy(clip["mel"])[None]
    frames = torch.arange(len(clip["lmk"]))[None]
    return {"mel": speech_windows(mel, frames, 6, "mel")[0].mean(1).numpy(),
            "mfcc": speech_windows(mel, frames, 6, "mfcc")[0].mean(1).numpy(),
            "eapc_mfcc": clip["mfcc"].mean(1), "llf": clip["llf"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="crema_d")
    args = parser.parse_args()
    keys = ("lmk", "mel", "mfcc", "llf")
    clips = list(wds.DataPipeline(wds.SimpleShardList(shard_urls(Path("shards") / args.dataset, "train")),
                                  ReadShards(SelectMembers(keys)), wds.map(DecodeSample(keys))))
    feats = [clip_features(c) for c in clips]
    labels = [np.full(len(c["lmk"]), c["meta"]["emotion_id"]) for c in clips]
    mouth = [mouth_opening(torch.from_numpy(c["lmk"])).numpy() for c in clips]
    print(f"{args.dataset}: {len(clips)} training clips, {sum(map(len, labels))} frames, "
          f"{len({int(y[0]) for y in labels})} emotions; leave-one-clip-out")
    print(f"{'feature':10s} {'dim':>4s} {'emotion acc':>12s} {'chance':>7s} {'mouth R^2':>10s}")
    for name in feats[0]:
        correct = chance = total = 0
        sse = sst = 0.0
        for i in range(len(clips)):
            train = [j for j in range(len(clips)) if j != i]
            x_tr = np.concatenate([feats[j][name] for j in train])
            y_tr = np.concatenate([labels[j] for j in train])
            m_tr = np.concatenate([mouth[j] for j in train])
            x_te, y_te, m_te = feats[i][name], labels[i], mouth[i]
            if len(set(y_tr)) > 1:
                probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x_tr, y_tr)
                correct += int((probe.predict(x_te) == y_te).sum())
            majority = np.bincount(y_tr).argmax()
            chance += int((y_te == majority).sum())
            total += len(y_te)
            ridge = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x_tr, m_tr)
            sse += float(((ridge.predict(x_te) - m_te) ** 2).sum())
            sst += float(((m_te - m_tr.mean()) ** 2).sum())
        print(f"{name:10s} {feats[0][name].shape[1]:4d} {100 * correct / total:11.1f}% {100 * chance / total:6.1f}% "
              f"{1 - sse / sst:10.3f}")


if __name__ == "__main__":
    main()
