#!/bin/sh
# PID 1 of a lab guest (busybox sh), built into the initramfs by lab/guest_image.py.
# Kernel command line: lab_name=NAME lab_ip=ADDRESS/PREFIX [lab_ip2=ADDRESS/PREFIX, on eth1]
# ttyS0: kernel console (the host keeps it as the guest's kernel log)
# ttyS1: command channel: host "RUN <id> <base64 script>", guest "DONE <id> <rc> <base64 output>"
# ttyS2: the writers' record lines (lab/guest/writer.c)
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run/lock/iscsi /mnt
mount -t devpts pts /dev/pts
mount -t tmpfs tmp /tmp
NAME=guest
ADDRESS=
ADDRESS2=
for word in $(cat /proc/cmdline); do
    case $word in
        lab_name=*) NAME=${word#lab_name=} ;;
        lab_ip=*) ADDRESS=${word#lab_ip=} ;;
        lab_ip2=*) ADDRESS2=${word#lab_ip2=} ;;
    esac
done
hostname "$NAME"
for module in virtio_pci virtio_net; do modprobe $module; done
ip link set lo up
ip link set eth0 up
[ -n "$ADDRESS" ] && ip addr add "$ADDRESS" dev eth0
if [ -n "$ADDRESS2" ]; then
    ip link set eth1 up
    ip addr add "$ADDRESS2" dev eth1
fi
for port in /dev/ttyS1 /dev/ttyS2; do stty -F $port raw -echo 115200; done

serve() {
    exec 0</dev/ttyS1 1>/dev/ttyS1 2>&1
    echo "READY $NAME"
    while read -r verb id argument; do
        [ "$verb" = RUN ] || continue
        echo "$argument" | base64 -d > /tmp/command.sh
        sh /tmp/command.sh </dev/null >/tmp/command.out 2>&1
        echo "DONE $id $? $(base64 -w 0 /tmp/command.out)"
    done
}
serve &
while true; do wait; sleep 3600; done
