#!/usr/bin/env bash
# Build the gateway example (buildfiles/gateway) with tplbuild, on Docker and
# on Podman, side by side with BuildKit (`DOCKER_BUILDKIT=1 docker build`)
# building the equivalent Dockerfile: cold, and a rebuild with nothing
# changed (issue 4: cold ≤ 1.2× BuildKit, no-op ≤ 0.2× BuildKit).
#
# Packages (installed if missing): time
#
#   bench/build.sh           TPLBUILD=path RUNS=3 BENCH_ENGINES=private|shared
#
# Cold means: an empty TPLBUILD_HOME, and an engine that holds neither
# tplbuild's state images (tplbuild/state:*), nor the template image, nor
# the previous result, nor BuildKit's build cache (`docker builder prune
# -af`). Both tools' cold runs start from that same clean engine: tplbuild
# would otherwise only tag a template that BuildKit had pulled. Every cold
# run downloads the packages from Debian's archive again (no proxy), so the
# archive's speed at that moment is part of every cold figure, for both.
#
# Peak RSS is that of the client process: tplbuild (which makes the layers
# itself) and the docker CLI (BuildKit's work happens inside dockerd, which
# /usr/bin/time cannot see). Only tplbuild's figure measures the build.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_need_packages time
bench_setup build
bench_engines_up docker podman

# The template goes to a tag of the benchmark's own: the test bed's
# platform/base:1 is re-imported by other people's test runs (with their
# branch's binary, so not always the same digest), which would change the
# template between two runs of this script.
bench_gateway_setup

# Remove by tag, never by force: in shared mode other tags of the same image
# stay. The private engines are all ours, so there we prune everything.
clean_docker() { bench_clean_docker "^(tplbuild/state:|bench/gateway-bk:|${BASE//./\\.}\$)"; }
clean_podman() {
  local tags
  mapfile -t tags < <(bench_podman images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E "^(localhost/)?tplbuild/state:|^${BASE//./\\.}\$" || true)
  [ ${#tags[@]} -eq 0 ] || bench_podman rmi "${tags[@]}" >/dev/null 2>&1 || true
  [ "${BENCH_ENGINES:-private}" = shared ] || bench_podman image prune -af >/dev/null
}

# Whole command lines (env + program), so that /usr/bin/time measures the
# builder itself.
TPL_DOCKER=(env TPLBUILD_HOME="$WORK/home-docker" DOCKER_HOST="$DOCKER_SOCK"
  "${TPL[@]}" build -f "$BUILDFILE" --build-arg "BASE=$BASE" --engine docker --progress plain)
if [ "${BENCH_ENGINES:-private}" = shared ]; then
  TPL_PODMAN=(env TPLBUILD_HOME="$WORK/home-podman"
    "${TPL[@]}" build -f "$BUILDFILE" --build-arg "BASE=$BASE" --engine podman --progress plain)
else
  # --engine podman looks only at Podman's own sockets; the private service
  # is reached through DOCKER_HOST (the engine that answers is used, and the
  # build log names it).
  TPL_PODMAN=(env TPLBUILD_HOME="$WORK/home-podman" DOCKER_HOST="$PODMAN_SOCK"
    "${TPL[@]}" build -f "$BUILDFILE" --build-arg "BASE=$BASE" --engine docker --progress plain)
fi
BUILDKIT=(env DOCKER_BUILDKIT=1 "$DOCKER" -H "$DOCKER_SOCK" build --network host --progress plain
  -t bench/gateway-bk:latest "$CTX")
BUILDKIT_CLEAN=(env DOCKER_BUILDKIT=1 "$DOCKER" -H "$DOCKER_SOCK" build --network host --progress plain
  -f "$CTX/Dockerfile.clean" -t bench/gateway-bk:clean "$CTX")

cold_tpl_docker() { clean_docker; rm -rf "${WORK:?}/home-docker"; measure tplbuild-docker "cold build" "${TPL_DOCKER[@]}"; }
cold_tpl_podman() { clean_podman; rm -rf "${WORK:?}/home-podman"; measure tplbuild-podman "cold build" "${TPL_PODMAN[@]}"; }
cold_buildkit() { clean_docker; measure buildkit "cold build" "${BUILDKIT[@]}"; }
cold_buildkit_clean() { clean_docker; measure buildkit-clean "cold build" "${BUILDKIT_CLEAN[@]}"; }
noop_tpl_docker() { measure tplbuild-docker "no-op rebuild" "${TPL_DOCKER[@]}"; }
noop_tpl_podman() { measure tplbuild-podman "no-op rebuild" "${TPL_PODMAN[@]}"; }
noop_buildkit() { measure buildkit "no-op rebuild" "${BUILDKIT[@]}"; }
noop_buildkit_clean() { measure buildkit-clean "no-op rebuild" "${BUILDKIT_CLEAN[@]}"; }
# Interleaved, and the order rotates from run to run, so that none of the
# builders always runs first (or right after another's apt downloads).
rotate() {
  local n="$1" i; shift
  for i in $(seq 0 $(($# - 1))); do
    local k=$(( (i + n - 1) % $# + 1 ))
    "${!k}"
  done
}
for n in $(seq 1 "$RUNS"); do rotate "$n" cold_tpl_docker cold_tpl_podman cold_buildkit cold_buildkit_clean; done
# The cold runs' clean-ups removed each other's state (a tplbuild cold run
# prunes BuildKit's cache too), so build each once more, untimed, before
# timing the no-op rebuilds.
bench_log "warming every builder for the no-op rebuilds (not timed)"
for cmd in TPL_DOCKER TPL_PODMAN BUILDKIT BUILDKIT_CLEAN; do
  ref="${cmd}[@]"
  "${!ref}" >"$WORK/logs/warm-$cmd.log" 2>&1 || { bench_log "warming $cmd failed"; tail -15 "$WORK/logs/warm-$cmd.log" >&2; }
done
for n in $(seq 1 "$RUNS"); do rotate "$n" noop_tpl_docker noop_tpl_podman noop_buildkit noop_buildkit_clean; done
engine_line=$(grep -h -m1 '^using ' "$WORK"/logs/*tplbuild-podman-cold* 2>/dev/null | head -1 || true)
# Every cold build should give the same image, on both engines: a check
# that comes free with the figures.
digests=$(grep -h '^built sha256:' "$WORK"/logs/*tplbuild-*-cold* 2>/dev/null | awk '{ print substr($2, 8, 12) }' | sort | uniq -c | awk '{ printf "%s%s×%s", sep, $1, $2; sep = ", " }')

echo
echo "## tplbuild vs BuildKit: buildfiles/gateway (RUNS=$RUNS, engines: ${BENCH_ENGINES:-private})"
print_machine
echo "docker:  $("$DOCKER" -H "$DOCKER_SOCK" version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"
echo "podman:  $(podman --version) (tplbuild's podman run said: ${engine_line:-?})"
echo "template: $BASE; tplbuild's cold builds gave image ${digests:-?}"
echo
print_table
echo
for bk in buildkit buildkit-clean; do
  ratio "cold: tplbuild (docker) / $bk" tplbuild-docker "cold build" "$bk" "cold build" "≤ 1.2"
  ratio "cold: tplbuild (podman) / $bk" tplbuild-podman "cold build" "$bk" "cold build" "≤ 1.2"
done
for bk in buildkit buildkit-clean; do
  ratio "no-op: tplbuild (docker) / $bk" tplbuild-docker "no-op rebuild" "$bk" "no-op rebuild" "≤ 0.2"
  ratio "no-op: tplbuild (podman) / $bk" tplbuild-podman "no-op rebuild" "$bk" "no-op rebuild" "≤ 0.2"
done
echo
echo "seconds per step, cold runs in run order (tplbuild: MISS time of each step; BuildKit: DONE time):"
for b in tplbuild-docker tplbuild-podman buildkit buildkit-clean; do
  mapfile -t logs < <(cd "$WORK/logs" && printf '%s\n' *-"$b"-cold_build.log | sort -n)
  [ -f "$WORK/logs/${logs[0]}" ] || continue
  (cd "$WORK/logs" && step_times "${logs[@]}") | sed "s/^/  $(printf '%-16s' "$b")/"
done
echo "buildkit = the brief's Dockerfile; buildkit-clean = the same + apt-get clean && rm -rf /var/lib/apt/lists/*"
echo "(median of $RUNS runs, the builders interleaved in rotating order; RSS is the client's, see the top of this script;"
echo " cold builds fetch packages from Debian's archive; load1 = 1-minute load average when each run started)"
