#!/bin/sh
# tgtha reference configuration, pcs: 2 nodes, 6 targets, one shared CHAP account.
# Run on one node:  sh tgtha-reference.pcs.sh   (or with PCS="pcs -f cib.xml" on a CIB file,
# then pcs cluster cib-push cib.xml). Replace the addresses, IQNs, device paths and the
# password; add your fencing before you enable the cluster: a failed stop fences a node.
# The same configuration for crmsh: tgtha-reference.crm.
set -e
PCS=${PCS:-pcs}

$PCS property set stonith-enabled=true node-action-limit=8
$PCS resource defaults update resource-stickiness=200
$PCS resource op defaults update record-pending=false

# Fencing: one device per node, e.g.
#   $PCS stonith create st_node1 fence_ipmilan ip=192.0.2.201 username=admin password=... pcmk_host_list=node1

# tgtd on every node, monitored every second: a dead tgtd takes all its targets.
$PCS resource create p_tgtd ocf:tgtha:tgtd op monitor interval=5s timeout=10s clone interleave=true

# The one account every target accepts.
$PCS resource create p_chap ocf:tgtha:tgtuser username=initiators password=CHANGE-ME-0123 \
    op monitor interval=10s clone interleave=true
$PCS constraint order start p_tgtd-clone then start p_chap-clone
$PCS constraint colocation add p_chap-clone with p_tgtd-clone INFINITY

for n in 1 2 3 4 5 6; do
    vip=192.0.2.$((10 + n))
    iqn=iqn.2026-12.com.example:storage.t$n
    if [ $((n % 2)) = 1 ]; then node=node1; else node=node2; fi
    # block -> (VIP, target -> LUNs) -> unblock; initiators see a pause, never an error.
    # method=reset direction=in: for open-iscsi initiators (the block closes tgtd's connections,
    # the resets reach them at once; after a power-off, the VIP's tickles and the block's resets
    # tell them as soon as the address is up); QEMU's libiscsi: method=silent direction=both,
    # and no tickle_dir on the VIP (README).
    $PCS resource create p_block_t$n ocf:tgtha:portblock ip=$vip portno=3260 protocol=tcp \
        action=block method=reset direction=in
    $PCS resource create p_vip_t$n ocf:tgtha:IPaddr2 ip=$vip cidr_netmask=24 nic=eth0 \
        tickle_dir=/srv/tgtha/tickle op monitor interval=10s
    $PCS resource create p_target_t$n ocf:tgtha:iSCSITarget iqn=$iqn portals=$vip:3260 \
        allowed_initiators=198.51.100.0/24 incoming_username=initiators op monitor interval=10s
    $PCS resource create p_lun_t${n}_1 ocf:tgtha:iSCSILogicalUnit target_iqn=$iqn lun=1 \
        path=/dev/drbd/by-res/t$n/0 op monitor interval=10s
    $PCS resource create p_lun_t${n}_2 ocf:tgtha:iSCSILogicalUnit target_iqn=$iqn lun=2 \
        path=/dev/drbd/by-res/t$n/1 op monitor interval=10s
    $PCS resource create p_unblock_t$n ocf:tgtha:portblock ip=$vip portno=3260 protocol=tcp \
        action=unblock method=reset direction=in tickle_dir=/srv/tgtha/tickle
    for member in p_vip_t$n p_target_t$n p_lun_t${n}_1 p_lun_t${n}_2 p_unblock_t$n; do
        $PCS constraint colocation add $member with p_block_t$n INFINITY
    done
    $PCS constraint order set p_block_t$n set p_target_t$n \
        set p_lun_t${n}_1 p_lun_t${n}_2 sequential=false set p_unblock_t$n
    $PCS constraint order set p_block_t$n set p_vip_t$n set p_unblock_t$n
    $PCS constraint order start p_chap-clone then start p_target_t$n
    $PCS constraint colocation add p_block_t$n with p_chap-clone INFINITY
    $PCS constraint location p_block_t$n prefers $node=100
done

# With DRBD: colocate each p_block_tN with its DRBD resource's promoted instance and
# order the promotion first. tickle_dir must be a directory both nodes see; without
# it, leave it out and initiators reconnect on their own timers.
