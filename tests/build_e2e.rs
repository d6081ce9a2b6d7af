//! `tplbuild build` end to end with the real engines, the loopback
//! registry and real Debian packages.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Write a Buildfile (FROM the test template) and context files.
fn buildfile(env: &Env, name: &str, body: &str, files: &[(&str, &str)]) -> String {
    let dir = env.path(name);
    for (p, content) in files {
        let f = dir.join(p);
        fs_err::create_dir_all(f.parent().unwrap()).unwrap();
        fs_err::write(f, content).unwrap();
    }
    fs_err::create_dir_all(&dir).unwrap();
    let path = dir.join("Buildfile");
    fs_err::write(&path, format!("FROM {TEMPLATE}\n{body}")).unwrap();
    path.display().to_string()
}

/// Run a build with `--progress json`; return the events and the exit code.
fn build_json(env: &Env, file: &str, extra: &[&str]) -> (Vec<Value>, Option<i32>, String) {
    let mut args = vec!["build", "-f", file, "--progress", "json"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    (
        json_events(&out),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn step_layers(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "step-done")
        .map(|e| e["layer"]["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Step containers a given tplbuild process created that still exist
/// (tests run in parallel, so each looks only at its own).
fn containers_of(pid: u32) -> usize {
    sh_ok(&format!(
        "docker ps -aq --filter label=dev.tplbuild.step --filter label=dev.tplbuild.pid={pid}"
    ))
    .lines()
    .count()
}

/// Start a build on Docker in the background.
fn spawn_build(env: &Env, file: &str) -> std::process::Child {
    spawn_build_with(env, file, "plain")
}

fn spawn_build_with(env: &Env, file: &str, progress: &str) -> std::process::Child {
    env.cmd()
        .args([
            "build",
            "-f",
            file,
            "--engine",
            "docker",
            "--progress",
            progress,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_container(pid: u32) {
    let t0 = std::time::Instant::now();
    while containers_of(pid) == 0 {
        assert!(t0.elapsed().as_secs() < 120, "the step never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

const SMALL: &str = "ENV GREETING=hello\nINSTALL hello\nCOPY overlay/ /\nRUN echo \"$GREETING\" > /etc/greeting && chmod 4755 /usr/bin/hello\n";

fn small_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("overlay/etc/motd", "welcome\n"),
        ("overlay/etc/app/app.conf", "x=1\n"),
    ]
}

/// What the diff sources and engines disagree on, in one step: deletions,
/// a directory removed and made again (Podman's `changes` calls it
/// deleted, Docker's lists its old children), a file replaced by a
/// directory, hardlinks among new files and to an unchanged one, a fifo,
/// a symlink, an owner and a mode change on an existing directory, and a
/// file made again exactly as it was.
const TRICKY: &str = "RUN set -e; rm /etc/debian_version; \\
    cp -p /usr/share/doc/apt/copyright /tmp/c && rm -rf /usr/share/doc/apt && mkdir /usr/share/doc/apt && echo new > /usr/share/doc/apt/NEWS && cp -p /tmp/c /usr/share/doc/apt/copyright; \\
    rm /etc/issue.net && mkdir /etc/issue.net; \\
    mkdir -p /opt/a && echo 1 > /opt/a/one && ln /opt/a/one /opt/a/two && ln /etc/issue /opt/issue-link; \\
    mkfifo /opt/fifo; ln -s ../etc/issue /opt/sym; chown 1:1 /srv; chmod 0700 /mnt\n";

#[test]
fn same_buildfile_gives_the_same_layers_on_every_engine_and_diff_path() {
    if !testbed("docker/podman parity") {
        return;
    }
    template();
    let mut runs = vec![];
    for engine in ["docker", "podman"] {
        for diff in ["upper", "api"] {
            let env = Env::new();
            let body = format!("{SMALL}{TRICKY}");
            let f = buildfile(&env, "small", &body, &small_files());
            let (events, code, stderr) =
                build_json(&env, &f, &["--engine", engine, "--diff", diff]);
            assert_eq!(
                code,
                Some(0),
                "{engine} --diff {diff}: {}",
                last_lines(&stderr, 30)
            );
            runs.push((
                format!("{engine}/{diff}"),
                step_layers(&events),
                done(&events)["digest"].clone(),
            ));
        }
    }
    for (name, layers, digest) in &runs[1..] {
        assert_eq!(
            layers, &runs[0].1,
            "step layers of {name} differ from {}",
            runs[0].0
        );
        assert_eq!(
            digest, &runs[0].2,
            "image of {name} differs from {}",
            runs[0].0
        );
    }
}

#[test]
fn two_cold_builds_in_empty_stores_give_the_same_digest() {
    if !testbed("reproducibility") {
        return;
    }
    template();
    let a = Env::new();
    let b = Env::new();
    let fa = buildfile(&a, "small", SMALL, &small_files());
    let fb = buildfile(&b, "small", SMALL, &small_files());
    let ra = a
        .cmd()
        .args([
            "build",
            "-f",
            &fa,
            "--progress",
            "json",
            "--engine",
            "docker",
        ])
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let rb = b
        .cmd()
        .args([
            "build",
            "-f",
            &fb,
            "--progress",
            "json",
            "--engine",
            "docker",
        ])
        .env("TZ", "Asia/Kolkata")
        .pre_exec_umask(0o077)
        .output()
        .unwrap();
    assert!(ra.status.success() && rb.status.success());
    let last = |o: &std::process::Output| -> Value {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "done")
            .unwrap()
    };
    assert_eq!(last(&ra)["digest"], last(&rb)["digest"]);
}

/// Set a umask for the child only.
trait Umask {
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self;
}

impl Umask for std::process::Command {
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self {
        use std::os::unix::process::CommandExt;
        unsafe {
            self.pre_exec(move || {
                libc_umask(mask);
                Ok(())
            })
        }
    }
}

fn libc_umask(mask: u32) {
    // SAFETY: umask only sets the process's file mode mask.
    unsafe {
        libc::umask(mask);
    }
}

#[test]
fn rebuild_hits_every_step_and_a_changed_file_reruns_only_later_steps() {
    if !testbed("cache") {
        return;
    }
    template();
    let env = Env::new();
    let body = "RUN echo one > /one\nCOPY overlay/ /\nRUN cat /etc/motd > /copied\n";
    let f = buildfile(&env, "c", body, &small_files());
    let (e1, c1, _) = build_json(&env, &f, &["--engine", "docker"]);
    assert_eq!(c1, Some(0));
    assert_eq!(statuses(&e1), ["MISS", "MISS", "MISS"]);

    let (e2, c2, _) = build_json(&env, &f, &["--engine", "docker"]);
    assert_eq!(c2, Some(0));
    assert_eq!(statuses(&e2), ["HIT", "HIT", "HIT"]);
    assert_eq!(done(&e2)["containers_created"], 0);
    assert_eq!(done(&e2)["digest"], done(&e1)["digest"]);

    // Touching mtimes changes nothing.
    let motd = Path::new(&f).parent().unwrap().join("overlay/etc/motd");
    fs_err::File::options()
        .write(true)
        .open(&motd)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let (e3, _, _) = build_json(&env, &f, &["--engine", "docker"]);
    assert_eq!(statuses(&e3), ["HIT", "HIT", "HIT"]);

    // One changed byte: the COPY and the step after it run, the first does not.
    fs_err::write(&motd, "welcomE\n").unwrap();
    let (e4, _, _) = build_json(&env, &f, &["--engine", "docker"]);
    assert_eq!(statuses(&e4), ["HIT", "MISS", "MISS"]);
    let notes = e4
        .iter()
        .find(|e| e["event"] == "step-done" && e["step"] == 2)
        .unwrap()["notes"]
        .to_string();
    assert!(notes.contains("etc/motd changed"), "{notes}");
    // plan explains the same.
    let plan = env.ok(&["plan", "-f", &f]);
    assert!(plan.contains("HIT"), "{plan}");
}

#[test]
fn ssh_host_keys_are_removed_and_reported() {
    if !testbed("hygiene") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(&env, "ssh", "INSTALL openssh-server\n", &[]);
    let (events, code, _) = build_json(
        &env,
        &f,
        &[
            "--engine",
            "docker",
            "-o",
            &format!("type=oci,dest={}", env.path("oci").display()),
        ],
    );
    assert_eq!(code, Some(0));
    let notes = events.iter().find(|e| e["event"] == "step-done").unwrap()["notes"].to_string();
    assert!(
        notes.contains("ssh_host_rsa_key"),
        "the build must say it removed the keys: {notes}"
    );
    let removed = done(&events)["removed_secrets"].to_string();
    assert!(
        removed.contains("etc/ssh/ssh_host_ed25519_key"),
        "{removed}"
    );
    // No layer of the image carries a host key.
    let layers = step_layers(&events);
    let blobs = env.home().join("store-v1/blobs/sha256");
    for l in layers {
        let listing = sh_ok(&format!("tar -tzf {}", blobs.join(&l[7..]).display()));
        assert!(!listing.contains("ssh_host_"), "layer {l} has a host key");
    }
}

#[test]
fn a_failing_run_names_the_line_and_leaves_nothing_behind() {
    if !testbed("failing RUN") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(
        &env,
        "fail",
        "RUN echo before\nRUN echo some output && exit 3\n",
        &[],
    );
    let child = spawn_build(&env, &f);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Buildfile:3"), "{stderr}");
    assert!(stderr.contains("exit code 3"), "{stderr}");
    assert!(
        stderr.contains("some output"),
        "the last lines are shown: {stderr}"
    );
    assert_eq!(containers_of(pid), 0, "a container was left behind");
    // The failed step is not cached: it runs again.
    let (events, _, _) = build_json(&env, &f, &["--engine", "docker"]);
    let s: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "step-start")
        .collect();
    assert_eq!(s.len(), 2, "the failed step ran again");
    assert_eq!(statuses(&events), ["HIT"]);
    // Output lines say which stream they came on.
    assert!(
        events.iter().any(|e| e["event"] == "output"
            && e["stream"] == "stdout"
            && e["line"] == "some output"),
        "{events:?}"
    );
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "step-failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["step"], 2, "{}", failed[0]);
    assert_eq!(failed[0]["exit_code"], 3, "{}", failed[0]);
    assert!(
        failed[0]["location"]
            .as_str()
            .unwrap()
            .ends_with("Buildfile:3"),
        "{}",
        failed[0]
    );
    assert_eq!(failed[0]["tail"][0], "some output", "{}", failed[0]);
    // CI reads the outcome from the last event.
    let result = events.last().unwrap();
    assert_eq!(result["event"], "result", "{result}");
    assert_eq!(result["exit_code"], 1, "{result}");
    assert!(
        result["error"]["location"]
            .as_str()
            .unwrap()
            .ends_with("Buildfile:3"),
        "{result}"
    );
}

#[test]
fn ctrl_c_during_a_step_removes_the_container_and_records_nothing() {
    if !testbed("interrupt") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(&env, "slow", "RUN echo started && sleep 60\n", &[]);
    let child = spawn_build_with(&env, &f, "json");
    let pid = child.id();
    wait_for_container(pid);
    std::thread::sleep(std::time::Duration::from_secs(1));
    sh_ok(&format!("kill -INT {pid}"));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    // Even interrupted, the run ends with exactly one result event.
    let events = json_events(&out);
    let results: Vec<_> = events.iter().filter(|e| e["event"] == "result").collect();
    assert_eq!(results.len(), 1, "{events:?}");
    assert_eq!(events.last(), Some(results[0]));
    assert_eq!(results[0]["exit_code"], 130, "{}", results[0]);
    assert_eq!(containers_of(pid), 0, "the step container was left behind");
    let plan = env.ok(&["plan", "-f", &f]);
    assert!(
        plan.contains("MISS"),
        "an interrupted step must not be cached: {plan}"
    );
}

#[test]
fn a_container_left_by_a_killed_run_is_removed_by_the_next_run() {
    if !testbed("leftovers") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(&env, "killed", "RUN sleep 60\n", &[]);
    let mut child = spawn_build(&env, &f);
    let pid = child.id();
    wait_for_container(pid);
    child.kill().unwrap(); // SIGKILL: no cleanup possible
    child.wait().unwrap();
    assert_eq!(containers_of(pid), 1);
    let g = buildfile(&env, "next", "RUN true\n", &[]);
    let (_, code, stderr) = build_json(&env, &g, &["--engine", "docker", "--no-cache"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(containers_of(pid), 0, "the leftover was not cleaned");
}

#[test]
fn a_from_that_does_not_exist_is_a_clear_error() {
    if !testbed("bad FROM") {
        return;
    }
    let env = Env::new();
    let dir = env.path("nofrom");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        format!("FROM {REGISTRY}/platform/does-not-exist:1\nRUN true\n"),
    )
    .unwrap();
    let out = env.run(&["build", "-f", dir.join("Buildfile").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Buildfile:1"), "{err}");
    assert!(err.contains("does-not-exist"), "{err}");
}

#[test]
fn an_engine_that_is_not_running_gets_a_hint() {
    if !testbed("engine down") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(&env, "down", "RUN true\n", &[]);
    let out = env
        .cmd()
        .args(["build", "-f", &f, "--engine", "docker", "--no-cache"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dockerd") || err.contains("systemctl start docker"),
        "{err}"
    );
}

#[test]
fn a_copy_source_that_vanished_after_planning_is_a_clear_error() {
    if !testbed("vanished COPY source") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(
        &env,
        "vanish",
        "RUN sleep 4\nCOPY data.txt /data.txt\n",
        &[("data.txt", "x")],
    );
    let data = Path::new(&f).parent().unwrap().join("data.txt");
    let child = env
        .cmd()
        .args([
            "build",
            "-f",
            &f,
            "--engine",
            "docker",
            "--progress",
            "plain",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    fs_err::remove_file(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Buildfile:3"), "{err}");
    assert!(err.contains("data.txt"), "{err}");
}

#[test]
fn sigterm_during_a_step_exits_143_and_leaves_no_container() {
    if !testbed("SIGTERM") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(&env, "term", "RUN sleep 60\n", &[]);
    let mut child = spawn_build(&env, &f);
    let pid = child.id();
    wait_for_container(pid);
    sh_ok(&format!("kill -TERM {pid}"));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert_eq!(containers_of(pid), 0, "the step container was left behind");
}
