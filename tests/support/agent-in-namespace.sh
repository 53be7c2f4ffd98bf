#!/bin/sh
# Runs `cove agent` as PID 1 of new PID and mount namespaces, the way it runs in a sandbox,
# with a test account database (root, and user with uid 1000 and home /home/user), and an
# empty /home and /tmp on tmpfs (WORK_DIR, where the agent's socket goes, and the directory
# of COVE_BINARY are bound back into the new /tmp when they lie under it). Nothing of it outlives the agent: when this script's
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
    # A /tmp of its own; the work directory and the binary, when they lie under /tmp, are
    # bound back into it at the same paths.
    mkdir /home/.host-tmp
    mount --bind /tmp /home/.host-tmp
    mount -t tmpfs -o mode=1777 cove-tmp /tmp
    for keep in "$1" "$(dirname "$2")"; do
      case $keep in
        /tmp/*)
          mkdir -p "$keep"
          mount --bind "/home/.host-tmp/${keep#/tmp/}" "$keep"
          ;;
      esac
    done
    umount /home/.host-tmp
    rmdir /home/.host-tmp
    cove=$2
    shift 2
    exec "$cove" agent "$@"
  ' agent-in-namespace "$work" "$cove" "$@"
