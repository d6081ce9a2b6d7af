# shellcheck shell=bash
# Shared helpers for the bench/ scripts (sourced, not run).
#
# Each script measures tplbuild side by side with a peer tool: every
# measurement runs RUNS times (default 3) under `/usr/bin/time -f '%e %M'`,
# interleaved with the peer's runs so that a burst of load on this shared
# machine hits both tools alike; the table shows the median, every run, the
# largest peak RSS and the 1-minute load average when each run started.
# Nothing here asserts on time: the scripts print figures and exit 0.
#
# Environment:
#   TPLBUILD=path        the binary to measure (default ./target/release/tplbuild)
#   RUNS=3               runs per measurement
#   BENCH_WORK=dir       scratch space (default /var/tmp/tplbuild-bench)
#   BENCH_ENGINES=private|shared   see bench_engines_up below

BENCH_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${RUNS:-3}"
# shellcheck disable=SC2034 # used by the scripts that source this file
REG=127.0.0.1:5000
BENCH_WORK="${BENCH_WORK:-/var/tmp/tplbuild-bench}"
# Debian's docker.io CLI (20.10) has BuildKit built in; a newer CLI elsewhere
# on PATH may need the buildx plugin for DOCKER_BUILDKIT=1.
DOCKER="${DOCKER:-/usr/bin/docker}"

TPLBUILD="${TPLBUILD:-./target/release/tplbuild}"
case "$TPLBUILD" in /*) ;; *) TPLBUILD="$BENCH_REPO/${TPLBUILD#./}" ;; esac

bench_log() { printf '== %s\n' "$*" >&2; }

# Install the Debian packages given, if any is missing.
bench_need_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  bench_log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

# Start the test bed (idempotent), check the binary, make the scratch space.
bench_setup() {
  local name="$1"
  if [ "$(id -u)" != 0 ]; then echo "bench: run as root (like scripts/testbed)" >&2; exit 1; fi
  bash "$BENCH_REPO/scripts/testbed" >&2
  eval "$(bash "$BENCH_REPO/scripts/testbed" env)"
  if [ ! -x "$TPLBUILD" ]; then
    echo "bench: no binary at $TPLBUILD; run \`cargo build --release\` or set TPLBUILD=" >&2
    exit 1
  fi
  WORK="$BENCH_WORK/$name"
  rm -rf "${WORK:?}/logs"
  mkdir -p "$WORK/logs"
  RESULTS="$WORK/results.tsv"
  : > "$RESULTS"
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# measure TOOL OPERATION CMD...: run CMD once, append its figures to
# $RESULTS. Output goes to a log; a failed run (exit code other than 0 and
# those in MEASURE_OK_RC) is recorded as such and its log tail printed, and
# the script carries on.
measure() {
  local tool="$1" op="$2"; shift 2
  local n; n=$(grep -c . "$RESULTS" || true)
  local log="$WORK/logs/$n-${tool//[^A-Za-z0-9._-]/_}-${op//[^A-Za-z0-9._-]/_}.log" tf="$WORK/time.$$"
  local load; load=$(load1)
  local rc=0
  /usr/bin/time -f '%e %M' -o "$tf" "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] && [[ " ${MEASURE_OK_RC:-} " != *" $rc "* ]]; then
    printf '%s\t%s\tFAIL\t0\t%s\n' "$tool" "$op" "$load" >> "$RESULTS"
    bench_log "FAILED ($rc): $tool $op; last lines of $log:"
    tail -15 "$log" >&2
    return 0
  fi
  local secs rss
  read -r secs rss < <(tail -1 "$tf")
  # MEASURE_RSS_ONLY=1: the run is too short for time's 10 ms clock.
  [ -z "${MEASURE_RSS_ONLY:-}" ] || secs=-
  printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$op" "$secs" "$rss" "$load" >> "$RESULTS"
  bench_log "$tool $op: ${secs}s, $((rss / 1024)) MiB (load $load)"
}

# The results table: per (tool, operation) in first-seen order, the median
# of the successful runs, every run, the largest peak RSS, the load range.
print_table() {
  awk -F'\t' '
    function f(x) { return x == "FAIL" || x == "-" ? x : (x < 1 ? sprintf("%.4f", x) : sprintf("%.2f", x)) }
    !(($1 FS $2) in seen) { seen[$1 FS $2] = ++k; key[k] = $1 FS $2; tool[k] = $1; op[k] = $2 }
    { i = seen[$1 FS $2]
      runs[i] = runs[i] (runs[i] == "" ? "" : " ") f($3)
      if ($4 > rss[i]) rss[i] = $4
      if ($3 != "FAIL" && $3 != "-") { n[i]++; t[i, n[i]] = $3 }
      if (lo[i] == "" || $5 < lo[i]) lo[i] = $5
      if (hi[i] == "" || $5 > hi[i]) hi[i] = $5 }
    END {
      printf "%-16s %-34s %9s  %-22s %9s  %s\n", "tool", "operation", "median s", "runs (s)", "RSS MiB", "load1"
      for (i = 1; i <= k; i++) {
        # insertion sort of the row times, then the middle one
        for (a = 2; a <= n[i]; a++) { v = t[i, a]; b = a - 1
          while (b >= 1 && t[i, b] + 0 > v + 0) { t[i, b + 1] = t[i, b]; b-- } t[i, b + 1] = v }
        med = n[i] ? (n[i] % 2 ? t[i, (n[i] + 1) / 2] : (t[i, n[i] / 2] + t[i, n[i] / 2 + 1]) / 2) : "-"
        printf "%-16s %-34s %9s  %-22s %9s  %s\n", tool[i], op[i], f(med), runs[i], \
          (rss[i] ? sprintf("%.1f", rss[i] / 1024) : "-"), \
          (lo[i] == hi[i] ? lo[i] : lo[i] "-" hi[i])
      }
    }' "$RESULTS"
}

# median_of TOOL OPERATION: the median seconds of that row ("" if none).
median_of() {
  awk -F'\t' -v tl="$1" -v o="$2" '$1 == tl && $2 == o && $3 != "FAIL" && $3 != "-" { print $3 }' "$RESULTS" \
    | sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# max_rss_mib TOOL OPERATION
max_rss_mib() {
  awk -F'\t' -v tl="$1" -v o="$2" '$1 == tl && $2 == o && $3 != "FAIL" && $4 > m { m = $4 } END { printf "%.1f", m / 1024 }' "$RESULTS"
}

# ratio LABEL NUM_TOOL NUM_OP DEN_TOOL DEN_OP TARGET: one line comparing two
# medians with a goal. Information only: nothing fails on it.
ratio() {
  local label="$1" a b; a=$(median_of "$2" "$3"); b=$(median_of "$4" "$5")
  if [ -z "$a" ] || [ -z "$b" ]; then
    printf '%-44s  n/a (a run failed)\n' "$label"; return 0
  fi
  awk -v l="$label" -v a="$a" -v b="$b" -v goal="$6" 'BEGIN {
    r = a / b; g = goal; gsub(/[^0-9.]/, "", g); g += 0
    printf "%-44s  %6.2f×   (%s s / %s s; target %s: %s)\n", l, r, a, b, goal, (r <= g ? "met" : "NOT met") }'
}

print_machine() {
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $(uname -sr)"
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC'); uptime:$(uptime | sed 's/^.*up/ up/')"
  echo "tplbuild: $("$TPLBUILD" --version 2>&1 | head -1) ($TPLBUILD, git $(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))"
}

# Container engines for the build benchmarks. A cold build must start from an
# engine without tplbuild's state images or BuildKit's cache, and removing
# those from the test bed's daemons would pull the floor from under anyone
# else's test run on them. So by default (BENCH_ENGINES=private) a private
# dockerd and Podman API service are started, with their own data roots and
# sockets under /var/lib/tplbuild-bench and /run/tplbuild-bench, and stopped
# when the script ends. BENCH_ENGINES=shared uses the test bed's daemons and
# DOES remove images and build cache from them: only on a machine of your own.
BENCH_STATE=/var/lib/tplbuild-bench
BENCH_RUN=/run/tplbuild-bench
BENCH_PIDS=()

# bench_engines_up [docker] [podman]: both unless named.
bench_engines_up() {
  local want="${*:-docker podman}"
  if [ "${BENCH_ENGINES:-private}" = shared ]; then
    DOCKER_SOCK=unix:///var/run/docker.sock
    PODMAN_SOCK=unix:///run/podman/podman.sock
    PODMAN_CONF=/etc/containers/containers.conf
    return 0
  fi
  mkdir -p "$BENCH_STATE/docker" "$BENCH_STATE/podman" "$BENCH_RUN"
  DOCKER_SOCK="unix://$BENCH_RUN/docker.sock"
  PODMAN_SOCK="unix://$BENCH_RUN/podman.sock"
  # A private containers.conf replaces the system one as a whole: the test
  # bed's settings (runc, no rlimits, host network) plus file locks and a
  # temp dir of its own, so this Podman shares no lock segment with the
  # test bed's.
  PODMAN_CONF="$BENCH_STATE/containers.conf"
  cat > "$PODMAN_CONF" <<CONF
[containers]
default_ulimits = []
netns = "host"

[engine]
runtime = "runc"
lock_type = "file"
tmp_dir = "$BENCH_RUN/podman-tmp"
events_logger = "file"
events_logfile_path = "$BENCH_RUN/podman-events.log"
CONF
  if [[ $want == *docker* ]] && ! "$DOCKER" -H "$DOCKER_SOCK" version >/dev/null 2>&1; then
    bench_log "starting a private dockerd on $DOCKER_SOCK"
    setsid dockerd --data-root "$BENCH_STATE/docker" --exec-root "$BENCH_RUN/docker" \
      --pidfile "$BENCH_RUN/docker.pid" -H "$DOCKER_SOCK" \
      --bridge=none --iptables=false --ip6tables=false --log-level=warn \
      >"$WORK/logs/dockerd.log" 2>&1 </dev/null &
    BENCH_PIDS+=($!)
  fi
  if [[ $want == *podman* ]] && ! curl -sf --unix-socket "${PODMAN_SOCK#unix://}" http://d/_ping >/dev/null 2>&1; then
    bench_log "starting a private Podman API service on $PODMAN_SOCK"
    CONTAINERS_CONF="$PODMAN_CONF" setsid podman --root "$BENCH_STATE/podman/root" \
      --runroot "$BENCH_RUN/podman-run" system service --time=0 "$PODMAN_SOCK" \
      >"$WORK/logs/podman.log" 2>&1 </dev/null &
    BENCH_PIDS+=($!)
  fi
  trap bench_engines_down EXIT
  local _
  for _ in $(seq 1 150); do
    if { [[ $want != *docker* ]] || "$DOCKER" -H "$DOCKER_SOCK" version >/dev/null 2>&1; } \
      && { [[ $want != *podman* ]] || curl -sf --unix-socket "${PODMAN_SOCK#unix://}" http://d/_ping >/dev/null 2>&1; }; then
      return 0
    fi
    sleep 0.2
  done
  echo "bench: the private engines did not come up; see $WORK/logs/dockerd.log and podman.log" >&2
  exit 1
}

# Stop only the daemons this script started, by pid.
bench_engines_down() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${BENCH_PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  BENCH_PIDS=()
}

bench_docker() { "$DOCKER" -H "$DOCKER_SOCK" "$@"; }

# bench_clean_docker TAG_REGEX: a cold Docker for the next run. Removes by
# tag (matching TAG_REGEX), never by force: in shared mode other tags of
# the same image stay. The private engines are all ours, so there we prune
# everything, BuildKit's cache included.
bench_clean_docker() {
  local tags
  mapfile -t tags < <(bench_docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "$1" || true)
  [ ${#tags[@]} -eq 0 ] || bench_docker rmi "${tags[@]}" >/dev/null 2>&1 || true
  bench_docker builder prune -af >/dev/null
  [ "${BENCH_ENGINES:-private}" = shared ] || bench_docker image prune -af >/dev/null
}
bench_podman() { CONTAINERS_CONF="$PODMAN_CONF" podman --remote --url "$PODMAN_SOCK" "$@"; }

# gateway_dockerfiles DIR BASE: buildfiles/gateway as a Docker build context
# with two Dockerfiles.
#   Dockerfile        the brief's translation: INSTALL becomes the apt-get
#                     line tplbuild runs (`apt-get update -qq; apt-get
#                     install -y --no-install-recommends`).
#   Dockerfile.clean  the same plus `apt-get clean && rm -rf
#                     /var/lib/apt/lists/*`, as Dockerfiles usually do: the
#                     template (mmdebstrap, not Docker's debian image) has no
#                     docker-clean apt hook, so without it the image keeps
#                     ~80 MB of .debs and ~80 MB of apt lists, which
#                     tplbuild drops as volatile. This one yields the same
#                     rootfs as tplbuild, give or take apt's caches.
gateway_dockerfiles() {
  local ctx="$1" base="$2" clean
  rm -rf "$ctx"; mkdir -p "$ctx"
  cp -a "$BENCH_REPO/buildfiles/gateway/overlay" "$ctx/overlay"
  for clean in "" " \\&\\& apt-get clean \\&\\& rm -rf /var/lib/apt/lists/*"; do
    sed -e "s|@BASE@|$base|" -e "s|@CLEAN@|$clean|" > "$ctx/Dockerfile${clean:+.clean}" <<'DOCKERFILE'
FROM @BASE@
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq && apt-get install -y --no-install-recommends openssh-server curl@CLEAN@
COPY overlay/ /
RUN useradd --create-home --uid 1000 --shell /bin/bash ops && \
    sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin no/' /etc/ssh/sshd_config
LABEL org.opencontainers.image.title="Gateway" \
      org.opencontainers.image.version=1.0.0
DOCKERFILE
  done
}

# step_times LOG...: one line per builder log, the seconds each step took,
# from tplbuild's progress lines (`[1/3] INSTALL …  MISS  5.2s`) or
# BuildKit's plain progress (`#5 [2/4] RUN …` … `#5 DONE 6.2s`).
step_times() {
  awk '
    FNR == 1 { if (line != "") print line; line = "" }
    /^\[[0-9]+\/[0-9]+\] [A-Z]+ .* (MISS|HIT) +[0-9.]+s$/ {
      line = line sprintf(" %s %s", $2, $NF) }
    /^#[0-9]+ \[[0-9]+\/[0-9]+\] [A-Z]+/ { name[$1] = $3 }
    /^#[0-9]+ exporting to / { name[$1] = "export" }
    /^#[0-9]+ DONE [0-9.]+s$/ && ($1 in name) { line = line sprintf(" %s %s", name[$1], $3); delete name[$1] }
    END { if (line != "") print line }' "$@"
}

# bench_publish_template: set BASE and TPL; import the test bed's rootfs
# tarball as the template BASE (not timed).
bench_publish_template() {
  BASE="${BENCH_BASE:-$REG/bench/base:1}"
  TPL=("$TPLBUILD" --insecure-registry "$REG")
  bench_log "publishing the template $BASE (not timed)"
  rm -rf "${WORK:?}/home-import"
  TPLBUILD_HOME="$WORK/home-import" "${TPL[@]}" template import "$TPLBUILD_TEST_ROOTFS_TAR" "$BASE" >"$WORK/logs/import.log" 2>&1 \
    || { tail -20 "$WORK/logs/import.log" >&2; exit 1; }
  rm -rf "${WORK:?}/home-import"
}

# bench_gateway_setup: set BASE, BUILDFILE, TPL and CTX; publish the
# template to BASE (not timed) and write buildfiles/gateway as Dockerfiles
# in CTX, twice: as the brief wrote it, and cleaning apt's files like
# tplbuild does (see gateway_dockerfiles).
bench_gateway_setup() {
  bench_publish_template
  BUILDFILE="$BENCH_REPO/buildfiles/gateway/Buildfile"
  CTX="$WORK/gateway-docker"
  gateway_dockerfiles "$CTX" "$BASE"
}
