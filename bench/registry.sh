#!/usr/bin/env bash
# Push and pull a ~1 GiB template through the loopback registry: tplbuild
# side by side with skopeo (issue 2: tplbuild's time ≤ skopeo's, peak RSS
# under 100 MiB whatever the blob size).
#
# Packages (installed if missing): time skopeo
#
#   bench/registry.sh        TPLBUILD=path RUNS=3 BIG_MB=850
#
# The template is the test bed's mmdebstrap rootfs plus BIG_MB of random
# (incompressible) files, imported once to an OCI layout (timed once, on its
# own). Each push goes to a fresh repository; each pull to an empty
# TPLBUILD_HOME or an empty OCI layout folder.
#
# skopeo remembers where it has pushed a blob before (its blob info cache in
# /var/lib/containers/cache) and would then mount the blob from that
# repository instead of uploading it, so from the second push on it would
# not move the gigabyte at all. Each skopeo push therefore runs in a private
# mount namespace with an empty tmpfs over that folder: every push uploads,
# as tplbuild's does (it has no source repository to mount from when the
# source is an OCI layout).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_need_packages time skopeo
bench_setup registry
BIG_MB="${BIG_MB:-850}"
TPL=("$TPLBUILD" --insecure-registry "$REG")
ID="$(date +%s)"   # keeps repositories fresh across script runs

ROOTFS="$WORK/rootfs"
LAYOUT="$WORK/layout"
if [ ! -s "$WORK/rootfs.done" ] || [ "$(cat "$WORK/rootfs.done")" != "$BIG_MB" ]; then
  bench_log "making the rootfs: $TPLBUILD_TEST_ROOTFS_TAR + $BIG_MB MB of random files"
  rm -rf "$ROOTFS" "$LAYOUT" "$WORK/rootfs.done"
  mkdir -p "$ROOTFS/opt/bench-random"
  tar -xpf "$TPLBUILD_TEST_ROOTFS_TAR" --numeric-owner -C "$ROOTFS"
  for i in $(seq 1 $((BIG_MB / 50))); do
    head -c 50M /dev/urandom > "$ROOTFS/opt/bench-random/blob-$i"
  done
  [ $((BIG_MB % 50)) -eq 0 ] || head -c "$((BIG_MB % 50))M" /dev/urandom > "$ROOTFS/opt/bench-random/blob-rest"
  echo "$BIG_MB" > "$WORK/rootfs.done"
fi

fresh_home() { rm -rf "${WORK:?}/home"; mkdir -p "$WORK/home"; }

bench_log "importing the template once (timed on its own)"
rm -rf "$LAYOUT"; fresh_home
TPLBUILD_HOME="$WORK/home" measure tplbuild "import dir → oci layout (1 run)" \
  "${TPL[@]}" template import "$ROOTFS" "oci:$LAYOUT:big"
if [ ! -f "$LAYOUT/index.json" ]; then
  echo "bench: the import failed; nothing to push" >&2
  print_table
  exit 0
fi
LAYOUT_MB=$(du -sm "$LAYOUT" | cut -f1)

# skopeo in a mount namespace whose blob info cache is empty (see the top).
mkdir -p /var/lib/containers/cache
SKOPEO_NOCACHE=(unshare --mount --propagation private -- sh -c
  'mount -t tmpfs bench-blob-cache /var/lib/containers/cache && exec skopeo "$@"' skopeo)

# Interleaved, and who goes first alternates, so that neither tool always
# runs on the heels of the other's disk writes.
push_tpl() {
  fresh_home
  TPLBUILD_HOME="$WORK/home" measure tplbuild "push (oci layout → registry)" \
    "${TPL[@]}" copy "oci:$LAYOUT:big" "$REG/bench/big-tpl-$ID-$1:1"
}
push_sko() {
  measure skopeo "push (oci layout → registry)" \
    "${SKOPEO_NOCACHE[@]}" copy --dest-tls-verify=false "oci:$LAYOUT:big" "docker://$REG/bench/big-sko-$ID-$1:1"
}
for n in $(seq 1 "$RUNS"); do
  if [ $((n % 2)) = 1 ]; then push_tpl "$n"; push_sko "$n"; else push_sko "$n"; push_tpl "$n"; fi
done

# Where tplbuild's push time goes: `copy` from an OCI layout first copies
# the blobs into its store (verified), then uploads from there. This row is
# that first half alone.
for _ in $(seq 1 "$RUNS"); do
  fresh_home
  TPLBUILD_HOME="$WORK/home" measure tplbuild "(part of push: layout → store)" \
    "${TPL[@]}" pull "oci:$LAYOUT:big"
done

# Both tools pull the same image: the one tplbuild pushed first.
SRC="$REG/bench/big-tpl-$ID-1:1"
pull_tpl() {
  fresh_home
  TPLBUILD_HOME="$WORK/home" measure tplbuild "pull (registry → empty store)" \
    "${TPL[@]}" pull "$SRC"
  PULLED_MB=$(du -sm "$WORK/home" | cut -f1)
}
pull_sko() {
  rm -rf "${WORK:?}/pulled"
  measure skopeo "pull (registry → empty oci dir)" \
    skopeo copy --src-tls-verify=false "docker://$SRC" "oci:$WORK/pulled:x"
}
for n in $(seq 1 "$RUNS"); do
  if [ $((n % 2)) = 1 ]; then pull_tpl; pull_sko; else pull_sko; pull_tpl; fi
done
rm -rf "${WORK:?}/home" "$WORK/pulled"

echo
echo "## tplbuild vs skopeo: a ${LAYOUT_MB} MB template through $REG (RUNS=$RUNS)"
print_machine
echo "skopeo:  $(skopeo --version)"
echo "template: $(du -sm "$ROOTFS" | cut -f1) MB rootfs ($BIG_MB MB random); OCI layout ${LAYOUT_MB} MB; tplbuild store after pull ${PULLED_MB} MB"
echo
print_table
echo
ratio "push: tplbuild / skopeo" tplbuild "push (oci layout → registry)" skopeo "push (oci layout → registry)" "≤ 1.0"
ratio "pull: tplbuild / skopeo" tplbuild "pull (registry → empty store)" skopeo "pull (registry → empty oci dir)" "≤ 1.0"
for op in "push (oci layout → registry)" "pull (registry → empty store)"; do
  printf '%-44s  %6s MiB (target < 100: %s)\n' "tplbuild peak RSS, ${op%% (*}" "$(max_rss_mib tplbuild "$op")" \
    "$(awk -v m="$(max_rss_mib tplbuild "$op")" 'BEGIN { print (m + 0 > 0 && m < 100 ? "met" : "NOT met") }')"
done
echo "(median of $RUNS runs, tplbuild and skopeo interleaved, alternating who goes first; load1 = 1-minute load average when each run started)"
