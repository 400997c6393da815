#!/bin/busybox sh
# /init of the vm tier's initramfs (busybox only). It loads the nvme/nvmet modules, mounts the
# host's / read-only over 9p under a tmpfs overlay (so the chroot is writable and nothing leaks
# back to the host), then serves scripts the host drops into the session share:
#   q/N.sh appears  ->  run it chrooted  ->  q/N.out, then q/N.rc (renamed into place last)
# `stop` in the share powers the VM off. Between scripts every process but this one is killed,
# NVMe controllers are deleted and nvmet's configfs is torn down in the order the kernel needs,
# so each script starts from the same clean kernel state.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "pifarm-vm: $*"; }
die() { say "FATAL: $*"; [ -d /results ] && echo "$*" > /results/fatal; sync; poweroff -f; }

for m in $(cat /modules.order); do
  insmod "/lib/modules/$m" 2>/tmp/insmod.err || say "insmod $m: $(cat /tmp/insmod.err)"
done
mount -t configfs configfs /sys/kernel/config || die "cannot mount configfs"
ip link set lo up || die "cannot bring lo up"

mkdir -p /results /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none results /results \
  || die "cannot mount the results share"
[ -f /results/session.env ] || die "no session.env in the results share"
. /results/session.env   # RESULTS (host path of the share), SCRATCH

# The host root changes only under the share (uncached, bind-mounted below), so the rest of it
# can be cached: python imports from the venv get much cheaper after the first script.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /lower \
  || die "cannot mount the host root"
mount -t tmpfs -o size=60% tmpfs /upper || die "cannot mount tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot \
  || die "cannot mount the overlay root"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t configfs configfs /newroot/sys/kernel/config
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts && mount -t tmpfs tmpfs /newroot/dev/shm
mkdir -p "/newroot$RESULTS" && mount --bind /results "/newroot$RESULTS" || die "cannot bind the share"
if [ -n "$SCRATCH" ] && [ -b /dev/vda ]; then
  mkdir -p "/newroot$SCRATCH" && mount -t ext4 /dev/vda "/newroot$SCRATCH" || die "cannot mount scratch"
fi
mkdir -p /newroot/etc/nvme

C=/sys/kernel/config/nvmet
reset_kernel() {
  kill -KILL -1 2>/dev/null   # PID 1 is spared: every process a script left behind goes
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c/delete_controller" ] && [ "$(cat "$c/transport" 2>/dev/null)" != pcie ] \
      && echo 1 > "$c/delete_controller" 2>/dev/null
  done
  for l in $C/ports/*/subsystems/*; do [ -L "$l" ] && rm -f "$l"; done
  for r in $C/ports/*/referrals/*; do [ -d "$r" ] && rmdir "$r"; done
  for l in $C/subsystems/*/allowed_hosts/*; do [ -L "$l" ] && rm -f "$l"; done
  for ns in $C/subsystems/*/namespaces/*; do
    [ -d "$ns" ] || continue
    echo 0 > "$ns/enable" 2>/dev/null; rmdir "$ns"
  done
  for s in $C/subsystems/*; do [ -d "$s" ] && rmdir "$s"; done
  for a in $C/ports/*/ana_groups/*; do [ -d "$a" ] && [ "${a##*/}" != 1 ] && rmdir "$a"; done
  for p in $C/ports/*; do [ -d "$p" ] && rmdir "$p"; done
  for h in $C/hosts/*; do [ -d "$h" ] && rmdir "$h"; done
  rm -f /newroot/etc/nvme/hostnqn /newroot/etc/nvme/hostid
}

mkdir -p /results/q
echo "$(cut -d' ' -f1 /proc/uptime) $(uname -r)" > /results/.ready
mv /results/.ready /results/ready
job=0   # reset_kernel's loop variables are global too: keep their names apart
idle=0  # polls since the last script: poll fast right after one, slowly when idle (TCG CPU)
while [ ! -e /results/stop ]; do
  if [ -e "/results/q/$job.sh" ]; then
    idle=0
    reset_kernel
    chroot /newroot /bin/sh "$RESULTS/q/$job.sh" > "/results/q/$job.out" 2>&1 < /dev/null
    echo $? > "/results/q/$job.rc.tmp"
    mv "/results/q/$job.rc.tmp" "/results/q/$job.rc"
    job=$((job + 1))
  else
    idle=$((idle + 1))
    if [ $idle -lt 40 ]; then sleep 0.05; else sleep 0.3; fi
  fi
done
reset_kernel
sync
poweroff -f
