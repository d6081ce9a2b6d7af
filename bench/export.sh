#!/usr/bin/env bash
# The gateway as an ext4 image: `tplbuild build -o type=ext4` (steps already
# cached, export cache cold) side by side with the BuildKit way, `docker
# build --output type=tar,dest=-` (build cache warm) piped into tar, then
# `mke2fs -t ext4 -d`. Target: tplbuild ≤ 0.7× BuildKit's pipeline.
#
# Packages (installed if missing): time e2fsprogs
#
#   bench/export.sh          TPLBUILD=path RUNS=3 BENCH_ENGINES=private|shared
#
# If the binary has no ext4 export yet, the tplbuild row says "pending" and
# the BuildKit pipeline is still measured.
#
# BuildKit builds Dockerfile.clean (see gateway_dockerfiles in lib.sh): the
# brief's Dockerfile keeps ~160 MB of apt files that tplbuild drops, and
# mke2fs would have to write them too.
#
# tplbuild: the step cache is warmed once; each run starts from a copy of
# that TPLBUILD_HOME, which holds no export. BuildKit: the build cache is
# warmed once; each run extracts into an empty folder. Both images get the
# size tplbuild picks by default (content × 1.3 + 64 MiB, rounded up to
# 4 MiB). Peak RSS of the pipeline is that of its largest process
# (docker CLI, tar or mke2fs); BuildKit's own work is inside dockerd.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_need_packages time e2fsprogs
bench_setup export
bench_engines_up docker

# A tag of the benchmark's own, as in bench/build.sh.
bench_gateway_setup

TPL_BUILD=("${TPL[@]}" build -f "$BUILDFILE" --build-arg "BASE=$BASE" --engine docker --progress plain)

bench_log "warming tplbuild's step cache and BuildKit's build cache (not timed)"
rm -rf "${WORK:?}/home-warm"
TPLBUILD_HOME="$WORK/home-warm" DOCKER_HOST="$DOCKER_SOCK" "${TPL_BUILD[@]}" >"$WORK/logs/warm-tplbuild.log" 2>&1 \
  || { tail -20 "$WORK/logs/warm-tplbuild.log" >&2; exit 1; }
DOCKER_BUILDKIT=1 bench_docker build --network host --progress plain -f "$CTX/Dockerfile.clean" "$CTX" \
  >"$WORK/logs/warm-buildkit.log" 2>&1 || { tail -20 "$WORK/logs/warm-buildkit.log" >&2; exit 1; }

# Does this binary export ext4? Ask it once, on a throw-away copy of the store.
rm -rf "${WORK:?}/home-run" "$WORK/tpl.ext4"; cp -a "$WORK/home-warm" "$WORK/home-run"
pending=""
if ! TPLBUILD_HOME="$WORK/home-run" DOCKER_HOST="$DOCKER_SOCK" \
  "${TPL_BUILD[@]}" -o "type=ext4,dest=$WORK/tpl.ext4" >"$WORK/logs/probe.log" 2>&1; then
  pending="$(grep -m1 -i 'error' "$WORK/logs/probe.log" || tail -1 "$WORK/logs/probe.log")"
  bench_log "tplbuild cannot export ext4 yet: $pending"
fi

# BuildKit's pipeline, as one timed shell: build to a tar stream, unpack it
# as root with numeric owners, size the image like tplbuild, mke2fs -d.
# shellcheck disable=SC2016 # expanded by the bash that runs it
PIPELINE='set -euo pipefail
DOCKER_BUILDKIT=1 "$0" -H "$1" build --network host --progress plain -f "$2/Dockerfile.clean" \
  --output type=tar,dest=- "$2" \
  | tar -xpf - --numeric-owner -C "$3"
kib=$(du -sk "$3" | cut -f1)
mib=$(( (kib * 13 / 10 / 1024 + 64 + 3) / 4 * 4 ))
mke2fs -t ext4 -d "$3" -F -q -L rootfs "$4" "${mib}M"'

for _ in $(seq 1 "$RUNS"); do
  if [ -z "$pending" ]; then
    rm -rf "${WORK:?}/home-run" "$WORK/tpl.ext4"; cp -a "$WORK/home-warm" "$WORK/home-run"
    measure tplbuild "gateway → ext4 (steps cached)" env TPLBUILD_HOME="$WORK/home-run" DOCKER_HOST="$DOCKER_SOCK" \
      "${TPL_BUILD[@]}" -o "type=ext4,dest=$WORK/tpl.ext4"
  fi
  rm -rf "${WORK:?}/bk-root" "$WORK/bk.ext4"; mkdir -p "$WORK/bk-root"
  measure buildkit "gateway → tar → dir → mke2fs -d" bash -c "$PIPELINE" "$DOCKER" "$DOCKER_SOCK" "$CTX" \
    "$WORK/bk-root" "$WORK/bk.ext4"
done

echo
echo "## gateway → ext4: tplbuild vs BuildKit + mke2fs (RUNS=$RUNS, engines: ${BENCH_ENGINES:-private})"
print_machine
echo "docker:  $("$DOCKER" -H "$DOCKER_SOCK" version --format 'server {{.Server.Version}}, client {{.Client.Version}}'); $(mke2fs -V 2>&1 | head -1)"
size_of() { if [ -f "$1" ]; then echo "$(du -m --apparent-size "$1" | cut -f1) MiB"; else echo "none"; fi; }
echo "images:  tplbuild $(size_of "$WORK/tpl.ext4"), BuildKit pipeline $(size_of "$WORK/bk.ext4")"
echo
print_table
if [ -n "$pending" ]; then
  printf '%-16s %-34s %9s  %s\n' tplbuild "gateway → ext4 (steps cached)" pending "this binary: $pending"
fi
echo
if [ -z "$pending" ]; then
  ratio "ext4: tplbuild / BuildKit pipeline" tplbuild "gateway → ext4 (steps cached)" \
    buildkit "gateway → tar → dir → mke2fs -d" "≤ 0.7"
else
  echo "ext4: tplbuild / BuildKit pipeline: pending (no ext4 export in this binary)"
fi
echo "(median of $RUNS runs, interleaved; RSS: largest process, see the top of this script;"
echo " load1 = 1-minute load average when each run started)"
rm -rf "${WORK:?}/home-run" "$WORK/bk-root"
