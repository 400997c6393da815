"""Read a TFLite model's tensor signature at publish time (the `tflite` flatbuffer schema).

Only the flatbuffer is parsed, no runtime is loaded, so this works on the aggregator whatever
its architecture. A file must carry the `TFL3` identifier to be published as `tflite`.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import tflite

from pifarm.errors import BadContent, UsageError
from pifarm.signed.manifest import TensorSpec

IDENTIFIER = b"TFL3"
_DTYPES = {v: k.lower() for k, v in vars(tflite.TensorType).items() if not k.startswith("_") and isinstance(v, int)}


def is_tflite(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return len(head) == 8 and head[4:8] == IDENTIFIER


def _tensors(graph, indices) -> tuple[TensorSpec, ...]:
    out = []
    for i in indices:
        t = graph.Tensors(i)
        shape = tuple(int(x) for x in (t.ShapeAsNumpy() if t.ShapeLength() else ()))
        name = (t.Name() or b"").decode("utf-8", "replace")
        out.append(TensorSpec(name, shape, _DTYPES.get(t.Type(), f"type{t.Type()}")))
    return tuple(out)


def read_signature(path: Path, label: str | None = None) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the model's first subgraph; UsageError if it is not a TFLite model.

    `label` names the file in messages (the published relative path rather than a store path)."""
    path = Path(path)
    name = label or str(path)
    if not is_tflite(path):
        raise BadContent(f"{name} is not a TFLite model (no 'TFL3' flatbuffer identifier); publish it with --format raw")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            model = tflite.Model.GetRootAsModel(buf, 0)
            if model.SubgraphsLength() < 1:
                raise BadContent(f"{name}: TFLite model has no subgraph")
            g = model.Subgraphs(0)
            inputs = _tensors(g, [g.Inputs(i) for i in range(g.InputsLength())])
            outputs = _tensors(g, [g.Outputs(i) for i in range(g.OutputsLength())])
        except UsageError:
            raise
        except Exception as e:  # a truncated or hostile flatbuffer fails in many ways
            raise BadContent(f"{name}: damaged TFLite flatbuffer ({type(e).__name__}: {e})") from e
    return inputs, outputs
