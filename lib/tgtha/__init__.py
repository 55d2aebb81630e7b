"""tgtha: Pacemaker OCF resource agents for HA iSCSI targets on tgt."""
