#!/usr/bin/env bash
# Issue 6's figure: a fresh CI machine building the gateway example to ext4
# with a registry cache that another machine pushed, side by side with
# BuildKit's inline cache (`docker build --cache-from`) followed by what a
# BuildKit user does to get an ext4: `--output type=tar` + untar + mke2fs -d.
#
# "Fresh" means: tplbuild with an empty TPLBUILD_HOME; BuildKit with its
# build cache pruned and the cached image removed from the daemon. Both pull
# from the loopback registry. Prints a table; asserts nothing.
#
#   TPLBUILD=path  (default ./target/release/tplbuild)   RUNS=3
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
RUNS="${RUNS:-3}"
TPLBUILD="${TPLBUILD:-$REPO/target/release/tplbuild}"
REG=127.0.0.1:5000
WORK="${BENCH_WORK:-/var/tmp/tplbuild-bench}/ci-cache"
bash scripts/testbed >&2
eval "$(bash scripts/testbed env)"
[ -x "$TPLBUILD" ] || { echo "no binary at $TPLBUILD (cargo build --release)" >&2; exit 1; }
rm -rf "$WORK"; mkdir -p "$WORK"
T=("$TPLBUILD" --insecure-registry "$REG")
# Debian's docker.io CLI (20.10) has BuildKit built in; a newer CLI earlier on
# PATH may lack the buildx plugin.
docker() { /usr/bin/docker "$@"; }
TAG="$(date +%s)"

"${T[@]}" template import "$TPLBUILD_TEST_ROOTFS_TAR" "$REG/platform/base:1" >/dev/null 2>&1

# The equivalent Dockerfile (same template, packages, files and command).
CTX="$WORK/ctx"; mkdir -p "$CTX"; cp -a buildfiles/gateway/overlay "$CTX/"
cat > "$CTX/Dockerfile" <<DOCKERFILE
FROM $REG/platform/base:1
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends openssh-server curl
COPY overlay/ /
RUN useradd --create-home --uid 1000 --shell /bin/bash ops && sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin no/' /etc/ssh/sshd_config
LABEL org.opencontainers.image.title=Gateway org.opencontainers.image.version=1.0.0
DOCKERFILE

# Machine A: build once and push each tool's cache (not timed).
TPL_CACHE="$REG/bench/gateway-cache:$TAG"
BK_CACHE="$REG/bench/gateway-bk:$TAG"
TPLBUILD_HOME="$WORK/home-a" "${T[@]}" build -f buildfiles/gateway/Buildfile --engine docker \
  --progress plain --cache-to "$TPL_CACHE" >"$WORK/a-tplbuild.log" 2>&1
DOCKER_BUILDKIT=1 docker build --network host -q --build-arg BUILDKIT_INLINE_CACHE=1 \
  -t "$BK_CACHE" "$CTX" >"$WORK/a-buildkit.log" 2>&1
docker push -q "$BK_CACHE" >/dev/null

tpl_run() {
  rm -rf "$WORK/home-b" "$WORK/tpl.ext4"
  TPLBUILD_HOME="$WORK/home-b" /usr/bin/time -f '%e %M' -o "$WORK/time" "${T[@]}" build \
    -f buildfiles/gateway/Buildfile --engine docker --progress plain \
    --cache-from "$TPL_CACHE" -o "type=ext4,dest=$WORK/tpl.ext4" >"$WORK/b-tplbuild.log" 2>&1
  cat "$WORK/time"
}

bk_run() {
  docker builder prune -af >/dev/null 2>&1 || true
  docker rmi -f "$BK_CACHE" "$REG/platform/base:1" >/dev/null 2>&1 || true
  rm -rf "$WORK/bk-root" "$WORK/bk.ext4"; mkdir -p "$WORK/bk-root"
  /usr/bin/time -f '%e %M' -o "$WORK/time" sh -c "
    DOCKER_BUILDKIT=1 /usr/bin/docker build --network host -q --cache-from '$BK_CACHE' \
      --output type=tar,dest=- '$CTX' | tar -x -C '$WORK/bk-root' &&
    mke2fs -q -t ext4 -d '$WORK/bk-root' '$WORK/bk.ext4' 512M" >"$WORK/b-buildkit.log" 2>&1
  cat "$WORK/time"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$WORK/tpl.times"; : > "$WORK/bk.times"
for _ in $(seq "$RUNS"); do
  tpl_run >> "$WORK/tpl.times"
  bk_run >> "$WORK/bk.times"
done
containers=$(grep -c "^using " "$WORK/b-tplbuild.log" || true)
tm=$(cut -d' ' -f1 "$WORK/tpl.times" | median); bm=$(cut -d' ' -f1 "$WORK/bk.times" | median)
trss=$(cut -d' ' -f2 "$WORK/tpl.times" | sort -n | tail -1); brss=$(cut -d' ' -f2 "$WORK/bk.times" | sort -n | tail -1)
echo
echo "## fresh CI machine, gateway → ext4 with a registry cache (RUNS=$RUNS)"
echo "machine: $(nproc) cores; $(uptime | sed 's/.*load/load/')"
printf '%-10s %-48s %9s  %-24s %8s\n' tool operation "median s" "runs (s)" "RSS MiB"
printf '%-10s %-48s %9s  %-24s %8s\n' tplbuild "build --cache-from -o type=ext4" "$tm" \
  "$(cut -d' ' -f1 "$WORK/tpl.times" | tr '\n' ' ')" "$((trss / 1024))"
printf '%-10s %-48s %9s  %-24s %8s\n' buildkit "build --cache-from (inline) | untar | mke2fs" "$bm" \
  "$(cut -d' ' -f1 "$WORK/bk.times" | tr '\n' ' ')" "$((brss / 1024))"
awk -v t="$tm" -v b="$bm" 'BEGIN { r = t / b; printf "ratio tplbuild / BuildKit: %.2fx (target <= 0.5: %s)\n", r, (r <= 0.5 ? "met" : "NOT met") }'
echo "tplbuild engine connections in the last run: $containers (0 = no container ran)"
