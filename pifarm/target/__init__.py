"""pifarm target: the aggregator's NVMe/TCP export of model volumes.

    configfs.py        object model of /sys/kernel/config/nvmet (Node handles, Mode, Backend seam)
    spec.py            desired / observed state as plain values, `observe`, `build_spec`, `Scope`
    reconciler.py      pure `diff(desired, observed, scope) -> [Op]`, `apply`
    nsids.py           stable namespace ids (<data>/target/nsids.json)
    hosts.py           host allow list + DH-HMAC-CHAP secrets (<data>/target/hosts.json)
    dhchap.py          DHHC-1 secrets as `nvme gen-dhchap-key` prints them
    nvmetcli_json.py   save/restore in nvmetcli's JSON format
    volumes.py         one volume file per served version (`VolumeBuilder(registry, dir).sync()`)
    exporter.py        KernelTarget: settings + data dir -> plan / apply / status / clear
    health.py          drive SMART health through pySMART
    settings.py        [target] section
    userspace/         the userspace NVMe/TCP target (its own engineer)

The in-memory configfs the tests use is a test double, pifarm.testing.fake_configfs; this package
never imports it. The node side never imports this package; the volume format it reads is
pifarm.volume.format.
"""
