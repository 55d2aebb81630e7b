#!/bin/sh
# PID 1 of one boot of a lab node. Started by cluster.py inside the node's network
# namespace, in fresh mount/uts/ipc/pid namespaces: gives the node its own /run,
# /dev/shm and cluster state (nodes on one host collide on all of these), then
# becomes tini, so that killing PID 1 powers the whole node off at once.
#   nodeinit.sh NODE_NAME NODE_DIR SBIN_OVERLAY LIBEXEC_OVERLAY
set -e
name=$1 dir=$2 sbin=$3 libexec=$4
hostname "$name"
mount -t tmpfs -o mode=755,size=64m lab-run /run
mkdir -p /run/lock /run/crm /run/resource-agents /run/tgtd
chmod 1777 /run/lock
mount -t tmpfs -o mode=1777,size=256m lab-shm /dev/shm     # libqb IPC of corosync/pacemaker
mount -t tmpfs -o mode=1777,size=64m lab-vartmp /var/tmp
for path in etc/corosync var/lib/corosync var/lib/pacemaker var/lib/heartbeat \
            var/log/corosync var/log/pacemaker; do
    mount --bind "$dir/$(echo "$path" | tr / _)" "/$path"
done
mount --bind "$dir/hosts" /etc/hosts
# The lab's fence agent and `service` appear in /usr/sbin of this node only, and
# CTS's helpers (when CTS runs) in its /usr/lib/pacemaker.
mount -t overlay lab-sbin -o "lowerdir=$sbin:/usr/sbin" /usr/sbin
mount -t overlay lab-pcmk -o "lowerdir=$libexec:/usr/lib/pacemaker" /usr/lib/pacemaker
: > "$dir/booted"
exec /usr/bin/tini -s -- sleep infinity
