#!/usr/bin/env bash
# The gateway example built for linux/arm64 on this amd64 host, under
# qemu-user: tplbuild (`--platform linux/arm64`) against BuildKit (`docker
# build --platform linux/arm64`) building the equivalent Dockerfile from the
# same arm64 template, cold, once each (emulated builds take minutes; issue
# 12: goal ≤ 1.0×). Also prints where tplbuild's time goes per step.
#
# Packages (installed if missing): time. The test bed sets up qemu-user
# (qemu-user-static, binfmt-support) and the arm64 minbase.
#
#   bench/arm64.sh           TPLBUILD=path RUNS=1 BENCH_ENGINES=private|shared
#
# Cold is as in bench/build.sh: an empty TPLBUILD_HOME, and an engine with
# none of tplbuild's state images, no template image and no build cache.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
RUNS="${RUNS:-1}"
bench_need_packages time
bench_setup arm64
bench_engines_up docker

BASE="${BENCH_BASE:-$REG/bench/base-arm64:1}"
BUILDFILE="$BENCH_REPO/buildfiles/gateway/Buildfile"
TPL=("$TPLBUILD" --insecure-registry "$REG")
bench_log "publishing the arm64 template $BASE (not timed)"
rm -rf "${WORK:?}/home-import"
TPLBUILD_HOME="$WORK/home-import" "${TPL[@]}" template import "$TPLBUILD_TEST_ARM64_ROOTFS_TAR" "$BASE" \
  >"$WORK/logs/import.log" 2>&1 || { tail -20 "$WORK/logs/import.log" >&2; exit 1; }
rm -rf "${WORK:?}/home-import"
CTX="$WORK/gateway-docker"
gateway_dockerfiles "$CTX" "$BASE"

clean_docker() { bench_clean_docker "^(tplbuild/state:|tplbuild/layer:|bench/gateway-arm64-bk:|${BASE//./\\.}\$)"; }

TPL_DOCKER=(env TPLBUILD_HOME="$WORK/home-docker" DOCKER_HOST="$DOCKER_SOCK"
  "${TPL[@]}" build -f "$BUILDFILE" --build-arg "BASE=$BASE" --platform linux/arm64
  --engine docker --progress plain)
BUILDKIT_CLEAN=(env DOCKER_BUILDKIT=1 "$DOCKER" -H "$DOCKER_SOCK" build --platform linux/arm64
  --network host --progress plain -f "$CTX/Dockerfile.clean" -t bench/gateway-arm64-bk:clean "$CTX")

cold_tpl() { clean_docker; rm -rf "${WORK:?}/home-docker"; measure tplbuild-docker "arm64 cold build" "${TPL_DOCKER[@]}"; }
cold_buildkit() { clean_docker; measure buildkit-clean "arm64 cold build" "${BUILDKIT_CLEAN[@]}"; }
for n in $(seq 1 "$RUNS"); do
  if [ $((n % 2)) -eq 1 ]; then cold_tpl; cold_buildkit; else cold_buildkit; cold_tpl; fi
done

echo
echo "## tplbuild vs BuildKit: buildfiles/gateway for linux/arm64 under qemu-user (RUNS=$RUNS, engines: ${BENCH_ENGINES:-private})"
print_machine
echo "docker:  $("$DOCKER" -H "$DOCKER_SOCK" version --format 'server {{.Server.Version}}, client {{.Client.Version}}')"
echo "qemu:    $(dpkg-query -W -f='${Version}' qemu-user-static 2>/dev/null || echo '?'); template: $BASE"
echo
print_table
echo
ratio "arm64 cold: tplbuild (docker) / buildkit-clean" tplbuild-docker "arm64 cold build" buildkit-clean "arm64 cold build" "≤ 1.0"
echo
echo "seconds per step, cold runs in run order (tplbuild: MISS time of each step; BuildKit: DONE time):"
for b in tplbuild-docker buildkit-clean; do
  mapfile -t logs < <(cd "$WORK/logs" && printf '%s\n' *-"$b"-arm64_cold_build.log | sort -n)
  [ -f "$WORK/logs/${logs[0]}" ] || continue
  (cd "$WORK/logs" && step_times "${logs[@]}") | sed "s/^/  $(printf '%-16s' "$b")/"
done
echo "buildkit-clean = the gateway Dockerfile + apt-get clean && rm -rf /var/lib/apt/lists/* (the rootfs tplbuild makes)"
