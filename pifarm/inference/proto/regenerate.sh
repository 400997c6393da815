#!/bin/sh
# Regenerate the checked-in gRPC modules from grpc_predict_v2.proto (`make proto`).
# Needs grpcio-tools (in the test extras). The generated modules are then edited in one way:
# they build their descriptors in a private pool instead of protobuf's default one, because the
# proto's package is `inference` (the wire name clients call) and Triton's own client stubs
# declare the same message names; sharing the default pool would make a process that imports
# both (a test, a proxy) fail with "duplicate symbol".
set -eu
cd "$(dirname "$0")/../../.."
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. pifarm/inference/proto/grpc_predict_v2.proto
out=pifarm/inference/proto/grpc_predict_v2_pb2.py
"$PY" - "$out" <<'PYEOF'
import sys
p = sys.argv[1]
src = open(p).read()
old = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
assert old in src, "protoc output changed: update regenerate.sh"
src = src.replace(old, "POOL = _descriptor_pool.DescriptorPool()  # private: see regenerate.sh\n"
                       "DESCRIPTOR = POOL.AddSerializedFile(")
open(p, "w").write(src)
PYEOF
echo "regenerated $out and ${out%_pb2.py}_pb2_grpc.py"
