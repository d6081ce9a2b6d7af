//! `tplbuild lock` and `tplbuild fetch` against the test bed: apt in a
//! container on the loopback template, .debs from Debian's archive.

mod common;

use common::{testbed, Env};
use tplbuild::lock::Lockfile;
use tplbuild::oci::Digest;
use tplbuild::store::Store;

const MINIMAL: &str = "# The smallest useful Buildfile.\n\
ARG BASE=127.0.0.1:5000/platform/base:1\n\
FROM ${BASE}\n\
INSTALL hello\n";

/// An env with the minimal Buildfile, locked once.
fn locked(what: &str) -> Option<(Env, std::path::PathBuf)> {
    if !testbed(what) {
        return None;
    }
    common::template();
    let env = Env::new();
    let bf = env.path("Buildfile");
    fs_err::write(&bf, MINIMAL).unwrap();
    env.ok(&["lock", "-f", bf.to_str().unwrap()]);
    Some((env, bf))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn lock_lists_hello_with_version_sha256_and_size_and_relocking_is_byte_identical() {
    let Some((env, bf)) = locked("lock_minimal") else {
        return;
    };
    let path = Lockfile::path_for(&bf);
    let first = fs_err::read(&path).unwrap();
    let lock = Lockfile::load(&path).unwrap();
    let step = lock.for_step(0).expect("the INSTALL step is locked");
    assert_eq!(step.instruction, "INSTALL hello");
    let hello = step.packages.iter().find(|p| p.name == "hello").unwrap();
    assert!(!hello.version.is_empty());
    assert_eq!(hello.sha256.len(), 64);
    assert!(hello.size > 0);
    assert!(hello.filename.starts_with("pool/"), "{}", hello.filename);
    assert!(!lock.archive.is_empty(), "the archive suites are recorded");

    // Again with the lock in place: nothing to change.
    let out = env.ok(&["lock", "-f", bf.to_str().unwrap()]);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(fs_err::read(&path).unwrap(), first);
    // And from scratch: the same bytes.
    fs_err::remove_file(&path).unwrap();
    env.ok(&["lock", "-f", bf.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8(fs_err::read(&path).unwrap()).unwrap(),
        String::from_utf8(first).unwrap()
    );
}

#[test]
fn fetch_stores_the_deb_under_its_locked_sha256_and_a_second_fetch_downloads_nothing() {
    let Some((env, bf)) = locked("fetch") else {
        return;
    };
    let lock = Lockfile::load(&Lockfile::path_for(&bf)).unwrap();
    let out = env.ok(&["fetch", "-f", bf.to_str().unwrap()]);
    let n = lock.debs().len();
    assert!(out.contains(&format!("{n} .deb(s) downloaded")), "{out}");
    let store = Store::open(&env.home()).unwrap();
    for p in lock.debs() {
        let d = Digest::parse(&format!("sha256:{}", p.sha256)).unwrap();
        let bytes = fs_err::read(store.blob_path(&d)).unwrap();
        assert_eq!(Digest::of(&bytes), d, "{} is stored intact", p.name);
        assert_eq!(bytes.len() as u64, p.size);
    }
    let step = lock.for_step(0).unwrap();
    let paths = tplbuild::lock::deb_paths(&store, step);
    assert!(paths.iter().any(|(_, name)| name.starts_with("hello_")));

    let again = env.ok(&["fetch", "-f", bf.to_str().unwrap()]);
    assert!(
        again.contains(&format!(
            "0 .deb(s) downloaded (0 B), {n} already in the store"
        )),
        "{again}"
    );
    // Offline with everything present is fine.
    env.ok(&["fetch", "--offline", "-f", bf.to_str().unwrap()]);
}

#[test]
fn fetch_refuses_a_deb_whose_sha256_differs_from_the_lock_and_stores_nothing() {
    let Some((env, bf)) = locked("fetch_tampered") else {
        return;
    };
    let path = Lockfile::path_for(&bf);
    let text = fs_err::read_to_string(&path).unwrap();
    let lock = Lockfile::load(&path).unwrap();
    let hello = lock.for_step(0).unwrap().packages[0].clone();
    let forged = "0".repeat(64);
    fs_err::write(&path, text.replace(&hello.sha256, &forged)).unwrap();

    let out = env.run(&["fetch", "-f", bf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("does not match the lock"), "{err}");
    assert!(err.contains(&hello.name), "{err}");
    let store = Store::open(&env.home()).unwrap();
    let real = Digest::parse(&format!("sha256:{}", hello.sha256)).unwrap();
    let fake = Digest::parse(&format!("sha256:{forged}")).unwrap();
    assert!(!store.has_blob(&real), "the real digest was not stored");
    assert!(!store.has_blob(&fake), "the forged digest was not stored");
}

#[test]
fn fetch_of_a_version_the_archive_no_longer_serves_names_it_and_points_at_snapshot() {
    let Some((env, bf)) = locked("fetch_gone") else {
        return;
    };
    let path = Lockfile::path_for(&bf);
    let text = fs_err::read_to_string(&path).unwrap();
    fs_err::write(
        &path,
        text.replace("hello_2.10", "hello_0.0-tplbuild-gone-2.10"),
    )
    .unwrap();
    let out = env.run(&["fetch", "-f", bf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("hello") && err.contains("no longer served"),
        "{err}"
    );
    assert!(err.contains("snapshot.debian.org"), "{err}");
    // --offline on an empty store names what is missing, downloads nothing.
    let out = env.run(&["fetch", "--offline", "-f", bf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not in the store: hello"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn adding_a_package_without_relocking_is_drift_naming_the_line_and_the_fix() {
    let Some((env, bf)) = locked("lock_drift") else {
        return;
    };
    let b = bf.to_str().unwrap();
    env.ok(&["lock", "--check", "-f", b]);
    let before = Lockfile::load(&Lockfile::path_for(&bf)).unwrap();
    fs_err::write(&bf, MINIMAL.replace("INSTALL hello", "INSTALL hello sl")).unwrap();

    let out = env.run(&["lock", "--check", "-f", b]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("{b}:4")), "names the line: {err}");
    assert!(err.contains("INSTALL hello sl"), "{err}");
    assert!(err.contains("run `tplbuild lock`"), "{err}");

    // Relocking resolves the changed step; the lock then matches again.
    let out = env.ok(&["lock", "-f", b]);
    assert!(out.contains("+ sl "), "{out}");
    env.ok(&["lock", "--check", "-f", b]);
    let after = Lockfile::load(&Lockfile::path_for(&bf)).unwrap();
    let version = |l: &Lockfile| {
        l.for_step(0)
            .unwrap()
            .packages
            .iter()
            .find(|p| p.name == "hello")
            .map(|p| p.version.clone())
    };
    assert_eq!(version(&after), version(&before));
}

/// Lock `text`, a Buildfile with `extra` files in its context.
fn lock_text(env: &Env, text: &str, extra: &[(&str, &str)]) -> Lockfile {
    let bf = env.path("ctx/Buildfile");
    fs_err::create_dir_all(bf.parent().unwrap()).unwrap();
    fs_err::write(&bf, text).unwrap();
    for (name, content) in extra {
        fs_err::write(env.path("ctx").join(name), content).unwrap();
    }
    env.ok(&["lock", "-f", bf.to_str().unwrap()]);
    Lockfile::load(&Lockfile::path_for(&bf)).unwrap()
}

/// An apt preferences file that forbids installing hello (apt then takes
/// hello-traditional, which provides it).
const NO_HELLO: &str = "Package: hello\nPin: version *\nPin-Priority: -1\n";

#[test]
fn copy_and_run_steps_before_an_install_are_carried_out_while_locking() {
    if !testbed("lock_replays") {
        return;
    }
    common::template();
    let env = Env::new();
    let base = "ARG BASE=127.0.0.1:5000/platform/base:1\nFROM ${BASE}\n";
    let pin = [("no-hello", NO_HELLO)];
    // The COPY'd pin is in place when apt resolves: hello itself cannot be
    // had, so apt takes the package that provides it.
    let lock = lock_text(
        &env,
        &format!("{base}COPY no-hello /etc/apt/preferences.d/\nINSTALL hello\n"),
        &pin,
    );
    let names = |lock: &Lockfile, i: usize| -> Vec<String> {
        lock.for_step(i)
            .unwrap()
            .packages
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    assert_eq!(names(&lock, 0), ["hello-traditional"]);
    // A RUN between two apt steps takes the pin away again, and the steps
    // after the last apt step (`RUN false`) are not run at all.
    let lock = lock_text(
        &env,
        &format!(
            "{base}COPY no-hello /etc/apt/preferences.d/\nINSTALL sl\n\
             RUN rm /etc/apt/preferences.d/no-hello && echo \"'this is not apt's\" && rm -rf /tmp/*\n\
             INSTALL hello\nRUN false\n"
        ),
        &pin,
    );
    assert!(names(&lock, 0).contains(&"sl".to_string()));
    assert_eq!(names(&lock, 1), ["hello"]);

    // The copied pin changes: the lock no longer matches (CI's check says
    // which step), and `lock` resolves that step again.
    let bf = env.path("ctx/Buildfile");
    let b = bf.to_str().unwrap();
    env.ok(&["lock", "--check", "-f", b]);
    fs_err::write(
        env.path("ctx/no-hello"),
        format!("# no hello here\n{NO_HELLO}"),
    )
    .unwrap();
    let out = env.run(&["lock", "--check", "-f", b]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{b}:4")) && err.contains("changed since locking"),
        "names the INSTALL after the COPY: {err}"
    );
    env.ok(&["lock", "-f", b]);
    env.ok(&["lock", "--check", "-f", b]);

    // A replayed step that fails is named, with what it printed.
    let bf = env.path("ctx/Buildfile");
    fs_err::write(
        &bf,
        format!("{base}INSTALL sl\nRUN echo \"'quoted\" && exit 7\nINSTALL hello\n"),
    )
    .unwrap();
    let out = env.run(&["lock", "-f", bf.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:4: `RUN echo", bf.display())),
        "names the step: {err}"
    );
    assert!(err.contains("failed while locking"), "{err}");
    assert!(err.contains("  'quoted"), "shows its output: {err}");
}
