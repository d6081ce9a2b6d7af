//! `-o type=disk` for arm64 end to end: `buildfiles/vm` built once for
//! linux/arm64 under qemu-user (FROM the test bed's arm64 minbase, with
//! Debian's arm64 kernel and systemd-boot), exported to a raw disk, its
//! table read with `sfdisk --json`, and the disk booted under
//! `qemu-system-aarch64 -M virt` with the AAVMF firmware (TCG) until the
//! image's self-test unit prints its line and powers off.
//!
//! The emulated build is the slow part (the kernel and systemd under
//! qemu-user); it runs once and both tests read its disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// This file's own tag for the arm64 template, so that no other test
/// binary sees (or races on) it.
const ARM64_TEMPLATE: &str = "127.0.0.1:5000/tests-disk-arm64/base:1";
/// The kernel command line the boot needs besides the image's
/// `console=ttyS0`: the virt machine's serial port is a PL011, `ttyAMA0`;
/// as the last `console=` it is the one `/dev/console` (and so the
/// self-test line) goes to. `tplbuild.poweroff` makes the self-test unit
/// power the VM off.
const CMDLINE: &str = "cmdline=console=ttyAMA0 tplbuild.poweroff";
/// UEFI firmware for the virt machine, from Debian's `qemu-efi-aarch64`.
const AAVMF: &str = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd";
/// What a boot under TCG may take (105-153 s here, on a loaded machine)
/// before the test fails.
const BOOT_LIMIT: Duration = Duration::from_secs(10 * 60);

/// The root partition type of the Discoverable Partitions Specification
/// for arm64 ("Root Partition (64-bit ARM/AArch64)").
const DPS_ROOT_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";

/// One arm64 build of `buildfiles/vm`, shared by the tests of this file.
struct Vm {
    env: Env,
}

impl Vm {
    fn raw(&self) -> PathBuf {
        self.env.path("out/vm.img")
    }
}

/// How many tests use [`vm`]; the last of them to end removes the build's
/// folder (a static is never dropped). Keep equal to the `vm()` callers.
const VM_USERS: usize = 2;

/// The build, once per test binary; `None` (and a note) without the test
/// bed or its arm64 rootfs, which fail instead where the bed is required.
fn vm(what: &str) -> Option<SharedUse<Vm>> {
    if !testbed(what) {
        return None;
    }
    let arm64 = foreign_rootfs(what, "arm64", arm64_rootfs_tar())?;
    static VM: OnceLock<Vm> = OnceLock::new();
    static ENDED: AtomicUsize = AtomicUsize::new(0);
    let vm = VM.get_or_init(|| {
        let env = Env::new();
        env.ok(&[
            "template",
            "import",
            arm64.to_str().unwrap(),
            ARM64_TEMPLATE,
        ]);
        let buildfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("buildfiles/vm");
        let started = Instant::now();
        env.ok(&[
            "build",
            buildfile.to_str().unwrap(),
            "--build-arg",
            &format!("BASE={ARM64_TEMPLATE}"),
            "--platform",
            "linux/arm64",
            "--progress",
            "plain",
            "-o",
            &format!(
                "type=disk,dest={},{CMDLINE}",
                env.path("out/vm.img").display()
            ),
        ]);
        eprintln!(
            "built buildfiles/vm for linux/arm64 in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        Vm { env }
    });
    Some(SharedUse::new(vm, vm.env.dir.path(), &ENDED, VM_USERS))
}

#[test]
fn the_arm64_disk_has_the_arm64_root_type_and_boots_aa64_systemd_boot() {
    let Some(vm) = vm("the arm64 disk's partition table") else {
        return;
    };
    let parts = partitions(&vm.raw());
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(
        parts[1]["type"], DPS_ROOT_ARM64,
        "systemd-gpt-auto-generator looks for arm64's root type on arm64"
    );

    // The ESP holds the arm64 boot loader where firmware looks for it,
    // and the arm64 kernel.
    let esp = vm.env.path("esp.img");
    sh_ok(&format!(
        "dd if={} of={} bs=512 skip={} count={} status=none",
        vm.raw().display(),
        esp.display(),
        parts[0]["start"],
        parts[0]["size"]
    ));
    let listing = sh_ok(&format!("mdir -/ -b -i {} ::", esp.display()));
    assert!(listing.contains("::/EFI/BOOT/BOOTAA64.EFI"), "{listing}");
    assert!(!listing.contains("BOOTX64.EFI"), "{listing}");
    let kernel = listing
        .lines()
        .find(|l| l.starts_with("::/vmlinuz-"))
        .unwrap_or_else(|| panic!("no kernel on the ESP:\n{listing}"));
    assert!(kernel.ends_with("-arm64"), "{kernel}");
    let efi = vm.env.path("BOOTAA64.EFI");
    sh_ok(&format!(
        "mcopy -i {} ::/EFI/BOOT/BOOTAA64.EFI {}",
        esp.display(),
        efi.display()
    ));
    let kind = sh_ok(&format!("file -b {}", efi.display()));
    assert!(kind.contains("Aarch64"), "BOOTAA64.EFI is {kind}");
}

#[test]
fn the_arm64_disk_boots_under_qemu_system_aarch64_to_the_self_test_line() {
    let Some(vm) = vm("booting the arm64 disk") else {
        return;
    };
    let mut qemu = Command::new("qemu-system-aarch64");
    qemu.args(["-machine", "virt,accel=tcg", "-cpu", "cortex-a57"])
        .args(["-m", "1024", "-nographic", "-nic", "none"])
        .args(["-bios", AAVMF])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            vm.raw().display()
        ));
    let line = boot_to_self_test_line(qemu, &vm.env.path("boot.log"), BOOT_LIMIT);
    assert_eq!(
        line,
        "tplbuild-vm: root=/dev/vda2 ext4 sshd=active port22=listening release=vm built by tplbuild",
        "root must be the disk's second (root) partition, ext4, with the COPY'd file; \
         sshd must have made its host keys at boot and be listening"
    );
}
