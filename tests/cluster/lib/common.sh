# shellcheck shell=bash
# Shared by tests/cluster/up and tests/cluster/down: paths, logging, free-port probing and
# stopping the processes of the local control plane. Sourced, never executed.

cluster_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$(cd "$cluster_dir/../.." && pwd)
state="$root/.cluster"
bin="$state/bin"
pids="$state/pids"
# shellcheck disable=SC2034 # used by the scripts that source this file
logs="$state/logs"
# shellcheck disable=SC2034
pki="$state/pki"

# Start order; down stops them in reverse so clients go before the servers they talk to.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

say() { printf 'cluster: %s\n' "$*"; }
warn() { printf 'cluster: %s\n' "$*" >&2; }

# One `up` or `down` at a time per checkout: two parallel test runs calling `up` must not both
# decide to (re)start the cluster. The lock file lives beside .cluster/ state so down keeps it.
take_lock() {
  mkdir -p "$state"
  exec 9>"$state/.lock"
  if ! flock -w 120 9; then
    warn "another tests/cluster/up or down is still running (lock $state/.lock held for 120s)"
    exit 1
  fi
}

# The pid in .cluster/pids/<component>.pid, printed only while it is alive AND is still our
# binary: after a reboot or a long pause the number may belong to an unrelated process.
live_pid() {
  local file="$pids/$1.pid" pid exe
  [ -f "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  # A binary rebuilt while running shows as "<path> (deleted)".
  case "$exe" in
    "$bin/$1" | "$bin/$1 (deleted)") echo "$pid" ;;
    *) return 1 ;;
  esac
}

# Every process whose executable is one of this checkout's control-plane binaries, whether or not
# a pid file still names it (a pid file can be lost when .cluster/ is removed by hand).
# Only exact paths under this checkout's .cluster/bin match, so other checkouts are untouched.
stray_pids() {
  local p exe c
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    for c in "${components[@]}"; do
      if [ "$exe" = "$bin/$c" ] || [ "$exe" = "$bin/$c (deleted)" ]; then
        echo "${p#/proc/}"
      fi
    done
  done
}

# Sets `alive` to those of the given pids that still run (zombies count as gone).
still_alive() {
  local p
  alive=()
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]; then
      alive+=("$p")
    fi
  done
}

# TERM, then KILL whatever is still there after a grace period. Takes pids.
stop_pids() {
  local alive i
  [ "$#" -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  # Up to ~5s for a clean exit (etcd and the apiserver usually need well under a second).
  for i in $(seq 1 50); do
    still_alive "$@"
    [ "${#alive[@]}" -eq 0 ] && return 0
    [ "$i" -eq 50 ] || sleep 0.1
  done
  warn "still running after TERM, killing: ${alive[*]}"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  for i in $(seq 1 30); do
    still_alive "$@"
    [ "${#alive[@]}" -eq 0 ] && return 0
    sleep 0.1
  done
  warn "could not stop: ${alive[*]}"
  return 1
}

# Stops every component (pid files first, in reverse start order, then any stray process of
# our binaries) and removes their pid files.
stop_all() {
  local i c pid ps=()
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    c=${components[$i]}
    if pid=$(live_pid "$c"); then ps+=("$pid"); fi
  done
  # Clients first, servers after: stopping etcd under a live apiserver only makes noise.
  local p
  for p in "${ps[@]}"; do stop_pids "$p" || true; done
  mapfile -t ps < <(stray_pids)
  if [ "${#ps[@]}" -gt 0 ]; then
    warn "stopping processes of .cluster/bin with no pid file: ${ps[*]}"
    stop_pids "${ps[@]}" || true
  fi
  rm -rf "$pids"
  [ -z "$(stray_pids)" ]
}

# Everything under .cluster/ except the built binaries (and the lock, which we hold).
remove_state() {
  local f
  shopt -s nullglob dotglob
  for f in "$state"/*; do
    case "$(basename "$f")" in
      bin | .lock) ;;
      *) rm -rf "$f" ;;
    esac
  done
  shopt -u nullglob dotglob
}

# True when something on this machine has a socket on 127.0.0.1/0.0.0.0/:: with this local port
# (listening or bound). /proc/net is what ss reads, without depending on iproute2.
port_taken() {
  local hex
  hex=$(printf '%04X' "$1")
  grep -qE "^ *[0-9]+: [0-9A-F]+:$hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# Prints the first free port at or above $1 that is not in the (space separated) list $2.
# Below 32768 so it never competes with the kernel's ephemeral ports for outgoing connections.
free_port() {
  local p=$1 taken=" $2 "
  while [ "$p" -lt 32768 ]; do
    if [[ "$taken" != *" $p "* ]] && ! port_taken "$p"; then
      echo "$p"
      return 0
    fi
    p=$((p + 1))
  done
  warn "no free loopback port at or above $1"
  return 1
}
