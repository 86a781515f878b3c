"""The web demo in a real browser: headless Chromium (the system's, driven by Playwright) uploads a
real face and a real WAV, picks an emotion and gets a playable MP4 of the audio's length."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import av
import pytest
import soundfile

from bad_inputs import CORPUS
from pipeline.generate import GenerateConfig
from pipeline.web import WebConfig, create_app

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = WebConfig(models_dir=tiny_models, max_upload_mb=1.0, out_dir=tmp_path_factory.mktemp("videos"),
                    generate=GenerateConfig(max_seconds=10))
    srv = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def post(url: str, files: dict[str, tuple[str, bytes]], fields: dict[str, str]) -> tuple[int, dict]:
    """A multipart POST with the standard library (what a browser form sends)."""
    import json
    import urllib.error

    boundary = "----testboundary"
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, (filename, data) in files.items():
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
def test_browser_uploads_a_face_and_speech_and_plays_the_video(server, talking_clips, shared_datasets):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "the browser test needs the system Chromium: apt-get install chromium (.ci/install.sh does)"

    face = talking_clips / "pcavs/Input/517600055/000000.jpg"
    speech = shared_datasets / "crema-d-real/AudioWAV/1001_DFA_HAP_XX.wav"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server)
        page.wait_for_function("document.querySelectorAll('#method option').length > 0")
        assert page.locator("#method option").all_inner_texts() == ["cvae", "eapc_vid2vid", "emotalker", "sinha", "two_stage"]
        page.set_input_files("#image", str(face))
        page.set_input_files("#audio", str(speech))
        page.select_option("#emotion", "happy")
        page.select_option("#method", "sinha")
        assert page.locator("#intensity").is_enabled() and not page.locator("#prompt").is_enabled()
        page.select_option("#intensity", "3")
        page.click("#submit")
        page.wait_for_selector("#result[src]", timeout=120_000)
        page.wait_for_function("document.querySelector('#result').readyState >= 1", timeout=30_000)  # it plays
        src = page.get_attribute("#result", "src")
        assert page.get_attribute("#download", "href") == src
        page.screenshot(path=str(ARTIFACTS / "web_demo.png"), full_page=True)
        browser.close()
    video_path = ARTIFACTS / "web_demo.mp4"
    urllib.request.urlretrieve(server + src, video_path)
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        assert float(stream.average_rate) == 25.0 and len(container.streams.audio) == 1
    assert frames == len(soundfile.read(speech)[0]) // 640  # the audio's duration at 25 fps


def test_uploads_over_the_limit_or_of_the_wrong_type_are_refused(server, talking_clips, shared_datasets):
    face = (talking_clips / "pcavs/Input/517600055/000000.jpg").read_bytes()
    speech = (shared_datasets / "crema-d-real/AudioWAV/1001_DFA_HAP_XX.wav").read_bytes()
    url = server + "/api/generate"
    form = {"method": "cvae", "emotion": "sad"}
    status, body = post(url, {"image": ("big.jpg", face + b"\0" * (1 << 20)), "audio": ("a.wav", speech)}, form)
    assert status == 413 and "upload limit" in body["error"]
    status, body = post(url, {"image": ("notes.txt", b"hello"), "audio": ("a.wav", speech)}, form)
    assert status == 415 and "not an image" in body["error"]
    status, body = post(url, {"image": ("face.jpg", b"not a jpeg"), "audio": ("a.wav", speech)}, form)
    assert status == 400 and "cannot read" in body["error"]
    status, body = post(url, {"image": ("face.jpg", face), "audio": ("a.wav", speech)}, {**form, "emotion": "bored"})
    assert status == 400 and "unknown emotion" in body["error"]
    status, body = post(url, {"image": ("face.jpg", face), "audio": ("a.wav", speech)}, {**form, "intensity": "7"})
    assert status == 400 and body["error"] == "intensity must be 1 (low), 2 (medium) or 3 (high), got '7'"
    status, body = post(url, {"image": ("face.jpg", face)}, {**form, "text": "Hello there, nice to meet you."})
    assert status == 200 and body["video"].endswith(".mp4")


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_input_corpus_on_the_web_endpoint(case, server, talking_clips, shared_datasets, tmp_path):
    """Every corpus entry (tests/bad_inputs.py) as an upload: 400 with the same words, as JSON."""
    photo = talking_clips / "pcavs/Input/517600055/000000.jpg"
    speech = shared_datasets / "crema-d-real/AudioWAV/1001_DFA_HAP_XX.wav"
    inputs, words = CORPUS[case][0](tmp_path, photo, speech), CORPUS[case][1]
    files = {k: (Path(inputs[k]).name, Path(inputs[k]).read_bytes()) for k in ("image", "audio") if inputs[k]}
    fields = {"method": "cvae", "emotion": inputs["emotion"], **{k: inputs[k] for k in ("text", "intensity") if inputs[k]}}
    status, body = post(server + "/api/generate", files, fields)
    assert status == 400 and words in body["error"], body


def test_request_size_is_capped_while_receiving_and_errors_are_json_without_server_paths(server, talking_clips):
    """A Content-Length over the cap is refused before the body; a chunked body (no length) is cut
    off as it streams past the cap; a missing field is ``{"error": ...}``, not FastAPI's 422 detail
    list; no error names a server path."""
    import http.client
    import json
    import tempfile
    from urllib.parse import urlparse

    host = urlparse(server)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.putrequest("POST", "/api/generate")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(10 * 2**30))  # claims 10 GB, sends nothing
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()

    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.putrequest("POST", "/api/generate")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    try:
        conn.send(b"%x\r\n%s\r\n" % (len(head), head))
        for _ in range(40):  # a 40 MB file part; the cap is 2 x 1 MB + 1 MB
            block = b"\0" * 2**20
            conn.send(b"%x\r\n%s\r\n" % (len(block), block))
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: what is wanted
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()

    face = (talking_clips / "pcavs/Input/517600055/000000.jpg").read_bytes()
    status, body = post(server + "/api/generate", {}, {"method": "cvae"})
    assert status == 422 and body == {"error": "missing or invalid form field(s): image"}
    for files, fields in (({"image": ("face.jpg", b"not a jpeg")}, {"method": "cvae", "text": "Hello there."}),
                          ({"image": ("face.jpg", face)}, {"method": "cvae", "text": "!!!"})):
        status, body = post(server + "/api/generate", files, fields)
        assert status == 400 and tempfile.gettempdir() not in body["error"], body


def test_only_the_newest_rendered_videos_are_kept(tmp_path):
    """keep_videos: older videos the server wrote (16 hex digits) go; anything else stays."""
    import os

    from pipeline.web import _prune

    names = [f"{i:016x}.mp4" for i in range(4)]
    for age, name in enumerate(names):
        (tmp_path / name).write_bytes(b"v")
        os.utime(tmp_path / name, (1000 - age, 1000 - age))  # names[0] newest
    (tmp_path / "mine.mp4").write_bytes(b"user")
    _prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[1], "mine.mp4"])


def test_binds_to_localhost_by_default_and_needs_a_model(tmp_path):
    from pipeline.web import build_parser, main

    args = build_parser().parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert main(["--models-dir", str(tmp_path)]) == 2  # refuses to start without a trained model
