"""The service under hostile use (issue 19): access, request IDs, generic 500s, per-item retry, admission (503 with
Retry-After), the per-request pixel budget, probes and Prometheus metrics."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SAMPLE
from fastapi.testclient import TestClient
from PIL import Image

from headstart.deploy.serve import MicroBatcher, ServeConfig, create_app
from headstart.deploy.serve.app import default_allowed_hosts, exposure_warning
from headstart.deploy.serve.requests import Admission, HeavyDecodes, RequestError

PHOTO = sorted((SAMPLE / "val").rglob("*.jpg"))[0].read_bytes()
KEY = "k" * 24


def _client(bundle: Path, **options: Any) -> TestClient:
    return TestClient(create_app(ServeConfig(bundle=str(bundle), backend="torch", **options), log=lambda _: None))


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(client: TestClient, body: bytes = PHOTO, **headers: str) -> Any:
    return client.post("/predict", content=body, headers={"content-type": "image/jpeg", **headers})


def test_an_api_key_guards_everything_but_the_probes(tiny_image_bundle: Path) -> None:
    with _client(tiny_image_bundle, api_key=KEY) as client:
        refused = _post(client)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
        assert _post(client, authorization="Bearer wrong-key-wrong-key").status_code == 401
        assert _post(client, authorization=f"Bearer {KEY}").status_code == 200
        assert _post(client, **{"x-api-key": KEY}).status_code == 200
        for path in ("/metadata", "/health", "/metrics", "/docs"):
            assert client.get(path).status_code == 401, path
        assert client.get("/live").status_code == 200 and client.get("/ready").json()["status"] == "ready"
    with pytest.raises(Exception, match="at least 16"):
        create_app(ServeConfig(bundle=str(tiny_image_bundle), backend="torch", api_key="short"))


def test_host_header_guard_and_cors_only_when_asked(tiny_image_bundle: Path) -> None:
    assert default_allowed_hosts("127.0.0.1") == ["127.0.0.1", "::1", "[::1]", "localhost"]
    assert default_allowed_hosts("0.0.0.0") == ["*"]
    assert exposure_warning("0.0.0.0", None) and exposure_warning("0.0.0.0", KEY) is None
    assert exposure_warning("127.0.0.1", None) is None
    with _client(tiny_image_bundle, allowed_hosts=default_allowed_hosts("127.0.0.1"),
                 cors_origins=["http://app.example"]) as client:
        rebound = client.get("/metadata", headers={"host": "attacker.example:8000"})
        assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "bad_host"
        assert client.get("/metadata", headers={"host": "localhost:8000"}).status_code == 200
        assert client.get("/metadata", headers={"host": "[::1]:8000"}).status_code == 200
        preflight = {"origin": "http://app.example", "access-control-request-method": "POST", "host": "localhost"}
        allowed = client.options("/predict", headers=preflight)
        assert allowed.status_code == 204 and allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = client.options("/predict", headers={**preflight, "origin": "http://evil.example"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    with _client(tiny_image_bundle) as client:  # no --cors-origins: no CORS header for anyone
        assert "access-control-allow-origin" not in client.get("/metadata", headers={"origin": "http://a.b"}).headers


def test_request_ids_and_a_generic_500_that_leaks_nothing(tiny_image_bundle: Path) -> None:
    logged: list[str] = []
    app = create_app(ServeConfig(bundle=str(tiny_image_bundle), backend="torch"), log=logged.append)
    with TestClient(app, raise_server_exceptions=False) as client:
        good = _post(client, **{"x-request-id": "abc-123"})
        assert good.status_code == 200 and good.headers["x-request-id"] == "abc-123"
        odd = _post(client, **{"x-request-id": "<script>" * 20})
        assert odd.headers["x-request-id"] != "<script>" * 20 and len(odd.headers["x-request-id"]) == 16

        def broken(arrays: Any) -> Any:
            raise RuntimeError("secret detail /home/user/model")

        app.state.predictor.run = broken
        failed = _post(client)
        assert failed.status_code == 500
        error = failed.json()["error"]
        assert "secret" not in failed.text and error["request_id"] == failed.headers["x-request-id"]
        assert any(error["request_id"] in line and "secret detail" in line for line in logged)


def test_one_failing_item_fails_only_its_own_request() -> None:
    def run(items: list[str]) -> np.ndarray:
        if "poison" in items:
            raise ValueError("cannot run this item")
        return np.array([[1.0, 0.0] if item == "a" else [0.0, 1.0] for item in items])

    async def scenario() -> tuple[list[Any], MicroBatcher]:
        batcher = MicroBatcher(run, max_batch=8, window_s=0.2, expecting=lambda: 3)
        batcher.start()
        results = await asyncio.gather(batcher.submit(["a"]), batcher.submit(["poison"]), batcher.submit(["b"]),
                                       return_exceptions=True)
        await batcher.stop()
        return results, batcher

    (first, poisoned, last), batcher = asyncio.run(scenario())
    assert first.tolist() == [[1.0, 0.0]] and last.tolist() == [[0.0, 1.0]]
    assert isinstance(poisoned, ValueError) and batcher.retried_batches == 1


def test_admission_answers_503_with_retry_after_when_full() -> None:
    admission = Admission(max_concurrent=2, max_bytes=3000, small_lane_bytes=1000)
    admission.enter()
    admission.enter()
    with pytest.raises(RequestError) as info:
        admission.enter()
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
    large, small = admission.ticket(5 * 2**20), admission.ticket(600)
    large.hold(2500)
    small.hold(600)  # a lane of its own: the large upload does not starve it
    with pytest.raises(RequestError, match="max-inflight-bytes"):
        admission.ticket(None).hold(600)  # no Content-Length: the large lane
    with pytest.raises(RequestError, match="body bytes"):
        admission.ticket(500).hold(500)
    admission.release(large)
    admission.ticket(None).hold(2900)  # what the first held is free again
    admission.leave()
    admission.leave()
    assert admission.requests == 0 and admission.refused == 3


def test_heavy_decodes_get_a_bounded_share_of_the_cpu() -> None:
    heavy = HeavyDecodes(share=0.5, burst=0.2)
    heavy.admit("a.png")
    heavy.charge(0.5)  # a half-second decode empties the bucket for about 0.6 s
    with pytest.raises(RequestError) as info:
        heavy.admit("b.png")
    assert info.value.status == 503 and heavy.refused == 1
    time.sleep(0.7)
    heavy.admit("c.png")


def test_a_full_service_refuses_at_once_and_serves_again(tiny_image_bundle: Path) -> None:
    app = create_app(ServeConfig(bundle=str(tiny_image_bundle), backend="torch", max_concurrent=1),
                     log=lambda _: None)
    predictor = app.state.predictor
    decode, gate = predictor.decode, threading.Event()

    def slow_decode(value: Any, name: str) -> Any:
        gate.wait(10)  # the first request holds the only admission until released
        return decode(value, name=name)

    predictor.decode = slow_decode
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        held = pool.submit(_post, client)
        time.sleep(0.5)
        started = time.perf_counter()
        refused = [_post(client) for _ in range(3)]
        assert time.perf_counter() - started < 5  # refused at once, not queued behind the slow one
        assert [r.status_code for r in refused] == [503] * 3
        assert refused[0].headers["retry-after"] == "1" and refused[0].json()["error"]["code"] == "busy"
        gate.set()
        assert held.result(30).status_code == 200
        assert _post(client).status_code == 200
        metrics = client.get("/metrics").text
    assert 'headstart_requests_total{route="/predict",status="503"} 3' in metrics
    assert 'headstart_requests_total{route="/predict",status="200"} 2' in metrics
    assert "headstart_refused_total 3" in metrics and "headstart_batch_size_count 2" in metrics
    assert 'headstart_request_seconds_bucket{route="/predict",le="+Inf"} 5' in metrics


def test_the_request_pixel_budget_refuses_before_decoding(tiny_image_bundle: Path) -> None:
    with _client(tiny_image_bundle, max_request_pixels=100_000) as client:
        image = _png(300, 200)  # 60,000 pixels
        files = [("files", ("a.png", image, "image/png")), ("files", ("b.png", image, "image/png"))]
        response = client.post("/predict", files=files)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_many_pixels"
        assert client.post("/predict", files=files[:1]).status_code == 200
