"""The HTTP service: formats, limits, bad input (4xx, never 5xx), micro-batching, a real uvicorn process, fuzzing."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import SAMPLE
from fastapi.testclient import TestClient
from PIL import Image
from serving import running_server

from headstart.deploy.predictor import load_predictor
from headstart.deploy.serve import ServeConfig, create_app

PHOTOS = sorted((SAMPLE / "val").rglob("*.jpg"))


def _client(bundle: Path, **options: Any) -> TestClient:
    return TestClient(create_app(ServeConfig(bundle=str(bundle), **options), log=lambda _: None))


def _expected(bundle: Path, photos: list[Path]) -> np.ndarray:
    predictor = load_predictor(bundle)
    return predictor.predict(predictor.read_inputs(photos))


def test_predict_accepts_multipart_base64_and_raw_bodies_with_the_same_answer(tiny_image_bundle: Path) -> None:
    photos = PHOTOS[:3]
    expected = _expected(tiny_image_bundle, photos)
    with _client(tiny_image_bundle, backend="auto") as client:
        assert client.get("/health").json()["backend"] == "onnxruntime"
        files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        multipart = client.post("/predict?top_k=2", files=files)
        assert multipart.status_code == 200, multipart.text
        body = multipart.json()
        assert [p["name"] for p in body["predictions"]] == [p.name for p in photos]
        for row, prediction in zip(expected, body["predictions"]):
            assert prediction["label"] == ["ants", "bees"][int(row.argmax())]
            assert prediction["probability"] == pytest.approx(float(row.max()), abs=1e-4)
            assert [k["label"] for k in prediction["top_k"]][0] == prediction["label"]
            assert len(prediction["top_k"]) == 2
        encoded = client.post("/predict", json={"images": [base64.b64encode(p.read_bytes()).decode() for p in photos]})
        raw = client.post("/predict?top_k=1", content=photos[0].read_bytes(), headers={"content-type": "image/jpeg"})
        assert [p["probability"] for p in encoded.json()["predictions"]] == pytest.approx(
            [p["probability"] for p in body["predictions"]], abs=1e-6)
        assert raw.json()["predictions"][0]["top_k"] == [body["predictions"][0]["top_k"][0]]
        metadata = client.get("/metadata").json()
        assert metadata["classes"] == ["ants", "bees"] and metadata["task"] == "image"
        assert metadata["limits"]["max_items"] == 64
        assert "/predict" in client.get("/openapi.json").json()["paths"]
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower() and "https://" not in page.text


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("empty body", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty_body"),
    ("not an image", {"content": b"hello there", "headers": {"content-type": "image/jpeg"}}, 422, "undecodable_input"),
    ("truncated JPEG", {"content": PHOTOS[0].read_bytes()[:3000], "headers": {"content-type": "image/jpeg"}}, 422,
     "undecodable_input"),
    ("wrong content type", {"content": b"x", "headers": {"content-type": "text/csv"}}, 415, "unsupported_media_type"),
    ("no content type", {"content": b"x"}, 415, "unsupported_media_type"),
    ("multipart without boundary", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}, 400,
     "malformed_multipart"),
    ("wrong field name", {"files": [("photo", ("a.jpg", b"x", "image/jpeg"))]}, 422, "unknown_field"),
    ("text instead of a file", {"files": [("file", (None, "not a file"))]}, 422, "not_a_file"),
    ("broken JSON", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "malformed_json"),
    ("JSON nested too deep", {"content": b"[" * 50_000, "headers": {"content-type": "application/json"}}, 400,
     "malformed_json"),
    ("both JSON keys", {"json": {"images": ["aGk="], "image": "aGk="}}, 422, "ambiguous_fields"),
    ("JSON list", {"json": ["a"]}, 422, "bad_json_shape"),
    ("wrong JSON key", {"json": {"texts": ["a"]}}, 422, "unknown_field"),
    ("bad base64", {"json": {"images": ["@@@"]}}, 400, "bad_base64"),
    ("number instead of base64", {"json": {"images": [3]}}, 422, "bad_item_type"),
    ("no items", {"json": {"images": []}}, 422, "no_items"),
    ("too many items", {"json": {"images": ["aGk="] * 5}}, 413, "too_many_items"),
    ("too large body", {"content": b"\xff" * 70_000, "headers": {"content-type": "image/jpeg"}}, 413,
     "payload_too_large"),
    ("too many pixels", {"content": _png(400, 300), "headers": {"content-type": "image/png"}}, 413, "image_too_large"),
    ("bad top_k", {"params": {"top_k": "x"}, "content": b"x", "headers": {"content-type": "image/jpeg"}}, 422,
     "invalid_parameter"),
]


@pytest.fixture(scope="module")
def limited_client(tiny_image_bundle: Path) -> Any:
    with _client(tiny_image_bundle, backend="torch", max_items=4, max_upload_bytes=60_000,
                 max_image_pixels=100_000) as client:
        yield client


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_gets_a_4xx_json_error_naming_the_problem(limited_client: Any, case: Any) -> None:
    _, request, status, code = case
    response = limited_client.post("/predict", **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["status"] == status
    assert error["message"] and error["fix"]


def test_wrong_method_and_path_are_json_4xx(limited_client: Any) -> None:
    assert limited_client.get("/predict").json()["error"]["code"] == "method_not_allowed"
    assert limited_client.get("/nowhere").json()["error"]["status"] == 404


def test_micro_batching_shares_forward_passes_without_changing_results(tiny_image_bundle: Path) -> None:
    photos = PHOTOS[:8]
    expected = _expected(tiny_image_bundle, photos)
    app = create_app(ServeConfig(bundle=str(tiny_image_bundle), backend="torch", batch_window_ms=300),
                     log=lambda _: None)

    async def run() -> list[dict[str, Any]]:
        app.state.batcher.start()  # ASGITransport runs no lifespan
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                requests = [client.post("/predict", content=p.read_bytes(), headers={"content-type": "image/jpeg"})
                            for p in photos]
                responses = await asyncio.gather(*requests)
            return [r.json() for r in responses]
        finally:
            await app.state.batcher.stop()

    answers = asyncio.run(run())
    batcher = app.state.batcher
    assert batcher.items == len(photos) and batcher.batches < len(photos)  # requests shared forward passes
    got = np.array([[k["probability"] for k in sorted(a["predictions"][0]["top_k"], key=lambda k: k["label"])]
                    for a in answers])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_text_service_takes_json_and_plain_text(tiny_bert: Path, tmp_path: Path) -> None:
    from headstart import TextClassifier
    from headstart.data.text import TextSamples

    texts = ["good fun film", "awful dull plot", "great acting", "boring mess"] * 4
    samples = TextSamples.from_lists(texts, ["pos", "neg"] * 8, source="inline")
    bundle = TextClassifier(str(tiny_bert), strategy="linear_probe", batch_size=8, progress=False, calibrate=False,
                            cache_dir="off", max_length=32).fit(samples, val=samples).save(tmp_path / "text")
    predictor = load_predictor(bundle)
    expected = predictor.predict(["good fun film", "boring mess"])
    with _client(bundle, backend="auto", max_text_chars=50) as client:
        answer = client.post("/predict", json={"texts": ["good fun film", "boring mess"]}).json()
        got = [p["probability"] for p in answer["predictions"]]
        np.testing.assert_allclose(got, expected.max(axis=1), atol=1e-4)
        plain = client.post("/predict", content="good fun film".encode(), headers={"content-type": "text/plain"})
        assert plain.json()["predictions"][0]["label"] == answer["predictions"][0]["label"]
        assert client.post("/predict", json={"texts": ["   "]}).json()["error"]["code"] == "undecodable_input"
        assert client.post("/predict", json={"texts": ["x" * 51]}).json()["error"]["code"] == "text_too_long"
        assert client.post("/predict", files=[("file", ("a.jpg", b"x", "image/jpeg"))]).status_code == 422


@pytest.mark.integration
def test_audio_service_takes_uploaded_wav_files(shared_data: Path, tmp_path: Path) -> None:
    from conftest import TINY_BACKBONE

    from headstart import AudioClassifier
    from headstart.data.audio import AudioSamples

    folder = shared_data / "audio" / "fsdd" / "recordings"
    paths = [folder / f"{d}_george_{t}.wav" for d in (0, 1) for t in range(6)]
    samples = AudioSamples.from_lists(paths, [p.name[0] for p in paths], classes=["0", "1"])
    bundle = AudioClassifier(backbone=f"logmel:{TINY_BACKBONE}", weights="random", image_size=64, batch_size=8,
                             clip_seconds=0.8, progress=False, calibrate=False, cache_dir="off",
                             strategy="linear_probe").fit(samples, val=samples).save(tmp_path / "audio")
    expected = _expected(bundle, paths[:2])
    with _client(bundle, backend="auto") as client:
        assert client.get("/health").json()["backend"] == "onnxruntime"
        answer = client.post("/predict", files=[("file", (p.name, p.read_bytes(), "audio/wav")) for p in paths[:2]])
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose([p["probability"] for p in answer.json()["predictions"]], expected.max(axis=1),
                                   atol=1e-4)
        bad = client.post("/predict", files=[("file", ("x.wav", b"RIFF0000WAVE", "audio/wav"))])
        assert bad.status_code == 422 and "x.wav" in bad.json()["error"]["message"]


def _malformed_requests(seed: int, photo: bytes, count: int) -> list[dict[str, Any]]:
    """Seeded malformed requests of many kinds (each a kwargs dict for httpx.Client.request). Those that cannot be
    valid carry ``must_fail``; a photo with a few flipped bytes or an odd top_k may still be a fine request."""
    rng = random.Random(seed)
    content_types = ["image/jpeg", "image/png", "application/octet-stream", "application/json", "text/plain", "",
                     "multipart/form-data", "multipart/form-data; boundary=zzz", "application/x-www-form-urlencoded",
                     "video/mp4", "multipart/mixed; boundary=a", "application/json; charset=latin-1"]

    def noise(n: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(n))

    def flipped() -> bytes:
        data = bytearray(photo)
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        return bytes(data)

    def json_value(depth: int = 0) -> Any:
        kind = rng.randrange(7 if depth < 3 else 4)
        if kind == 0:
            return rng.choice([None, True, rng.random() * 1e6])
        if kind in (1, 2):
            return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(20)))
        if kind == 3:
            return base64.b64encode(noise(rng.randrange(1, 200))).decode()
        if kind == 4:
            return [json_value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["images", "image", "texts", "x", ""]): json_value(depth + 1) for _ in range(rng.randrange(3))}

    requests: list[dict[str, Any]] = []
    while len(requests) < count:
        kind = rng.randrange(9)
        if kind == 0:
            requests.append({"content": noise(rng.randrange(0, 3000)),
                             "headers": {"content-type": rng.choice(content_types)}, "must_fail": True})
        elif kind == 1:
            requests.append({"content": photo[: rng.randrange(0, len(photo) // 2)],
                             "headers": {"content-type": "image/jpeg"}, "must_fail": True})
        elif kind == 2:
            requests.append({"files": [(rng.choice(["file", "files", "image", "photo", "", "fil e"]),
                                        (rng.choice(["a.jpg", "", "../../etc/passwd", "x" * 300]),
                                         rng.choice([noise(500), photo[:1000], b""]),
                                         rng.choice(["image/jpeg", "text/plain", "application/x-evil"])))
                                       for _ in range(rng.randrange(1, 7))], "must_fail": True})
        elif kind == 3:
            requests.append({"content": json.dumps(json_value()).encode(), "headers": {"content-type": "application/json"},
                             "must_fail": True})
        elif kind == 4:
            boundary = "b" + str(rng.randrange(10**6))
            parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n".encode()
                     + noise(rng.randrange(300)), rng.choice([f"\r\n--{boundary}--\r\n".encode(), b"", b"\r\n--",
                                                               noise(20)])]
            requests.append({"content": b"".join(parts)[: rng.randrange(1, 400)] if rng.random() < 0.5 else b"".join(parts),
                             "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}, "must_fail": True})
        elif kind == 5:
            requests.append({"content": flipped(), "headers": {"content-type": "image/jpeg"}})
        elif kind == 6:
            requests.append({"content": noise(rng.randrange(70_000, 150_000)),
                             "headers": {"content-type": rng.choice(content_types)}, "must_fail": True})
        elif kind == 7:
            requests.append({"content": photo, "headers": {"content-type": "image/jpeg"},
                             "params": {"top_k": rng.choice(["-1", "0", "abc", "1e9", "", "2.5", "99999999999999999999"])}})
        else:
            requests.append({"method": rng.choice(["GET", "PUT", "DELETE", "PATCH"]),
                             "url": rng.choice(["/predict", "/health/", "/metadata?x=%ff", "/%00", "/docs/../"])})
    return requests


RAW_GARBAGE = [b"GARBAGE\r\n\r\n", b"POST /predict HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
               b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
               b"\x00\x01\x02\x03\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
               b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5\r\n\r\nab"]


@pytest.mark.slow
def test_fuzz_a_real_server_with_1000_malformed_requests_then_serve_a_good_one(tiny_image_bundle: Path,
                                                                             tmp_path: Path) -> None:
    photo = PHOTOS[0].read_bytes()
    with running_server(tiny_image_bundle, tmp_path, "--max-upload-bytes", "65536", "--max-items", "4",
                        "--request-timeout", "3") as server:
        with httpx.Client(base_url=server.origin, timeout=30) as client:
            good = client.post("/predict", content=photo, headers={"content-type": "image/jpeg"})
            assert good.status_code == 200
            statuses: dict[int, int] = {}
            must_fail = 0
            for request in _malformed_requests(0, photo, 1000):
                method, url = request.pop("method", "POST"), request.pop("url", "/predict")
                invalid = request.pop("must_fail", False)
                response = client.request(method, url, **request)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (request, response.text, server.output())
                if invalid:
                    must_fail += 1
                    assert 400 <= response.status_code < 500, (request, response.text)
                if response.status_code >= 400 and url == "/predict":
                    assert response.json()["error"]["message"], response.text
            for raw in RAW_GARBAGE:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                    sock.sendall(raw)
                    sock.shutdown(socket.SHUT_WR)
                    answer = sock.recv(200)
                assert not answer.startswith(b"HTTP/1.1 5"), answer
            assert sum(statuses.values()) == 1000 and must_fail > 600
            again = client.post("/predict", content=photo, headers={"content-type": "image/jpeg"})
            assert again.status_code == 200 and again.json()["predictions"] == good.json()["predictions"]
            health = client.get("/health").json()
            assert health["status"] == "ok" and health["rejected_4xx"] >= must_fail
        assert server.process.poll() is None


def test_two_worker_processes_serve_the_same_answers(tiny_image_bundle: Path, tmp_path: Path) -> None:
    """Worker processes are spawned: everything they import must be importable (a local protocol class was not)."""
    expected = _expected(tiny_image_bundle, PHOTOS[:1])[0]
    with running_server(tiny_image_bundle, tmp_path, "--workers", "2", "--backend", "torch") as server:
        with httpx.Client(base_url=server.origin, timeout=30) as client:
            for _ in range(4):  # keep-alive requests, spread over the workers
                answer = client.post("/predict", content=PHOTOS[0].read_bytes(), headers={"content-type": "image/jpeg"})
                assert answer.status_code == 200, server.output()
                top = answer.json()["predictions"][0]
                assert top["probability"] == pytest.approx(float(expected.max()), abs=1e-5)
