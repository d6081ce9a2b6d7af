//! Builds that follow a lockfile: exactly the locked versions, installed
//! from verified .debs with no network, offline from the store.

mod common;

use common::*;

const BODY: &str = "INSTALL openssh-client\nRUN true\n";

/// A template in an OCI layout (no registry needed) and a Buildfile on it.
fn setup(env: &Env) -> String {
    let tar = rootfs_tar().unwrap();
    let layout = format!("oci:{}:base", env.path("templates").display());
    env.ok(&["template", "import", tar.to_str().unwrap(), &layout]);
    let dir = env.path("bf");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(dir.join("Buildfile"), format!("FROM {layout}\n{BODY}")).unwrap();
    dir.join("Buildfile").display().to_string()
}

fn locked_versions(lock: &str) -> Vec<String> {
    let v: toml::Value = toml::from_str(lock).unwrap();
    let mut out: Vec<String> = v["step"][0]["package"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_locked_build_installs_exactly_the_lock_on_docker_and_podman_offline() {
    if !testbed("locked build") {
        return;
    }
    let env = Env::new();
    let f = setup(&env);
    env.ok(&["lock", "-f", &f]);
    let lock = fs_err::read_to_string(format!("{f}.lock")).unwrap();
    let locked = locked_versions(&lock);
    assert!(
        locked.iter().any(|l| l.starts_with("openssh-client ")),
        "{locked:?}"
    );
    env.ok(&["fetch", "-f", &f]);

    let mut digests = vec![];
    for engine in ["docker", "podman"] {
        let out = env.path(&format!("out-{engine}"));
        // --offline: nothing may be downloaded; the step itself runs with
        // no network at all.
        let d = env.ok(&[
            "build",
            "-f",
            &f,
            "--engine",
            engine,
            "--offline",
            "--no-cache",
            "--progress",
            "plain",
            "-o",
            &format!("type=dir,dest={}", out.display()),
        ]);
        digests.push(d.trim().to_string());
        let status = fs_err::read_to_string(out.join("var/lib/dpkg/status")).unwrap();
        let installed = tplbuild::template::rootfs::parse_dpkg_status(&status);
        for l in &locked {
            let (name, version) = l.split_once(' ').unwrap();
            assert!(
                installed
                    .iter()
                    .any(|p| p.name == name && p.version == version),
                "{engine}: {name} {version} from the lock is not installed"
            );
        }
    }
    assert_eq!(
        digests[0], digests[1],
        "Docker and Podman give the same image"
    );
}

#[test]
fn an_offline_build_that_needs_a_download_names_what_is_missing() {
    if !testbed("offline without debs") {
        return;
    }
    let env = Env::new();
    let f = setup(&env);
    env.ok(&["lock", "-f", &f]);
    let out = env.run(&["build", "-f", &f, "--engine", "docker", "--offline"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("openssh-client"), "{err}");
    assert!(err.contains("tplbuild fetch"), "{err}");
}

#[test]
fn a_corrupted_stored_deb_is_detected_and_fetched_again() {
    if !testbed("tampered deb") {
        return;
    }
    let env = Env::new();
    let f = setup(&env);
    env.ok(&["lock", "-f", &f]);
    env.ok(&["fetch", "-f", &f]);
    let lock: toml::Value =
        toml::from_str(&fs_err::read_to_string(format!("{f}.lock")).unwrap()).unwrap();
    let sha = lock["step"][0]["package"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = env.home().join("store-v1/blobs/sha256").join(&sha);
    let mut bytes = fs_err::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    fs_err::write(&blob, bytes).unwrap();
    let out = env.run(&[
        "build",
        "-f",
        &f,
        "--engine",
        "docker",
        "--progress",
        "plain",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt"), "{err}");
    // The stored .deb is whole again.
    assert_eq!(
        sh_ok(&format!("sha256sum {}", blob.display()))
            .split_whitespace()
            .next()
            .unwrap(),
        sha
    );
}

#[test]
fn a_buildfile_changed_after_locking_is_an_error_with_the_fix() {
    if !testbed("lock drift") {
        return;
    }
    let env = Env::new();
    let f = setup(&env);
    env.ok(&["lock", "-f", &f]);
    let text = fs_err::read_to_string(&f)
        .unwrap()
        .replace("INSTALL openssh-client", "INSTALL openssh-client less");
    fs_err::write(&f, text).unwrap();
    let out = env.run(&["build", "-f", &f, "--engine", "docker"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tplbuild lock"), "{err}");
    assert!(err.contains("Buildfile:2"), "{err}");
}

#[test]
fn a_copy_before_a_locked_step_that_changed_is_a_warning_and_the_lock_still_holds() {
    if !testbed("lock replay drift") {
        return;
    }
    let env = Env::new();
    let f = setup(&env);
    let dir = env.path("bf");
    fs_err::write(dir.join("motd"), "first\n").unwrap();
    let text = fs_err::read_to_string(&f).unwrap().replace(
        "INSTALL openssh-client",
        "COPY motd /etc/motd\nINSTALL openssh-client",
    );
    fs_err::write(&f, text).unwrap();
    env.ok(&["lock", "-f", &f]);
    let lock = fs_err::read_to_string(format!("{f}.lock")).unwrap();
    assert!(lock.contains("replayed = \"sha256:"), "{lock}");
    env.ok(&["fetch", "-f", &f]);

    // The copied file changes: the build says the lock was resolved on
    // another state, and installs the locked packages all the same.
    fs_err::write(dir.join("motd"), "second\n").unwrap();
    let out = env.run(&["build", "-f", &f, "--engine", "docker", "--offline"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Buildfile:3") && err.contains("changed since locking"),
        "{err}"
    );
    assert_eq!(fs_err::read_to_string(format!("{f}.lock")).unwrap(), lock);
}

#[test]
fn an_air_gapped_machine_builds_from_a_bundle_offline() {
    if !testbed("bundle") {
        return;
    }
    template();
    let online = Env::new();
    let dir = online.path("bf");
    fs_err::create_dir_all(&dir).unwrap();
    let f = dir.join("Buildfile");
    fs_err::write(&f, format!("FROM {TEMPLATE}\n{BODY}")).unwrap();
    let f = f.display().to_string();
    online.ok(&["lock", "-f", &f]);
    let built = online.ok(&["build", "-f", &f, "--engine", "docker"]);
    let bundle = online.path("bundle");
    online.ok(&["bundle", "-f", &f, bundle.to_str().unwrap()]);

    // The other machine: only the bundle, and no registry may be asked (it
    // is not even named insecure, so any request would fail).
    let offline = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .arg("--home")
            .arg(&bundle)
            .env("TPLBUILD_CONFIG_DIR", online.path("no-config"))
            .args(args)
            .output()
            .unwrap();
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let out = offline(&["build", "-f", &f, "--offline", "--engine", "docker"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), built.trim());
    // A new step runs from the bundle's layers, with no network.
    let text = fs_err::read_to_string(&f).unwrap() + "RUN echo airgap > /airgap\n";
    fs_err::write(&f, text).unwrap();
    let tar = online.path("airgap.tar");
    let out = offline(&[
        "build",
        "-f",
        &f,
        "--offline",
        "--engine",
        "docker",
        "--network",
        "none",
        "-o",
        &format!("type=tar,dest={}", tar.display()),
    ]);
    assert!(out.status.success());
    let listing = sh_ok(&format!("tar -tf {}", tar.display()));
    assert!(listing
        .lines()
        .any(|l| l.trim_start_matches("./") == "airgap"));

    // A prune of the bundle is refused: it is what the offline machine has.
    let out = offline(&["prune", "--all"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a bundle"));
    let out = offline(&["prune", "--all", "--force", "--dry-run"]);
    assert!(out.status.success());
}

#[test]
fn the_locked_gateway_example_gives_the_same_digest_in_two_empty_stores() {
    if !testbed("locked gateway") {
        return;
    }
    template();
    let first = Env::new();
    // A copy of the example, so the lockfile is written beside the copy.
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("buildfiles/gateway");
    let dir = first.path("gateway");
    sh_ok(&format!("cp -a {} {}", src.display(), dir.display()));
    let f = dir.join("Buildfile").display().to_string();
    first.ok(&["lock", "-f", &f]);
    let a = first.ok(&["build", "-f", &f, "--engine", "docker"]);
    let second = Env::new();
    let b = second.ok(&["build", "-f", &f, "--engine", "podman"]);
    assert_eq!(a.trim(), b.trim(), "two cold locked builds differ");
}
