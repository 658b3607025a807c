#!/bin/sh
# PID 1 of the VM test tier's guest (scripts/vm-test.sh). Stage 1 copies the
# initramfs into a tmpfs and switch_roots into it (pivot_root, which every
# container start uses, refuses the initramfs itself). Stage 2 mounts what a
# systemd host has (cgroup2 alone at /sys/fs/cgroup, every controller enabled
# down to system.slice), loads Berth's kernel modules, runs /driver.sh and
# prints its verdict as a marker line on the serial console, then powers off.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ ! -e /.stage2 ]; then
  mkdir -p /newroot
  mount -t tmpfs -o mode=755 tmpfs /newroot
  for f in /*; do
    [ "$f" = /newroot ] || cp -a "$f" /newroot/
  done
  touch /newroot/.stage2
  exec switch_root /newroot /init
fi
mkdir -p /proc /sys /dev /tmp /run /var/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# What systemd mounts on a pure v2 host, and the controllers it delegates.
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control
done
mkdir -p /sys/fs/cgroup/system.slice
for c in $(cat /sys/fs/cgroup/system.slice/cgroup.controllers); do
  echo "+$c" > /sys/fs/cgroup/system.slice/cgroup.subtree_control
done
hostname berth-vm
ip link set lo up
for m in $(cat /etc/berth-vm/modules); do
  modprobe "$m" || echo "vm-init: modprobe $m failed"
done
# The agent's state dir: ext4 on a loop device over a sparse file in tmpfs
# (what a user's host has: a filesystem that takes idmapped mounts).
truncate -s 1G /tmp/state.img
mkfs.ext4 -q -F /tmp/state.img
mkdir -p /var/lib/berth
mount -t ext4 -o loop /tmp/state.img /var/lib/berth || echo "vm-init: mounting the ext4 state dir failed"
echo "vm-init: kernel $(uname -r), booted in $(cut -d' ' -f1 /proc/uptime)s, $(nproc) CPUs, cgroup controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
timeout "$(cat /etc/berth-vm/timeout)" sh /driver.sh
rc=$?
echo "BERTH-VM-RESULT rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
