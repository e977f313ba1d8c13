# shellcheck shell=bash
# Shared by tests/cluster/up, down and component: paths, logging, free-port probing, starting and
# stopping the processes of a local control plane. Sourced, never executed.
#
# DRIFTLESS_CLUSTER_DIR names the cluster's directory (absolute, or relative to the current
# directory; default <repo>/.cluster): its ports, PKI, etcd data, pids, logs, kubeconfig and audit
# log all live there, so several control planes can run side by side (a test that stops its
# kube-apiserver uses one of its own). The binaries are always those of <repo>/.cluster/bin.

cluster_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=$(cd "$cluster_dir/../.." && pwd)
default_state="$root/.cluster"
bin="$default_state/bin"
state=${DRIFTLESS_CLUSTER_DIR:-$default_state}
state=$(realpath -m -- "$state")
if [ "$state" = "$default_state" ]; then private=false; else private=true; fi
# Private clusters of this checkout made by the tests' PrivateCluster helper live here, so that
# `down` of the default cluster stops them too (a test binary killed before its cleanup leaks one).
private_root="$default_state/private"
pids="$state/pids"
# shellcheck disable=SC2034 # used by the scripts that source this file
logs="$state/logs"
# shellcheck disable=SC2034
pki="$state/pki"
# The exact arguments each component was started with (NUL separated), for `component start`.
args_dir="$state/args"
# Written by `up` into a directory it owns: `down` removes the contents of a non-default
# DRIFTLESS_CLUSTER_DIR only when this file is there (never a directory given by mistake).
marker="$state/.driftless-cluster"

# Start order; down stops them in reverse so clients go before the servers they talk to.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

say() { printf 'cluster: %s\n' "$*"; }
warn() { printf 'cluster: %s\n' "$*" >&2; }

# One `up`, `down` or `component` at a time per cluster directory: two parallel test runs calling
# `up` must not both decide to (re)start the cluster. The lock file lives in the state directory
# and down keeps it.
take_lock() {
  mkdir -p "$state"
  exec 9>"$state/.lock"
  if ! flock -w 120 9; then
    warn "another tests/cluster/up or down is still running (lock $state/.lock held for 120s)"
    exit 1
  fi
}

# The cluster directory a process of our binaries belongs to: the DRIFTLESS_CLUSTER_DIR its
# environment was given by `start` (below), or the default directory for a process started
# without one (by an older version of these scripts, which knew only .cluster/).
owner_dir() {
  local dir
  dir=$(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | sed -n 's/^DRIFTLESS_CLUSTER_DIR=//p' | head -n1)
  echo "${dir:-$default_state}"
}

# The pid in <dir>/pids/<component>.pid, printed only while it is alive AND is still our
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

# Every process of this cluster directory whose executable is one of this checkout's
# control-plane binaries, whether or not a pid file still names it (a pid file can be lost when
# the directory is removed by hand). Only exact paths under this checkout's .cluster/bin match,
# so other checkouts are untouched, and only processes of this directory (owner_dir), so other
# clusters of this checkout are untouched too.
stray_pids() {
  local p exe c
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    for c in "${components[@]}"; do
      if [ "$exe" = "$bin/$c" ] || [ "$exe" = "$bin/$c (deleted)" ]; then
        [ "$(owner_dir "${p#/proc/}")" = "$state" ] && echo "${p#/proc/}"
      fi
    done
  done
  return 0
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

# Everything in the cluster directory except the built binaries, the lock (which we hold), the
# marker and, for the default directory, the private clusters (arguments: more names to keep).
# A non-default directory is emptied only when it carries the marker (or is empty already).
remove_state() {
  local f keep=" bin .lock .driftless-cluster $* "
  shopt -s nullglob dotglob
  if [ "$private" = true ] && [ ! -f "$marker" ]; then
    for f in "$state"/*; do
      case "$(basename "$f")" in .lock) ;; *)
        shopt -u nullglob dotglob
        warn "$state was not made by tests/cluster/up (no $(basename "$marker")): not removing anything in it"
        return 1 ;;
      esac
    done
  fi
  for f in "$state"/*; do
    [[ "$keep" == *" $(basename "$f") "* ]] || rm -rf "$f"
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

# ---- starting components ----------------------------------------------------------------------

# fail COMPONENT MESSAGE: names the component, shows the end of its log and exits 1.
fail() {
  local component=$1
  shift
  warn "$component: $*"
  if [ -s "$logs/$component.log" ]; then
    warn "---- last 30 lines of $logs/$component.log ----"
    tail -n 30 "$logs/$component.log" >&2
    warn "----"
    # Usage text or later noise can push the actual error out of the tail.
    local first
    first=$(grep -m1 -E '^(Error|error|F[0-9]{4}|E[0-9]{4}|panic)|"level":"(error|fatal|panic)"' \
      "$logs/$component.log" || true)
    [ -z "$first" ] || warn "first error in the log: $first"
  fi
  exit 1
}

# start NAME ARGS...: runs .cluster/bin/NAME detached in its own session (so a Ctrl-C in the
# caller's terminal or the end of a CI step does not reach it, and it holds none of the caller's
# pipes open), output appended to logs/NAME.log, and without fd 9 (the lock: a component holding
# it would make the next `up` wait for it). The wrapper writes its own pid and then execs, so the
# pid file names the component itself even if setsid had to fork. DRIFTLESS_CLUSTER_DIR in its
# environment says which cluster directory it belongs to (owner_dir). The arguments are recorded
# in args/NAME, so `component start NAME` can start it again exactly so.
start() {
  local name=$1
  shift
  mkdir -p "$args_dir"
  printf '%s\0' "$@" >"$args_dir/$name"
  rm -f "$pids/$name.pid"
  # shellcheck disable=SC2016 # $$, $0 and $@ belong to the inner shell.
  DRIFTLESS_CLUSTER_DIR="$state" setsid bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
    "$pids/$name.pid" "$bin/$name" "$@" </dev/null >>"$logs/$name.log" 2>&1 9>&- &
  local i
  for i in $(seq 1 50); do
    [ -s "$pids/$name.pid" ] && return 0
    sleep 0.05
  done
  fail "$name" "did not start (no pid file after 2.5s)"
}

# wait_ready NAME TIMEOUT_SECONDS WHAT COMMAND...: polls COMMAND; fails fast if NAME exits.
wait_ready() {
  local name=$1 timeout=$2 what=$3
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    live_pid "$name" >/dev/null || fail "$name" "exited before $what"
    [ "$SECONDS" -lt "$deadline" ] || fail "$name" "$what: not within ${timeout}s"
    sleep 0.2
  done
}

http_ok() { [ "$(curl -sk --max-time 2 "$1" 2>/dev/null)" = "$2" ]; }

# curl against the apiserver as admin; prints the body. Needs the ports (env).
api_get() {
  curl -sS --fail --max-time 3 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$api_port$1"
}

api_ready() { [ "$(api_get /readyz 2>/dev/null)" = ok ]; }

# wait_component_ready NAME: waits until a component just started serves (the checks of `up`).
wait_component_ready() {
  case "$1" in
    etcd)
      wait_ready etcd 30 "becoming healthy (GET /health)" \
        http_ok "http://127.0.0.1:$etcd_port/health" '{"health":"true","reason":""}' ;;
    kube-apiserver) wait_ready kube-apiserver 60 "becoming ready (GET /readyz)" api_ready ;;
    kube-controller-manager)
      wait_ready kube-controller-manager 30 "becoming healthy (GET /healthz)" \
        http_ok "https://127.0.0.1:$kcm_port/healthz" ok ;;
    kube-scheduler)
      wait_ready kube-scheduler 30 "becoming healthy (GET /healthz)" \
        http_ok "https://127.0.0.1:$sched_port/healthz" ok ;;
    kwok) ;; # no port: it runs as long as its process does
  esac
}
