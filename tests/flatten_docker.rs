//! tplbuild against Docker itself: the diff of a step, and the flattening
//! of a multi-layer image Docker built, must give the same files as
//! `docker export` (modes, owners, link targets, xattrs, sizes).

mod common;

use std::collections::BTreeMap;
use std::io::Read;

use common::*;

/// What is compared for each path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: String,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    link: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Paths an engine or apt makes that are not the image's content, or that
/// tplbuild deliberately normalizes (see layer::volatile).
fn ignored(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "dev/",
        "proc/",
        "sys/",
        "run/",
        "tmp/",
        "var/log/",
        "var/cache/",
        "var/lib/apt/lists/",
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "etc/mtab",
        ".dockerenv",
        "etc/ssh/ssh_host_",
    ];
    // dpkg's *-old backups are volatile: tplbuild drops the new ones.
    let dpkg_backup = path.starts_with("var/lib/dpkg/") && path.ends_with("-old");
    path.is_empty()
        || dpkg_backup
        || PREFIXES
            .iter()
            .any(|p| path.starts_with(p) || format!("{path}/") == *p)
}

fn read_tar(r: impl Read) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut links = vec![];
    let mut ar = tar::Archive::new(r);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if ignored(&path) {
            continue;
        }
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for x in pax {
                let x = x.unwrap();
                if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(k.to_string(), x.value_bytes().to_vec());
                }
            }
        }
        let h = e.header();
        let ty = h.entry_type();
        let link = e.link_name_bytes().map(|l| {
            String::from_utf8_lossy(&l)
                .trim_start_matches("./")
                .to_string()
        });
        let kind = match ty {
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Fifo => "fifo",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            _ => "file",
        };
        let mut entry = Entry {
            kind: kind.to_string(),
            mode: h.mode().unwrap() & 0o7777,
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            size: h.size().unwrap(),
            link: if kind == "symlink" {
                link.clone()
            } else {
                None
            },
            xattrs,
        };
        if kind == "hardlink" {
            // A hardlink is the same file as its target; which name holds
            // the data depends on the writer's order.
            links.push((path, link.unwrap()));
            continue;
        }
        if kind == "file" {
            let mut n = 0u64;
            let mut buf = [0u8; 65536];
            loop {
                let k = e.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
            entry.size = n;
        }
        if kind == "dir" {
            entry.size = 0;
        }
        out.insert(path, entry);
    }
    for (path, target) in links {
        if let Some(t) = out.get(target.trim_end_matches('/')).cloned() {
            out.insert(path, t);
        }
    }
    out
}

fn compare(ours: &BTreeMap<String, Entry>, docker: &BTreeMap<String, Entry>) {
    let mut diffs = vec![];
    for (p, d) in docker {
        match ours.get(p) {
            None => diffs.push(format!("missing in tplbuild: {p} {d:?}")),
            Some(o) if o != d => {
                diffs.push(format!("differs: {p}\n  tplbuild {o:?}\n  docker   {d:?}"))
            }
            _ => {}
        }
    }
    for p in ours.keys() {
        if !docker.contains_key(p) {
            diffs.push(format!("extra in tplbuild: {p}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

fn docker_export(image: &str, script: Option<&str>) -> BTreeMap<String, Entry> {
    let name = format!(
        "tplbuild-test-export-{}-{}",
        std::process::id(),
        rand_suffix()
    );
    let run = match script {
        Some(s) => format!(
            "docker run --name {name} --network none {image} sh -c '{}'",
            s.replace('\'', "'\\''")
        ),
        None => format!("docker create --name {name} {image} true"),
    };
    sh_ok(&run);
    let out = std::process::Command::new("docker")
        .args(["export", &name])
        .output()
        .unwrap();
    sh(&format!("docker rm -f {name}"));
    assert!(out.status.success());
    read_tar(&out.stdout[..])
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

const SCRIPT: &str = "set -e; \
    rm /etc/debian_version; \
    rm -rf /usr/share/doc/bash && echo now-a-file > /usr/share/doc/bash; \
    rm /etc/issue.net && ln -s issue /etc/issue.net; \
    cp /usr/bin/cat /usr/local/bin/cat2 && ln /usr/local/bin/cat2 /usr/local/bin/cat3; \
    chmod 4755 /usr/local/bin/cat2; \
    setcap cap_net_raw+ep /usr/bin/ping-like 2>/dev/null || true; \
    mkdir -p /srv && mkfifo /srv/fifo; \
    rm -rf /var/lib/dpkg/alternatives && mkdir /var/lib/dpkg/alternatives && echo x > /var/lib/dpkg/alternatives/new";

#[test]
fn a_run_steps_layer_flattens_to_what_docker_export_shows_on_both_diff_paths() {
    if !testbed("diff correctness") || !has_socket("/var/run/docker.sock") {
        return;
    }
    template();
    let env = Env::new();
    // setcap comes from libcap2-bin; a file capability is the xattr to check.
    let script = SCRIPT.replace(
        "setcap cap_net_raw+ep /usr/bin/ping-like 2>/dev/null || true",
        "cp /usr/bin/true /usr/bin/ping-like && setcap cap_net_raw+ep /usr/bin/ping-like",
    );
    let dir = env.path("bf");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        format!("FROM {TEMPLATE}\nINSTALL libcap2-bin\nRUN {script}\n"),
    )
    .unwrap();
    // Both diff sources, each in an empty store: the same layers.
    let mut results = vec![];
    for diff in ["upper", "api"] {
        let env = Env::new();
        let tar = env.path("flat.tar");
        let out = env.run(&[
            "build",
            "-f",
            dir.join("Buildfile").to_str().unwrap(),
            "--engine",
            "docker",
            "--diff",
            diff,
            "--progress",
            "json",
            "-o",
            &format!("type=tar,dest={}", tar.display()),
        ]);
        assert!(
            out.status.success(),
            "--diff {diff}: {}",
            last_lines(&String::from_utf8_lossy(&out.stderr), 30)
        );
        let layers: Vec<String> = json_events(&out)
            .iter()
            .filter(|e| e["event"] == "step-done")
            .map(|e| e["layer"]["digest"].as_str().unwrap().to_string())
            .collect();
        results.push((diff, layers, read_tar(fs_err::File::open(&tar).unwrap())));
    }
    assert_eq!(
        results[0].1, results[1].1,
        "upper and api step layers differ"
    );
    compare(&results[1].2, &results[0].2);
    let ours = results.remove(0).2;
    assert!(ours["usr/bin/ping-like"]
        .xattrs
        .contains_key("security.capability"));
    assert_eq!(ours["usr/local/bin/cat2"].mode & 0o4000, 0o4000);
    assert_eq!(ours["srv/fifo"].kind, "fifo");
    assert!(!ours.contains_key("etc/debian_version"));

    // The same steps straight in Docker, from the same template.
    sh_ok(&format!("docker pull -q {TEMPLATE}"));
    let stage = format!("tplbuild-test-stage:{}", rand_suffix());
    let c = format!("tplbuild-test-stage-{}", rand_suffix());
    sh_ok(&format!(
        "docker run --name {c} --network host {TEMPLATE} sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libcap2-bin' && docker commit {c} {stage} && docker rm {c}"
    ));
    let docker = docker_export(&stage, Some(&script));
    sh(&format!("docker rmi -f {stage}"));
    compare(&ours, &docker);
}

#[test]
fn a_multi_layer_image_docker_built_flattens_like_docker_export() {
    if !testbed("flatten vs docker") || !has_socket("/var/run/docker.sock") {
        return;
    }
    template();
    let env = Env::new();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    // Deletions, an opaque directory, a directory deleted then recreated,
    // hardlinks across layers, a file replaced by a symlink.
    fs_err::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {TEMPLATE}\n\
             RUN mkdir -p /opt/a/b && echo 1 > /opt/a/b/f && echo 2 > /opt/a/g && echo keep > /opt/k\n\
             RUN rm -rf /opt/a && mkdir -p /opt/a && echo 3 > /opt/a/h && rm /etc/debian_version\n\
             RUN ln /opt/k /opt/k2 && ln -sf /opt/k /etc/issue && chmod 2755 /opt/a\n\
             RUN echo changed > /opt/k && rm -rf /usr/share/doc/apt && mkdir /usr/share/doc/apt\n"
        ),
    )
    .unwrap();
    let tag = format!("{REGISTRY}/flatten/docker-built:{}", rand_suffix());
    sh_ok(&format!(
        "DOCKER_BUILDKIT=0 docker build -q --network host -t {tag} {} && docker push -q {tag}",
        ctx.display()
    ));
    let tar = env.path("flat.tar");
    env.ok(&[
        "export",
        &tag,
        "-o",
        &format!("type=tar,dest={}", tar.display()),
    ]);
    let ours = read_tar(fs_err::File::open(&tar).unwrap());
    let docker = docker_export(&tag, None);
    compare(&ours, &docker);
    assert!(!ours.keys().any(|p| p.contains(".wh.")));
    sh(&format!("docker rmi -f {tag}"));
}
