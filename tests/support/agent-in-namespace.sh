#!/bin/sh
# Runs `cove agent` as PID 1 of new PID and mount namespaces, the way it runs in a sandbox,
# with a test account database (root, and user with uid 1000 and home /home/user), and an
# empty /home and /tmp on tmpfs (WORK_DIR, where the agent's socket goes, is bound back into
# the new /tmp when it lies under it). Nothing of it outlives the agent: when this script's
# process is killed, unshare kills the agent, and the namespaces and their mounts, with
# whatever the tests wrote to /home and /tmp, go with it.
#
# usage: agent-in-namespace.sh COVE_BINARY WORK_DIR [cove agent arguments...]
set -eu
cove=$1
work=$2
shift 2

cat > "$work/passwd" <<'ACCOUNTS'
root:x:0:0:root:/root:/bin/bash
user:x:1000:1000::/home/user:/bin/bash
ACCOUNTS
cat > "$work/group" <<'GROUPS'
root:x:0:
user:x:1000:
GROUPS

exec unshare --pid --fork --kill-child --mount --propagation private --mount-proc \
  sh -c '
    set -e
    mount -t tmpfs -o mode=755 cove-home /home
    mkdir -p /home/user
    chown 1000:1000 /home/user
    mount --bind "$1/passwd" /etc/passwd
    mount --bind "$1/group" /etc/group
    mkdir /home/.work
    mount --bind "$1" /home/.work
    mount -t tmpfs -o mode=1777 cove-tmp /tmp
    mkdir -p "$1"
    mount --bind /home/.work "$1"
    umount /home/.work
    rmdir /home/.work
    cove=$2
    shift 2
    exec "$cove" agent "$@"
  ' agent-in-namespace "$work" "$cove" "$@"
