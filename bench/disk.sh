#!/usr/bin/env bash
# buildfiles/vm as a bootable GPT disk: `tplbuild build -o type=disk` (steps
# cached, export cache cold) side by side with the same rootfs made into
# the same disk by hand, the way the issue describes it: untar, `mke2fs -d`,
# `mkfs.vfat -C` + `mmd`/`mcopy` of systemd-boot, kernel, initrd and a
# loader entry, `sfdisk` with the DPS type GUIDs, `dd` at the offsets.
# Goal: tplbuild ≤ 0.8× the pipeline. Then one boot of tplbuild's disk
# under QEMU/OVMF (TCG), timed to the image's self-test line and to
# power-off.
#
# Packages (installed if missing): time e2fsprogs dosfstools mtools fdisk
# qemu-system-x86 ovmf
#
#   bench/disk.sh            TPLBUILD=path RUNS=3 BENCH_ENGINES=private|shared
#                            BENCH_REUSE_WARM=1: keep the last run's warm store
#
# The by-hand pipeline starts from the rootfs tarball (made once by
# tplbuild, not timed) and sizes the ext4 and the ESP as tplbuild does, so
# both write the same amount. It runs twice per round: untarring beside
# its output on disk, as the issue describes it, and untarring into
# /dev/shm as tplbuild flattens (the stronger by-hand: it does not pay for
# 15,000 file creations on a journalling filesystem, whose cost swings
# with the host's disk). tplbuild: each run starts from a copy of
# the warm TPLBUILD_HOME, which holds no export.
#
# BENCH_ENGINES=shared is safe here: this script removes no image or
# cache from the engine (it only runs the warm-up build on it).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
bench_need_packages time e2fsprogs dosfstools mtools fdisk qemu-system-x86 ovmf
bench_setup disk
bench_engines_up docker
bench_publish_template

TPL_BUILD=("${TPL[@]}" build "$BENCH_REPO/buildfiles/vm" --build-arg "BASE=$BASE" --engine docker --progress plain)

if [ -n "${BENCH_REUSE_WARM:-}" ] && [ -d "$WORK/home-warm" ] && [ -s "$WORK/vm.tar" ]; then
  bench_log "reusing the warm store and rootfs tarball of the last run (BENCH_REUSE_WARM)"
else
bench_log "building buildfiles/vm once to warm the step cache, and its rootfs tarball (not timed)"
rm -rf "${WORK:?}/home-warm" "$WORK/vm.tar"
TPLBUILD_HOME="$WORK/home-warm" DOCKER_HOST="$DOCKER_SOCK" "${TPL_BUILD[@]}" >"$WORK/logs/warm.log" 2>&1 \
  || { tail -20 "$WORK/logs/warm.log" >&2; exit 1; }
cp -a "$WORK/home-warm" "$WORK/home-tar"
TPLBUILD_HOME="$WORK/home-tar" DOCKER_HOST="$DOCKER_SOCK" "${TPL_BUILD[@]}" -o "type=tar,dest=$WORK/vm.tar" \
  >"$WORK/logs/tar.log" 2>&1 || { tail -20 "$WORK/logs/tar.log" >&2; exit 1; }
rm -rf "${WORK:?}/home-tar"
fi

# The by-hand pipeline, as one timed shell: $1 tarball, $2 scratch, $3 disk,
# $4 where to untar (default: in the scratch).
# shellcheck disable=SC2016 # expanded by the bash that runs it
PIPELINE='set -euo pipefail
work=$2; root=${4:-$work/root}; mkdir -p "$root"
tar -xpf "$1" --numeric-owner -C "$root"
ver=$(ls "$root/boot" | sed -n "s/^vmlinuz-//p" | sort -V | tail -1)
kib=$(du -sk "$root" | cut -f1)
root_mib=$(( (kib * 13 / 10 / 1024 + 64 + 3) / 4 * 4 ))
mke2fs -t ext4 -d "$root" -F -q -L root "$work/root.img" "${root_mib}M"
content=$(stat -c %s "$root/boot/vmlinuz-$ver" "$root/boot/initrd.img-$ver" \
  "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" | awk "{ s += \$1 } END { print s }")
esp_mib=$(( (content * 2 / 1048576) + 17 )); [ "$esp_mib" -ge 64 ] || esp_mib=64
mkfs.vfat -C -F 32 -s 1 -S 512 -n ESP "$work/esp.img" $((esp_mib * 1024)) >/dev/null
partuuid=$(cat /proc/sys/kernel/random/uuid)
printf "title vm\nlinux /vmlinuz-%s\ninitrd /initrd.img-%s\noptions root=PARTUUID=%s rw console=ttyS0\n" \
  "$ver" "$ver" "$partuuid" > "$work/entry.conf"
printf "default vm.conf\ntimeout 0\n" > "$work/loader.conf"
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.img" ::EFI ::EFI/BOOT ::loader ::loader/entries
mcopy -i "$work/esp.img" "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.img" "$root/boot/vmlinuz-$ver" "::vmlinuz-$ver"
mcopy -i "$work/esp.img" "$root/boot/initrd.img-$ver" "::initrd.img-$ver"
mcopy -i "$work/esp.img" "$work/loader.conf" ::loader/loader.conf
mcopy -i "$work/esp.img" "$work/entry.conf" ::loader/entries/vm.conf
total=$(( 1 + esp_mib + root_mib + 1 ))
truncate -s "${total}M" "$3"
sfdisk --quiet --no-reread --no-tell-kernel "$3" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b, name="esp"
size=${root_mib}MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, uuid=$partuuid, name="root"
EOF
dd if="$work/esp.img" of="$3" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$3" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none'

for _ in $(seq 1 "$RUNS"); do
  rm -rf "${WORK:?}/home-run" "$WORK/tpl.img"; cp -a "$WORK/home-warm" "$WORK/home-run"
  measure tplbuild "vm → disk.img (steps cached)" env TPLBUILD_HOME="$WORK/home-run" DOCKER_HOST="$DOCKER_SOCK" \
    "${TPL_BUILD[@]}" -o "type=disk,dest=$WORK/tpl.img,cmdline=tplbuild.poweroff"
  rm -rf "${WORK:?}/hand" "$WORK/hand.img"; mkdir -p "$WORK/hand"
  measure by-hand "untar, mke2fs, mkfs.vfat+mtools, sfdisk, dd" bash -c "$PIPELINE" bash "$WORK/vm.tar" "$WORK/hand" "$WORK/hand.img"
  rm -rf "${WORK:?}/hand" "$WORK/hand.img" /dev/shm/tplbuild-bench-root; mkdir -p "$WORK/hand"
  measure by-hand "the same, untarred into /dev/shm" bash -c "$PIPELINE" bash "$WORK/vm.tar" "$WORK/hand" "$WORK/hand.img" /dev/shm/tplbuild-bench-root
  rm -rf /dev/shm/tplbuild-bench-root
done

# One boot of tplbuild's disk: QEMU's wall time to power-off, and the
# moment the self-test line appeared on the console.
bench_log "booting tplbuild's disk under OVMF (TCG)"
boot_log="$WORK/logs/boot-console.log"
start=$(date +%s.%N)
timeout 600 qemu-system-x86_64 -machine q35,accel=tcg -m 1024 -nographic -nic none \
  -bios /usr/share/ovmf/OVMF.fd -drive "file=$WORK/tpl.img,format=raw,if=virtio,snapshot=on" \
  </dev/null 2>&1 | while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in *tplbuild-vm:*) echo "$(date +%s.%N)" > "$WORK/marker.at" ;; esac
  done > "$boot_log" || true
end=$(date +%s.%N)
boot_total=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
boot_line="none"
[ -s "$WORK/marker.at" ] && boot_line=$(awk -v a="$start" -v b="$(cat "$WORK/marker.at")" 'BEGIN { printf "%.1f", b - a }')
rm -f "$WORK/marker.at"

echo
echo "## buildfiles/vm → bootable disk: tplbuild vs by hand (RUNS=$RUNS, engines: ${BENCH_ENGINES:-private})"
print_machine
echo "tools:   $(mke2fs -V 2>&1 | head -1); $(fatlabel --version 2>&1 | head -1); $(mcopy --version | head -1); $(sfdisk --version)"
size_of() { if [ -f "$1" ]; then echo "$(du -m --apparent-size "$1" | cut -f1) MiB ($(du -m "$1" | cut -f1) MiB on disk)"; else echo "none"; fi; }
echo "disks:   tplbuild $(size_of "$WORK/tpl.img"), by hand $(size_of "$WORK/hand.img")"
echo
print_table
echo
ratio "disk: tplbuild / by hand" tplbuild "vm → disk.img (steps cached)" \
  by-hand "untar, mke2fs, mkfs.vfat+mtools, sfdisk, dd" "≤ 0.8"
ratio "disk: tplbuild / by hand via /dev/shm" tplbuild "vm → disk.img (steps cached)" \
  by-hand "the same, untarred into /dev/shm" "≤ 0.8"
printf '%-44s  %s s to the self-test line, %s s to power-off (%s)\n' "boot under OVMF, TCG" \
  "$boot_line" "$boot_total" \
  "$(grep -a -m1 -o 'tplbuild-vm:.*' "$boot_log" || echo 'no self-test line')"
echo "(median of $RUNS runs, interleaved; load1 = 1-minute load average when each run started)"
rm -rf "${WORK:?}/home-run" "$WORK/hand"
