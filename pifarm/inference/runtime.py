"""TFLite runtimes: ai-edge-litert by default, tflite-runtime when configured or the only one.

Both expose the same `Interpreter` / `load_delegate` API, so the rest of the server never knows
which one it got. A delegate that fails to load is not fatal: the model runs on the CPU and the
caller gets the reason to show in /health and count in /metrics.

This module imports only numpy and the runtime, so it also runs in the small tflite-runtime venv
(numpy<2) that the `tflite_runtime` test tier builds.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Mapping

from pifarm.errors import ConfigError, InferenceError

log = logging.getLogger(__name__)

# Name -> module holding Interpreter/load_delegate, in the order "auto" tries them.
MODULES = {"ai-edge-litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}


@dataclass(frozen=True)
class Runtime:
    name: str
    module: ModuleType

    @property
    def version(self) -> str:
        top = importlib.import_module(self.module.__name__.split(".")[0])
        return str(getattr(top, "__version__", "unknown"))


def available() -> list[str]:
    out = []
    for name, mod in MODULES.items():
        try:
            importlib.import_module(mod)
        except ImportError:
            continue
        out.append(name)
    return out


def resolve(name: str = "auto") -> Runtime:
    """The runtime called `name`, or for "auto" the first one installed."""
    if name != "auto" and name not in MODULES:
        raise ConfigError(f"unknown TFLite runtime {name!r}; choose auto, {', '.join(MODULES)}")
    candidates = list(MODULES) if name == "auto" else [name]
    errors = []
    for cand in candidates:
        try:
            return Runtime(cand, importlib.import_module(MODULES[cand]))
        except ImportError as e:
            errors.append(f"{cand}: {e}")
    hint = "pip install ai-edge-litert (or tflite-runtime with numpy<2)"
    raise ConfigError(f"no TFLite runtime available ({'; '.join(errors)}); {hint}")


@dataclass(frozen=True)
class DelegateSpec:
    library: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Built:
    """An allocated interpreter plus what happened to its delegate (None when all went well)."""

    interpreter: Any
    delegate_warning: str | None = None


def build_interpreter(runtime: Runtime, model_content: bytes, num_threads: int = 1,
                      delegate: DelegateSpec | None = None) -> Built:
    """Create and allocate an interpreter over already-verified bytes.

    A delegate that cannot be loaded or applied falls back to the CPU with a warning; a model
    the runtime itself refuses raises InferenceError.
    """
    warning = None
    delegates = []
    if delegate is not None:
        try:
            delegates.append(runtime.module.load_delegate(delegate.library, dict(delegate.options) or None))
        except (ValueError, OSError, RuntimeError) as e:
            warning = f"delegate {delegate.library} failed to load ({_one_line(e)}); running on CPU"
            log.warning("%s", warning)
    try:
        interp = runtime.module.Interpreter(model_content=model_content, num_threads=num_threads,
                                            experimental_delegates=delegates or None)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        if not delegates:
            raise InferenceError(f"{runtime.name} refused the model: {_one_line(e)}") from e
        # The delegate loaded but could not take the graph: retry on the CPU, never crash.
        warning = f"delegate {delegate.library} could not run the model ({_one_line(e)}); running on CPU"
        log.warning("%s", warning)
        return Built(build_interpreter(runtime, model_content, num_threads).interpreter, warning)
    return Built(interp, warning)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or type(e).__name__
