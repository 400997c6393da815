"""pifarm inference: TFLite models from the verified node cache, served over KServe V2.

    create_app(settings, cache_root, state_dir) -> FastAPI    (server.py)
    serve(settings, cache_root, state_dir, host, port)        (server.py, blocking uvicorn)
    InferenceSettings, ModelSettings                          (settings.py)

Names are imported lazily so `pifarm.inference.runtime` stays importable on its own (the
tflite-runtime test venv has numpy and the runtime, nothing else). Never imports network code.
"""

from __future__ import annotations

import importlib

__all__ = ["create_app", "serve", "InferenceSettings", "ModelSettings"]

_WHERE = {"create_app": "server", "serve": "server", "InferenceSettings": "settings", "ModelSettings": "settings"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
