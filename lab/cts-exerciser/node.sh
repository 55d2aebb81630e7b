# Sourced by the exerciser's ssh and scp: where a lab node is and whether it is powered.
# LAB_RUN_DIR (the lab's run directory) and LAB_PREFIX come from the lab, through CTS.
: "${LAB_RUN_DIR:?} ${LAB_PREFIX:?}"

is_node() { grep -qx -- "$1" "$LAB_RUN_DIR/fence/nodes" 2>/dev/null; }
node_pid1() { cat "$LAB_RUN_DIR/$1/pid1" 2>/dev/null; }
node_power() { cat "$LAB_RUN_DIR/fence/power.$1" 2>/dev/null; }

node_alive() {  # its PID 1 is the lab's tini, inside the node's network namespace
    local pid
    pid=$(node_pid1 "$1") && [ -n "$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = tini ] || return 1
    [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = \
      "$(stat -L -c %i "/run/netns/$LAB_PREFIX-n${1#node}" 2>/dev/null)" ]
}

wait_while_rebooting() {  # up to 10 s, as ssh's ConnectTimeout=10 that CTS passes
    local i
    for i in $(seq 1 50); do
        node_alive "$1" && return 0
        [ "$(node_power "$1")" = rebooting ] || return 1
        sleep 0.2
    done
    return 1
}

in_node() {  # in_node NODE CMD...: CMD in every namespace of NODE, with a login's clean environment
    local node=$1
    shift
    nsenter -t "$(node_pid1 "$node")" -m -u -i -n -p --wd=/root -- \
        env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
