#!/usr/bin/env bash
# Issue 7's figures: a cold build of the LOCKED gateway example with a warm
# .deb cache (the store already holds the locked .debs, as after `tplbuild
# fetch` or from a bundle), the same with no .deb cache (the build fetches
# them from the archive), and BuildKit's cold build of the equivalent
# Dockerfile — side by side in one run. Uses the shared engines, so run it
# when no test suite is running. Prints a table; asserts nothing.
#
#   TPLBUILD=path  (default ./target/release/tplbuild)   RUNS=3
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
RUNS="${RUNS:-3}"
TPLBUILD="${TPLBUILD:-$REPO/target/release/tplbuild}"
REG=127.0.0.1:5000
WORK="${BENCH_WORK:-/var/tmp/tplbuild-bench}/locked"
DOCKER=/usr/bin/docker   # Debian's CLI: BuildKit built in
bash scripts/testbed >&2
eval "$(bash scripts/testbed env)"
[ -x "$TPLBUILD" ] || { echo "no binary at $TPLBUILD (cargo build --release)" >&2; exit 1; }
rm -rf "$WORK"; mkdir -p "$WORK"
T=("$TPLBUILD" --insecure-registry "$REG")
"${T[@]}" template import "$TPLBUILD_TEST_ROOTFS_TAR" "$REG/platform/base:1" >/dev/null 2>&1

cp -a buildfiles/gateway "$WORK/gateway"
BF="$WORK/gateway/Buildfile"
TPLBUILD_HOME="$WORK/home-lock" "${T[@]}" lock -f "$BF" >"$WORK/lock.log" 2>&1
mkdir -p "$WORK/ctx"; cp -a buildfiles/gateway/overlay "$WORK/ctx/"
cat > "$WORK/ctx/Dockerfile" <<DOCKERFILE
FROM $REG/platform/base:1
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends openssh-server curl
COPY overlay/ /
RUN useradd --create-home --uid 1000 --shell /bin/bash ops && sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin no/' /etc/ssh/sshd_config
DOCKERFILE

cold_engine() {
  $DOCKER images -q 'tplbuild/state' | xargs -r $DOCKER rmi -f >/dev/null 2>&1 || true
}

warm_run() {
  rm -rf "$WORK/home"; cold_engine
  TPLBUILD_HOME="$WORK/home" "${T[@]}" fetch -f "$BF" >/dev/null 2>&1
  TPLBUILD_HOME="$WORK/home" /usr/bin/time -f '%e' -o "$WORK/t" "${T[@]}" build -f "$BF" \
    --engine docker --progress plain >"$WORK/warm.log" 2>&1
  cat "$WORK/t"
}

cold_run() {
  rm -rf "$WORK/home"; cold_engine
  TPLBUILD_HOME="$WORK/home" /usr/bin/time -f '%e' -o "$WORK/t" "${T[@]}" build -f "$BF" \
    --engine docker --progress plain >"$WORK/cold.log" 2>&1
  cat "$WORK/t"
}

bk_run() {
  $DOCKER builder prune -af >/dev/null 2>&1 || true
  $DOCKER rmi -f "$REG/platform/base:1" >/dev/null 2>&1 || true
  /usr/bin/time -f '%e' -o "$WORK/t" env DOCKER_BUILDKIT=1 $DOCKER build --network host -q \
    "$WORK/ctx" >"$WORK/bk.log" 2>&1
  cat "$WORK/t"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$WORK/warm.t"; : > "$WORK/cold.t"; : > "$WORK/bk.t"
for _ in $(seq "$RUNS"); do
  warm_run >> "$WORK/warm.t"; cold_run >> "$WORK/cold.t"; bk_run >> "$WORK/bk.t"
done
w=$(median < "$WORK/warm.t"); c=$(median < "$WORK/cold.t"); b=$(median < "$WORK/bk.t")
echo
echo "## locked gateway, cold builds (RUNS=$RUNS); $(nproc) cores; $(uptime | sed 's/.*load/load/')"
printf '%-10s %-44s %9s  %s\n' tool operation "median s" "runs (s)"
printf '%-10s %-44s %9s  %s\n' tplbuild "locked, warm .deb cache (no network in step)" "$w" "$(tr '\n' ' ' < "$WORK/warm.t")"
printf '%-10s %-44s %9s  %s\n' tplbuild "locked, no .deb cache (fetched by build)" "$c" "$(tr '\n' ' ' < "$WORK/cold.t")"
printf '%-10s %-44s %9s  %s\n' buildkit "apt-get update && install (unlocked)" "$b" "$(tr '\n' ' ' < "$WORK/bk.t")"
awk -v w="$w" -v c="$c" -v b="$b" 'BEGIN { printf "warm/BuildKit %.2fx, cold/BuildKit %.2fx\n", w/b, c/b }'
