"""Shipping a model: export it (ONNX / TorchScript, checked against torch) and serve it over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from headstart.cli.common import app, console, fail, split_list
from headstart.errors import HeadstartError, ParameterError

__all__ = ["export", "serve"]


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    out: Annotated[Path, typer.Option(help="Folder for the exported model and its headstart-export.json sidecar.")],
    format: Annotated[str, typer.Option(help="onnx or torchscript.")] = "onnx",
    data: Annotated[Optional[Path], typer.Option(help="Real inputs for the parity check and the int8 accuracy (default: the validation split recorded in the model).")] = None,
    quantize: Annotated[bool, typer.Option("--quantize", help="Also write an int8 dynamically quantised model.int8.onnx; reports its accuracy change and speed-up.")] = False,
) -> None:
    """Export a model to ONNX or TorchScript; fails unless it matches torch on real inputs (max |dp| <= 1e-4, same top-1)."""
    from headstart.deploy.export import export_bundle

    try:
        with console.status(f"Exporting {model} to {format} and checking it against torch..."):
            sidecar = export_bundle(model, out, format=format, data=data, quantize=quantize)
    except HeadstartError as error:
        fail(error)
    parity = sidecar["parity"]
    console.print(f"Wrote {out / sidecar['file']} and {out / 'headstart-export.json'}", highlight=False)
    if sidecar["task"] in ("segmentation", "detection"):
        figures = (f"max |difference| of pixel probabilities {parity['max_abs_diff']:.2e}, pixel agreement"
                   f" {parity['pixel_agreement']:.5f}" if sidecar["task"] == "segmentation" else
                   f"{parity['n_boxes']} boxes, max box difference {parity['max_box_diff_px']:.2e} px, max score"
                   f" difference {parity['max_score_diff']:.2e}")
        console.print(f"Parity with torch on {parity['n_inputs']} real images ({parity['inputs']}): {figures}",
                      highlight=False)
        return
    console.print(f"Parity with torch on {parity['n_inputs']} real inputs ({parity['inputs']}): max |difference|"
                  f" {parity['max_abs_diff']:.2e} (allowed {parity['max_allowed']:g}), top-1 agreement"
                  f" {parity['top1_agreement']:.3f}", highlight=False)
    quantized = sidecar.get("quantized")
    if quantized:
        change = quantized.get("accuracy_change")
        accuracy = (f"accuracy {quantized['float_accuracy']:.4f} -> {quantized['int8_accuracy']:.4f}"
                    f" ({change:+.4f}) on {quantized['n_validation']} validation inputs" if change is not None
                    else quantized.get("note", ""))
        console.print(f"int8 ({', '.join(quantized['ops']) if isinstance(quantized['ops'], list) else quantized['ops']}):"
                      f" {accuracy}; batch speed x{quantized['batch_speedup']}, single-input latency"
                      f" x{quantized['single_speedup']}; {quantized['size_mb']['float']} MB -> "
                      f"{quantized['size_mb']['int8']} MB", highlight=False)
        if change is not None and change < -0.01:
            console.print(f"[yellow]Note:[/yellow] int8 lost {-100 * change:.1f} points of validation accuracy; keep"
                          " model.onnx unless size matters more.")
        if quantized["batch_speedup"] < 1.0:
            console.print("[yellow]Note:[/yellow] the int8 model is slower than the float one on this CPU (dynamic"
                          " int8 convolutions have no fast kernels in ONNX Runtime); keep model.onnx for speed.")


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="Model folder (e.g. runs/NAME/model).")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each holds the model).")] = 1,
    backend: Annotated[str, typer.Option(help="auto (ONNX Runtime when its export passes the parity check), onnxruntime or torch.")] = "auto",
    data: Annotated[Optional[Path], typer.Option(help="Real inputs for the ONNX parity check when the model records no validation split.")] = None,
    max_upload_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 20 * 2**20,
    max_image_pixels: Annotated[int, typer.Option(help="Largest image accepted, in pixels (width x height).")] = 40_000_000,
    max_items: Annotated[int, typer.Option(help="Most inputs in one request.")] = 64,
    max_text_chars: Annotated[int, typer.Option(help="Longest text accepted.")] = 20_000,
    request_timeout: Annotated[float, typer.Option(help="Seconds allowed for reading a request and for its prediction.")] = 30.0,
    max_batch: Annotated[int, typer.Option(help="Most inputs in one forward pass (micro-batching).")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="How long a batch waits for requests still being decoded.")] = 4.0,
    top_k: Annotated[int, typer.Option(help="Labels returned per input unless the request asks (?top_k=).")] = 5,
    threads: Annotated[Optional[int], typer.Option(help="Inference threads (default: all cores).")] = None,
    log_embeddings: Annotated[int, typer.Option(help="Image models: keep the embeddings of the last N predicted images; GET /shift then reports their shift from the training data (0: off).")] = 0,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "warning",
    max_concurrent: Annotated[int, typer.Option(help="Prediction requests admitted at once; more get 503 with Retry-After.")] = 32,
    max_inflight_bytes: Annotated[int, typer.Option(help="Request bytes admitted requests may hold together; more: 503.")] = 128 * 2**20,
    max_request_pixels: Annotated[int, typer.Option(help="Image pixels decoded for one request, summed over its images (413 above).")] = 120_000_000,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File holding the API key every endpoint but /live and /ready then requires (Authorization: Bearer KEY). Or set HEADSTART_API_KEY.")] = None,
    allowed_hosts: Annotated[Optional[str], typer.Option(help="Host header values accepted, comma-separated ('*': any). Default: the names of --host.")] = None,
    cors_origins: Annotated[Optional[str], typer.Option(help="Browser origins allowed to call the service, comma-separated (default: none).")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="One line per request on stderr.")] = True,
    drain_seconds: Annotated[float, typer.Option(help="On shutdown, how long admitted requests may take to finish.")] = 10.0,
) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, /live, /ready, /metrics, /metadata, a web page at /,
    OpenAPI docs at /docs."""
    import os

    from headstart.deploy.serve import ServeConfig, run_server

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    config = ServeConfig(bundle=str(model), backend=backend, data=None if data is None else str(data),
                         max_upload_bytes=max_upload_bytes, max_image_pixels=max_image_pixels, max_items=max_items,
                         max_text_chars=max_text_chars, request_timeout=request_timeout, max_batch=max_batch,
                         batch_window_ms=batch_window_ms, top_k=top_k, threads=threads,
                         log_embeddings=log_embeddings, max_concurrent=max_concurrent,
                         max_inflight_bytes=max_inflight_bytes, max_request_pixels=max_request_pixels,
                         allowed_hosts=None if allowed_hosts is None else split_list(allowed_hosts),
                         cors_origins=[] if cors_origins is None else split_list(cors_origins),
                         drain_seconds=drain_seconds)
    try:
        if api_key_file is not None:
            try:
                config.api_key = api_key_file.read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ParameterError(f"--api-key-file {api_key_file} cannot be read ({error.strerror}).",
                                     fix="Pass a readable file holding the key on one line.") from None
        elif os.environ.get("HEADSTART_API_KEY"):
            config.api_key = os.environ["HEADSTART_API_KEY"].strip()
        run_server(config, host=host, port=port, workers=workers, log_level=log_level, access_log=access_log)
    except HeadstartError as error:
        fail(error)


