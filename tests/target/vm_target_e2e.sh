#!/bin/bash
# The issue-5 real-kernel walk-through, for the VM tier (tests/vm/harness.py: run as root in the VM,
# cwd = project root, $PIFARM_VM_SCRATCH = ext4 scratch disk, $PIFARM_VM_KERNEL = bookworm|trixie).
# 1. `pifarm target apply` exports a published version; `nvme connect` (DH-HMAC-CHAP on trixie);
#    the namespace with the expected UUID appears; the volume read from the block device verifies.
# 2. a second publish + apply adds a namespace while the first connection stays live and readable.
# 3. a disallowed host NQN is refused; on trixie a wrong DH-HMAC-CHAP key is refused.
# 4. save -> clear -> restore gives back the same tree. Prints E2E-OK and exits 0 on success.
# Passed on Debian 13 6.12.117 (421 s of TCG on a loaded 2-core box).
set -eu
S=$PIFARM_VM_SCRATCH
SUB=nqn.2014-08.org.pifarm:aggregator:vm
HOST=nqn.2014-08.org.pifarm:node:n1
HOSTID=5b1a2c3d-0000-4000-8000-000000000001
mkdir -p $S/src
python - <<PY
import os
from pifarm.registry.service import Registry
open("$S/src/m.bin","wb").write(os.urandom(300000))
with Registry.open("$S/agg") as r: r.publish("$S/src/m.bin","mobilenet",format="raw")
PY
cat > $S/agg.toml <<T
[registry]
data_dir = "$S/agg"
[target]
addresses = ["127.0.0.1"]
subsystem_nqn = "$SUB"
T
AUTH=""
if [ "$PIFARM_VM_KERNEL" = trixie ]; then
  OUT=$(pifarm target allow-host $HOST --dhchap --config $S/agg.toml)
  echo "$OUT" | sed 's/DHHC-1:[^ ]*/<key>/'
  KEY=$(echo "$OUT" | grep -o 'DHHC-1:[^ ]*' | head -1)
  AUTH="--dhchap-secret=$KEY"
else
  pifarm target allow-host $HOST --config $S/agg.toml
fi
pifarm target status --config $S/agg.toml
nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $SUB --hostnqn=$HOST --hostid=$HOSTID $AUTH
python - <<PY
import glob, time, re
from pifarm.volume.format import VolumeReader
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.manifest import namespace_uuid
def find(uuid):
    for _ in range(100):
        for p in glob.glob("/sys/block/nvme*n*/uuid"):
            if re.fullmatch(r"nvme[0-9]+n[0-9]+", p.split("/")[3]) and open(p).read().strip() == uuid:
                return "/dev/" + p.split("/")[3]
        time.sleep(0.1)
    raise SystemExit(f"no block device with uuid {uuid}")
from pifarm.registry.service import Registry
with Registry.open("$S/agg", readonly=True) as r:
    sv = r.served_versions()
dev = find(str(namespace_uuid(sv[0].manifest_digest)))
with VolumeReader.from_file(dev) as v:
    TrustedKeys.from_files(["$S/agg/keys/signing.pub"]).verify(v.manifest_document, "manifest")
    for _p, d, _o, _s in v.entries: v.verify_blob(d)
print("VERIFIED v1 from", dev)
PY
python - <<PY
import os
from pifarm.registry.service import Registry
open("$S/src/m.bin","wb").write(os.urandom(200000))
with Registry.open("$S/agg") as r: r.publish("$S/src/m.bin","mobilenet",format="raw")
PY
pifarm target plan --config $S/agg.toml
pifarm target apply --config $S/agg.toml
python - <<PY
import glob, time, re
from pifarm.volume.format import VolumeReader
from pifarm.registry.service import Registry
from pifarm.signed.manifest import namespace_uuid
with Registry.open("$S/agg", readonly=True) as r:
    svs = r.served_versions()
want = {str(namespace_uuid(s.manifest_digest)) for s in svs}
for _ in range(100):
    have = {open(p).read().strip(): "/dev/" + p.split("/")[3] for p in glob.glob("/sys/block/nvme*n*/uuid")
            if re.fullmatch(r"nvme[0-9]+n[0-9]+", p.split("/")[3])}
    if want <= set(have): break
    time.sleep(0.1)
else:
    raise SystemExit(f"namespaces {want - set(have)} did not appear on the connected host")
for u in want:
    with VolumeReader.from_file(have[u]) as v:
        for _p, d, _o, _s in v.entries: v.verify_blob(d)
print("VERIFIED both versions over the same connection")
PY
cat /sys/class/nvme/nvme*/state
if nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $SUB --hostnqn=nqn.2014-08.org.pifarm:node:intruder --hostid=5b1a2c3d-0000-4000-8000-000000000002 -D 2>&1; then echo "INTRUDER CONNECTED"; exit 1; else echo "intruder refused"; fi
if [ "$PIFARM_VM_KERNEL" = trixie ]; then
  nvme disconnect -n $SUB
  BAD=$(python -c "from pifarm.target.dhchap import gen_dhchap_key; print(gen_dhchap_key('$HOST', 1))")
  if nvme connect -t tcp -a 127.0.0.1 -s 4420 -n $SUB --hostnqn=$HOST --hostid=$HOSTID --dhchap-secret=$BAD 2>&1; then echo "WRONG KEY CONNECTED"; exit 1; else echo "wrong key refused"; fi
fi
pifarm target save $S/saved.json --config $S/agg.toml
nvme disconnect-all || true
pifarm target clear --config $S/agg.toml
pifarm target restore $S/saved.json --config $S/agg.toml
pifarm target save $S/again.json --config $S/agg.toml
python -c "import json; a=json.load(open('$S/saved.json')); b=json.load(open('$S/again.json')); assert a==b, (a,b); print('SAVE/CLEAR/RESTORE identical')"
echo E2E-OK
