//! Shared helpers for the end-to-end tests: the test bed's addresses, a
//! fresh store per test, running the real binary, and one template
//! imported once per test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const REGISTRY: &str = "127.0.0.1:5000";
pub const TEMPLATE: &str = "127.0.0.1:5000/platform/base:1";

/// The mmdebstrap tarball made by `scripts/testbed`.
pub fn rootfs_tar() -> Option<PathBuf> {
    let p = std::env::var_os("TPLBUILD_TEST_ROOTFS_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/tplbuild-testbed/cache/bookworm-minbase.tar".into());
    p.is_file().then_some(p)
}

/// The arm64 minbase tarball made by `scripts/testbed` (under qemu).
pub fn arm64_rootfs_tar() -> Option<PathBuf> {
    let p = std::env::var_os("TPLBUILD_TEST_ARM64_ROOTFS_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/tplbuild-testbed/cache/bookworm-minbase-arm64.tar".into());
    p.is_file().then_some(p)
}

/// The armhf (linux/arm/v7) minbase tarball made by `scripts/testbed`.
pub fn armhf_rootfs_tar() -> Option<PathBuf> {
    let p = std::env::var_os("TPLBUILD_TEST_ARMHF_ROOTFS_TAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/lib/tplbuild-testbed/cache/bookworm-minbase-armhf.tar".into());
    p.is_file().then_some(p)
}

/// `rootfs` (one of the two above) for `what`, or `None` with a note when
/// the test bed has not made it; where the bed is required that fails.
pub fn foreign_rootfs(what: &str, arch: &str, rootfs: Option<PathBuf>) -> Option<PathBuf> {
    if rootfs.is_none() {
        assert!(
            !testbed_required(),
            "{what}: the {arch} rootfs is missing (scripts/testbed makes it)"
        );
        eprintln!("skipping {what}: no {arch} rootfs (run scripts/testbed)");
    }
    rootfs
}

/// One test's use of something a file's tests share through a static
/// (a build of gigabytes): statics are never dropped, so the last of
/// `users` uses to end removes `dir`. `ended` is the file's own counter.
pub struct SharedUse<T: 'static> {
    value: &'static T,
    dir: &'static Path,
    ended: &'static std::sync::atomic::AtomicUsize,
    users: usize,
}

impl<T> SharedUse<T> {
    pub fn new(
        value: &'static T,
        dir: &'static Path,
        ended: &'static std::sync::atomic::AtomicUsize,
        users: usize,
    ) -> Self {
        SharedUse {
            value,
            dir,
            ended,
            users,
        }
    }
}

impl<T> std::ops::Deref for SharedUse<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T> Drop for SharedUse<T> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.ended.fetch_add(1, Ordering::SeqCst) + 1 == self.users {
            let _ = fs_err::remove_dir_all(self.dir);
        }
    }
}

/// True when the test bed is up; otherwise the test prints why it skips.
pub fn testbed(what: &str) -> bool {
    let up = rootfs_tar().is_some() && std::net::TcpStream::connect(REGISTRY).is_ok();
    if !up {
        eprintln!("skipping {what}: the test bed is not up (run scripts/testbed)");
        if testbed_required() {
            panic!("{what}: the test bed must be up here (scripts/test and CI require it)");
        }
    }
    up
}

/// Whether a missing part of the test bed fails a test instead of
/// skipping it: `scripts/test` (so CI) sets TPLBUILD_TEST_REQUIRE_TESTBED,
/// for a suite that skipped its end-to-end tests must not pass.
pub fn testbed_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("TPLBUILD_TEST_REQUIRE_TESTBED").is_some()
}

pub fn has_socket(path: &str) -> bool {
    let there = Path::new(path).exists();
    if !there && testbed_required() {
        panic!("{path} is absent, and the test bed is required here");
    }
    there
}

/// A temporary TPLBUILD_HOME and working folder for one test.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::Builder::new()
                .prefix("tplbuild-test-")
                .tempdir_in(scratch())
                .unwrap(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `tplbuild ARGS` with this env's store and the loopback registry
    /// named insecure.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("TPLBUILD_HOME", self.home())
            .env("TPLBUILD_CONFIG_DIR", self.dir.path().join("config"))
            .env_remove("SOURCE_DATE_EPOCH")
            .arg("--insecure-registry")
            .arg(REGISTRY);
        c
    }

    /// [`Env::cmd`] aimed at the engine `vars` name (`DOCKER_HOST`,
    /// `CONTAINER_HOST`, …) and at nothing the machine's environment or
    /// Docker config may name.
    pub fn cmd_with_engine(&self, vars: &[(&str, &str)]) -> Command {
        let mut c = self.cmd();
        for v in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_TLS",
            "DOCKER_CERT_PATH",
            "CONTAINER_HOST",
        ] {
            c.env_remove(v);
        }
        c.env("DOCKER_CONFIG", self.path("docker-config"));
        for (k, v) in vars {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd().args(args).output().unwrap();
        eprintln!(
            "$ tplbuild {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Run and expect success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tplbuild {} failed ({}); the end of its stderr:\n{}",
            args.join(" "),
            out.status,
            last_lines(&String::from_utf8_lossy(&out.stderr), 25)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The tplbuild binary under test: `TPLBUILD_TEST_BIN` when set (engineers
/// sharing one CARGO_TARGET_DIR from several worktrees overwrite each
/// other's `target/debug/tplbuild`; a copy of one's own stays put), else
/// the one cargo built for this test.
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("TPLBUILD_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tplbuild").into())
}

/// The last `n` lines of `text`, so that a failure's cause is in the panic
/// message even where a CI log shows only the start and end of the output.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where test folders go: on the same disk as the store, not a tmpfs.
pub fn scratch() -> PathBuf {
    let p = std::env::var_os("TPLBUILD_TEST_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    fs_err::create_dir_all(&p).unwrap();
    p
}

/// Import the test bed's rootfs as `TEMPLATE` once per test binary and
/// return its digest. Importing is deterministic, so several binaries
/// doing it give the same digest.
pub fn template() -> String {
    static DIGEST: OnceLock<String> = OnceLock::new();
    DIGEST
        .get_or_init(|| {
            let env = Env::new();
            let tar = rootfs_tar().expect("the test bed's rootfs tarball");
            let out = env.ok(&["template", "import", tar.to_str().unwrap(), TEMPLATE]);
            let d = out.trim().to_string();
            // Keep nothing of this env but the registry copy.
            d
        })
        .clone()
}

pub fn sh(cmd: &str) -> Output {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    eprintln!(
        "$ {cmd}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The sha256 of a file, as `sha256sum` prints it.
pub fn sha256sum(path: &Path) -> String {
    sh_ok(&format!("sha256sum {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

pub fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}); the end of its stderr:\n{}",
        out.status,
        last_lines(&String::from_utf8_lossy(&out.stderr), 25)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON events `--progress json` printed on stdout.
pub fn json_events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The closing `done` event of a build.
pub fn done(events: &[serde_json::Value]) -> serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "done")
        .cloned()
        .expect("a done event")
}

/// Each step's status (`HIT`, `MISS`, `HIT (registry)`), in order.
pub fn statuses(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "step-done")
        .map(|e| e["status"].as_str().unwrap().to_string())
        .collect()
}

/// For proxies in front of an engine's HTTP API: read up to the end of a
/// request head; `None` if the client closed first.
pub async fn read_head<R: tokio::io::AsyncRead + Unpin>(client: &mut R) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// The head with `Connection: close`, so that each connection carries one
/// request and a proxy sees every request line. Upgrades (attach) keep
/// their own Connection header.
pub fn one_request_per_connection(head: &str) -> String {
    if head.to_ascii_lowercase().contains("\r\nupgrade:") {
        return head.to_string();
    }
    let mut out: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    out.push("Connection: close");
    format!("{}\r\n\r\n", out.join("\r\n"))
}

/// Boot `qemu` (a `qemu-system-*` command with its machine, firmware and
/// disk set, `-nographic`) with its serial console written to `log`, wait
/// at most `limit` for the VM to power off, and return the self-test line
/// that `buildfiles/vm` prints (from `tplbuild-vm:` to the end of its
/// console line). Panics with the end of the console if the VM does not
/// power off in time, prints no such line, or qemu fails.
pub fn boot_to_self_test_line(
    mut qemu: std::process::Command,
    log: &Path,
    limit: std::time::Duration,
) -> String {
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let program = qemu.get_program().to_string_lossy().into_owned();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(fs_err::File::create(log).unwrap().into_parts().0)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e} (the test bed installs it)"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let console = String::from_utf8_lossy(&fs_err::read(log).unwrap()).into_owned();
    eprintln!(
        "{program}: booted and powered off in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let status = status.unwrap_or_else(|| {
        panic!(
            "no power-off within {limit:?}; the end of the console:\n{}",
            last_lines(&console, 40)
        )
    });
    let line = console
        .lines()
        // The line is the unit's own, but the console is shared: systemd's
        // status or a prompt may come before it.
        .find_map(|l| l.find("tplbuild-vm:").map(|at| l[at..].trim().to_string()))
        .unwrap_or_else(|| {
            panic!(
                "no self-test line ({status}); the end of the console:\n{}",
                last_lines(&console, 40)
            )
        });
    assert!(status.success(), "{program} exited with {status}");
    line
}

/// `sfdisk --json` of a disk image: the partitions, in table order.
pub fn partitions(disk: &Path) -> Vec<serde_json::Value> {
    let json: serde_json::Value =
        serde_json::from_str(&sh_ok(&format!("sfdisk --json {}", disk.display()))).unwrap();
    assert_eq!(json["partitiontable"]["label"], "gpt", "{json}");
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone()
}
