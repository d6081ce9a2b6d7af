//! `tplbuild prune` on a store a real build filled.

mod common;

use std::time::Duration;

use common::*;

fn buildfile(env: &Env) -> String {
    let bf = env.path("ctx/Buildfile");
    fs_err::create_dir_all(bf.parent().unwrap()).unwrap();
    fs_err::write(
        &bf,
        format!("FROM {TEMPLATE}\nRUN echo pruned > /etc/pruned\n"),
    )
    .unwrap();
    bf.display().to_string()
}

fn report(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(env.ok(&all).trim()).unwrap()
}

#[test]
fn prune_keeps_what_was_just_used_and_all_removes_every_step() {
    if !testbed("prune") {
        return;
    }
    template();
    let env = Env::new();
    let bf = buildfile(&env);
    let tar = env.path("out.tar").display().to_string();
    env.ok(&["build", "-f", &bf, "-o", &format!("type=tar,dest={tar}")]);

    // Everything was used a moment ago: a week's prune keeps it all.
    let r = report(&env, &[]);
    assert_eq!(r["step_records"], 0, "{r}");
    assert_eq!(r["blobs"], 0, "{r}");
    assert_eq!(r["exports"], 0, "{r}");
    let out = env.run(&["build", "-f", &bf, "--progress", "json"]);
    assert!(out.status.success());
    assert_eq!(statuses(&json_events(&out)), ["HIT"], "still cached");

    // A dry run of --all says what would go and removes nothing.
    let dry = report(&env, &["--all", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert!(dry["step_records"].as_u64().unwrap() >= 1, "{dry}");
    let out = env.run(&["build", "-f", &bf, "--progress", "json"]);
    assert!(out.status.success());
    assert_eq!(
        statuses(&json_events(&out)),
        ["HIT"],
        "a dry run removed nothing"
    );

    // --all: the step is gone and runs again; the build still works (the
    // template comes back from the registry).
    let all = report(&env, &["--all"]);
    assert_eq!(all["step_records"], dry["step_records"], "{all}");
    assert!(all["bytes"].as_u64().unwrap() > 0, "{all}");
    let out = env.run(&["build", "-f", &bf, "--progress", "json"]);
    assert!(out.status.success());
    assert_eq!(
        statuses(&json_events(&out)),
        ["MISS"],
        "the step runs again"
    );

    // Human output names what went.
    let text = env.ok(&["prune", "--all"]);
    assert!(text.starts_with("removed 1 step record(s)"), "{text}");

    let bad = env.run(&["prune", "--older-than", "a week"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("90s, 30m, 24h, 7d or 2w"));
}

#[test]
fn prune_waits_for_a_process_that_has_the_store_open() {
    let env = Env::new();
    // This test process has the store open (a shared lock), as a build would.
    let store = tplbuild::store::Store::open(&env.home()).unwrap();
    let mut child = env
        .cmd()
        .args(["prune", "--all"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "prune waits");
    drop(store);
    // Done soon after the store is free; a prune that still waits fails
    // the test instead of hanging it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("prune still waits after the store was closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waiting for the other tplbuild processes"),
        "{stderr}"
    );
}

/// `prune --engine` on the vfs Podman of the test bed, which no other
/// test in this file uses (the other tests here build on Docker, in
/// parallel, and must keep their images).
#[test]
fn prune_engine_removes_the_images_tplbuild_loaded_and_a_build_loads_them_again() {
    if !testbed("prune --engine") {
        return;
    }
    let host = std::env::var("TPLBUILD_TEST_VFS_PODMAN_HOST")
        .unwrap_or_else(|_| "unix:///run/podman-vfs/podman.sock".into());
    if !has_socket(host.trim_start_matches("unix://")) {
        return;
    }
    let template = template();
    let env = Env::new();
    let bf = buildfile(&env);
    let tplbuild = |args: &[&str]| -> String {
        let out = env
            .cmd_with_engine(&[("CONTAINER_HOST", &host)])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tplbuild {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let engine_images = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["prune", "--json", "--engine", "podman"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(tplbuild(&all).trim()).unwrap();
        serde_json::from_value(v["engine_images"]["removed"].clone()).unwrap()
    };
    tplbuild(&["build", "-f", &bf, "--engine", "podman", "--no-cache"]);
    // The step ran on the template, loaded as tplbuild/state:<its digest>.
    let state = format!("tplbuild/state:{}", template.trim_start_matches("sha256:"));
    let listed = engine_images(&["--dry-run"]);
    assert!(listed.contains(&state), "{state} not in {listed:?}");
    let removed = engine_images(&[]);
    assert!(removed.contains(&state), "{state} not in {removed:?}");
    assert_eq!(engine_images(&["--dry-run"]), Vec::<String>::new());
    // A step that needs the state again loads it again.
    tplbuild(&["build", "-f", &bf, "--engine", "podman", "--no-cache"]);
    assert!(engine_images(&["--dry-run"]).contains(&state));
}
