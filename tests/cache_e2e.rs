//! The registry step cache end to end: what a fresh CI machine reuses.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

fn write_buildfile(dir: &Path, body: &str, motd: &str) -> String {
    fs_err::create_dir_all(dir.join("overlay/etc")).unwrap();
    fs_err::write(dir.join("overlay/etc/motd"), motd).unwrap();
    fs_err::write(dir.join("Buildfile"), format!("FROM {TEMPLATE}\n{body}")).unwrap();
    dir.join("Buildfile").display().to_string()
}

const BODY: &str = "INSTALL hello\nCOPY overlay/ /\nRUN cat /etc/motd > /motd.copy\n";

fn unique(name: &str) -> String {
    format!(
        "{REGISTRY}/cache-e2e/{name}-{}-{}:buildcache",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn store_bytes(env: &Env) -> u64 {
    let dir = env.home().join("store-v1/blobs/sha256");
    fs_err::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_fresh_machine_reuses_the_registry_cache_and_downloads_nothing_for_a_tag() {
    if !testbed("registry cache") {
        return;
    }
    template();
    let cache = unique("fresh");
    // Machine A builds and pushes the cache.
    let a = Env::new();
    let fa = write_buildfile(&a.path("bf"), BODY, "hello\n");
    let out = a.run(&[
        "build",
        "-f",
        &fa,
        "--engine",
        "docker",
        "--progress",
        "json",
        "--cache-to",
        &cache,
    ]);
    assert!(out.status.success());
    let digest_a = done(&json_events(&out))["digest"].clone();

    // Machine B: an empty store. (The engine's images are left alone: other
    // tests use them at the same time, and with every step a hit the
    // engine is not asked for anything, as `containers_created` shows.)
    let b = Env::new();
    let fb = write_buildfile(&b.path("bf"), BODY, "hello\n");
    let plan = b.ok(&["plan", "-f", &fb, "--cache-from", &cache]);
    assert_eq!(plan.matches("HIT").count(), 3, "{plan}");
    let product = format!("{REGISTRY}/cache-e2e/product:{}", std::process::id());
    let out = b.run(&[
        "build",
        "-f",
        &fb,
        "--engine",
        "docker",
        "--progress",
        "json",
        "--cache-from",
        &cache,
        "--tag",
        &product,
    ]);
    assert!(out.status.success());
    let ev = json_events(&out);
    assert_eq!(statuses(&ev), ["HIT (registry)"; 3]);
    let d = done(&ev);
    assert_eq!(d["containers_created"], 0, "no container may run");
    assert_eq!(d["digest"], digest_a, "the same final digest");
    // Publishing to the same registry mounts layers: only the manifest and
    // config were written to the store, no layer was downloaded.
    assert!(
        store_bytes(&b) < 64 * 1024,
        "downloaded {} bytes",
        store_bytes(&b)
    );

    // An ext4 output needs the layers: they come from the cache, and the
    // image is the same.
    let ext4 = b.path("out.ext4");
    let out = b.run(&[
        "build",
        "-f",
        &fb,
        "--engine",
        "docker",
        "--progress",
        "json",
        "--cache-from",
        &cache,
        "-o",
        &format!("type=ext4,dest={}", ext4.display()),
    ]);
    assert!(out.status.success());
    assert_eq!(done(&json_events(&out))["containers_created"], 0);
    sh_ok(&format!("fsck.ext4 -fn {}", ext4.display()));
}

#[test]
fn a_branch_pushing_to_the_cache_keeps_the_other_branchs_entries() {
    if !testbed("cache merge") {
        return;
    }
    template();
    let cache = unique("branches");
    let a = Env::new();
    let fa = write_buildfile(&a.path("bf"), BODY, "branch A\n");
    assert!(a
        .run(&[
            "build",
            "-f",
            &fa,
            "--engine",
            "docker",
            "--cache-to",
            &cache
        ])
        .status
        .success());

    // Branch B changes one COPY file: only the COPY and the step after it run.
    let b = Env::new();
    let fb = write_buildfile(&b.path("bf"), BODY, "branch B\n");
    let out = b.run(&[
        "build",
        "-f",
        &fb,
        "--engine",
        "docker",
        "--progress",
        "json",
        "--cache-from",
        &cache,
        "--cache-to",
        &cache,
    ]);
    assert!(out.status.success());
    assert_eq!(
        statuses(&json_events(&out)),
        ["HIT (registry)", "MISS", "MISS"]
    );

    // Branch A, on yet another fresh machine, still hits everything.
    let c = Env::new();
    let fc = write_buildfile(&c.path("bf"), BODY, "branch A\n");
    let plan = c.ok(&["plan", "-f", &fc, "--cache-from", &cache]);
    assert_eq!(
        plan.matches("HIT").count(),
        3,
        "branch A's entries were lost: {plan}"
    );
}

#[test]
fn a_corrupt_cache_is_a_warning_and_the_build_succeeds() {
    if !testbed("corrupt cache") {
        return;
    }
    template();
    // An ordinary image at the cache tag is not a cache.
    let cache = unique("corrupt");
    let env = Env::new();
    env.ok(&["copy", TEMPLATE, &cache]);
    let f = write_buildfile(&env.path("bf"), "RUN echo ok > /ok\n", "x\n");
    let out = env.run(&[
        "build",
        "-f",
        &f,
        "--engine",
        "docker",
        "--cache-from",
        &cache,
        "--progress",
        "plain",
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning"), "{err}");
    assert!(err.contains("MISS"), "{err}");
}

#[test]
fn a_product_built_from_another_product_builds_and_exports() {
    if !testbed("product from product") {
        return;
    }
    template();
    let env = Env::new();
    let first = format!("{REGISTRY}/cache-e2e/base-product:{}", std::process::id());
    let f1 = write_buildfile(&env.path("one"), "RUN echo one > /one\n", "x\n");
    env.ok(&["build", "-f", &f1, "--engine", "docker", "--tag", &first]);
    let dir = env.path("two");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        format!("FROM {first}\nRUN cat /one > /two\n"),
    )
    .unwrap();
    let tar = env.path("two.tar");
    env.ok(&[
        "build",
        "-f",
        dir.join("Buildfile").to_str().unwrap(),
        "--engine",
        "docker",
        "--tag",
        &format!("{REGISTRY}/cache-e2e/second-product:{}", std::process::id()),
        "-o",
        &format!("type=tar,dest={}", tar.display()),
    ]);
    let listing = sh_ok(&format!(
        "tar -xOf {} ./two 2>/dev/null || tar -xOf {} two",
        tar.display(),
        tar.display()
    ));
    assert_eq!(listing.trim(), "one");
    // The published product names its base.
    let insp = env.ok(&[
        "template",
        "inspect",
        &format!("{REGISTRY}/cache-e2e/second-product:{}", std::process::id()),
        "--json",
    ]);
    let v: Value = serde_json::from_str(&insp).unwrap();
    assert_eq!(
        v["annotations"]["org.opencontainers.image.base.name"],
        first.as_str()
    );
    assert_eq!(v["annotations"]["dev.tplbuild.template.suite"], "bookworm");
}
