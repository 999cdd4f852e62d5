"""The HTTP prediction service: FastAPI + uvicorn around a :class:`headstart.deploy.predictor.Predictor`.

One idea per file:

- :mod:`~headstart.deploy.serve.config` - :class:`ServeConfig`, the service's options (the CLI's, one to one);
- :mod:`~headstart.deploy.serve.requests` - reading a request: body limits, multipart / JSON / raw parsing, decoding;
- :mod:`~headstart.deploy.serve.batching` - :class:`MicroBatcher`, items of concurrent requests in shared batches;
- :mod:`~headstart.deploy.serve.app` - the FastAPI app, its routes and error answers, and :func:`run_server`.

``app_from_environment`` is importable from here because uvicorn's worker processes load the app by the import
string ``"headstart.deploy.serve:app_from_environment"``. Loads bundles and the deploy stage only, never training.
"""

from headstart.deploy.serve.app import (
    CONFIG_ENV,
    NoDelayHttpProtocol,
    app_from_environment,
    create_app,
    prepare_backend,
    run_server,
)
from headstart.deploy.serve.batching import MicroBatcher
from headstart.deploy.serve.config import BACKENDS, MAX_LOGGED_EMBEDDINGS, ServeConfig
from headstart.deploy.serve.requests import RequestError

__all__ = [
    "ServeConfig",
    "MicroBatcher",
    "create_app",
    "prepare_backend",
    "run_server",
    "BACKENDS",
    "MAX_LOGGED_EMBEDDINGS",
    "CONFIG_ENV",
    "RequestError",
    "NoDelayHttpProtocol",
    "app_from_environment",
]
