//! An exact [`Listing`] of an ext4 image without mounting it. `debugfs
//! rdump` alone is not enough: it skips device nodes and fifos, splits
//! hardlinks, drops xattrs, and chmods before it chowns (losing setuid,
//! setgid and sticky bits). So the names, inode numbers, modes and owners
//! come from `ls -p` of every directory, xattrs from `ea_list`, device
//! numbers from `stat`, and only file contents and link targets from rdump.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use super::listing::{self, Kind, Listing, Node};

/// Run debugfs with one command per line; the output of each command, in
/// order.
fn debugfs(img: &Path, commands: &[Vec<u8>]) -> Vec<Vec<u8>> {
    if commands.is_empty() {
        return Vec::new();
    }
    let mut script = tempfile::NamedTempFile::new().unwrap();
    for c in commands {
        std::io::Write::write_all(&mut script, c).unwrap();
        std::io::Write::write_all(&mut script, b"\n").unwrap();
    }
    let out = Command::new("debugfs")
        .arg("-f")
        .arg(script.path())
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each command is echoed as `debugfs: CMD` before its output.
    let mut sections: Vec<Vec<u8>> = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n') {
        if line.starts_with(b"debugfs: ") {
            sections.push(Vec::new());
        } else if let Some(s) = sections.last_mut() {
            s.extend_from_slice(line);
            s.push(b'\n');
        }
    }
    assert_eq!(
        sections.len(),
        commands.len(),
        "debugfs output does not match its script"
    );
    sections
}

fn quoted(cmd: &str, path: &[u8]) -> Vec<u8> {
    assert!(!path.contains(&b'"'), "test paths may not hold quotes");
    let mut c = format!("{cmd} \"/").into_bytes();
    c.extend_from_slice(path);
    c.push(b'"');
    c
}

struct Raw {
    ino: u64,
    mode: u32,
    uid: u64,
    gid: u64,
}

/// Every path of the image but `lost+found`, exactly.
pub fn of_ext4(img: &Path, scratch: &Path) -> Listing {
    // Names, inodes, modes and owners, one directory level at a time.
    let mut raw: BTreeMap<Vec<u8>, Raw> = BTreeMap::new();
    let mut level = vec![Vec::<u8>::new()];
    while !level.is_empty() {
        let cmds: Vec<Vec<u8>> = level.iter().map(|d| quoted("ls -p", d)).collect();
        let mut next = Vec::new();
        for (dir, out) in level.iter().zip(debugfs(img, &cmds)) {
            for line in out.split(|b| *b == b'\n').filter(|l| l.starts_with(b"/")) {
                // /INO/MODE/UID/GID/NAME/SIZE/
                let f: Vec<&[u8]> = line.split(|b| *b == b'/').collect();
                assert_eq!(
                    f.len(),
                    8,
                    "odd ls -p line {:?}",
                    String::from_utf8_lossy(line)
                );
                let name = f[5];
                if name == b"." || name == b".." || (dir.is_empty() && name == b"lost+found") {
                    continue;
                }
                let num = |b: &[u8], radix| {
                    u64::from_str_radix(std::str::from_utf8(b).unwrap(), radix).unwrap()
                };
                let mut path = dir.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                let mode = num(f[2], 8) as u32;
                if mode & 0o170000 == 0o040000 {
                    next.push(path.clone());
                }
                raw.insert(
                    path,
                    Raw {
                        ino: num(f[1], 10),
                        mode,
                        uid: num(f[3], 10),
                        gid: num(f[4], 10),
                    },
                );
            }
        }
        level = next;
    }

    // Content and symlink targets.
    fs_err::create_dir_all(scratch).unwrap();
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", scratch.display()))
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = listing::of_dir(scratch);

    let paths: Vec<Vec<u8>> = raw.keys().cloned().collect();
    let eas = debugfs(
        img,
        &paths
            .iter()
            .map(|p| quoted("ea_list", p))
            .collect::<Vec<_>>(),
    );
    let devices: Vec<Vec<u8>> = paths
        .iter()
        .filter(|p| matches!(raw[*p].mode & 0o170000, 0o020000 | 0o060000))
        .cloned()
        .collect();
    let stats = debugfs(
        img,
        &devices
            .iter()
            .map(|p| quoted("stat", p))
            .collect::<Vec<_>>(),
    );
    let rdevs: HashMap<&Vec<u8>, (u32, u32)> = devices
        .iter()
        .zip(stats)
        .map(|(p, s)| (p, rdev(&s)))
        .collect();

    let mut by_ino: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut out = Listing::new();
    for (path, ea) in paths.iter().zip(eas) {
        let r = &raw[path];
        let kind = match r.mode & 0o170000 {
            0o100000 => Kind::File,
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            0o020000 => Kind::Char,
            0o060000 => Kind::Block,
            0o010000 => Kind::Fifo,
            _ => Kind::Socket,
        };
        let d = dumped.get(path);
        let (size, sha256) = match (kind, d) {
            (Kind::File, Some(d)) => (d.size, d.sha256.clone()),
            (Kind::File, None) => panic!("rdump did not dump {}", String::from_utf8_lossy(path)),
            _ => (None, None),
        };
        if kind == Kind::File {
            by_ino.entry(r.ino).or_default().push(path.clone());
        }
        out.insert(
            path.clone(),
            Node {
                kind,
                mode: if kind == Kind::Symlink {
                    0
                } else {
                    r.mode & 0o7777
                },
                uid: r.uid,
                gid: r.gid,
                size,
                sha256,
                target: (kind == Kind::Symlink).then(|| {
                    let p = scratch.join(OsStr::from_bytes(path));
                    std::fs::read_link(p)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec()
                }),
                rdev: rdevs.get(path).copied(),
                xattrs: parse_ea_list(&ea),
                link_group: None,
            },
        );
    }
    for names in by_ino.into_values().filter(|n| n.len() > 1) {
        let first = names.iter().min().unwrap().clone();
        for n in names {
            out.get_mut(&n).unwrap().link_group = Some(first.clone());
        }
    }
    out
}

/// `Device major/minor number: 01:03 (hex 01:03)`.
fn rdev(stat: &[u8]) -> (u32, u32) {
    let s = String::from_utf8_lossy(stat);
    let v = s
        .split("Device major/minor number: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no device number in {s}"));
    let (a, b) = v.split_once(':').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// `  NAME (LEN) = "text"` or `  NAME (LEN) = 01 00 …` lines.
fn parse_ea_list(out: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut xattrs = BTreeMap::new();
    for line in out.split(|b| *b == b'\n') {
        let Some(line) = line.strip_prefix(b"  ") else {
            continue;
        };
        let s = String::from_utf8_lossy(line);
        let (name, rest) = s.split_once(" (").unwrap();
        let (len, value) = rest.split_once(") = ").unwrap();
        let len: usize = len.parse().unwrap();
        let bytes = if let Some(text) = value.strip_prefix('"') {
            text.strip_suffix('"').unwrap().as_bytes().to_vec()
        } else {
            value
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect()
        };
        assert_eq!(bytes.len(), len, "could not parse the xattr line {s:?}");
        xattrs.insert(name.as_bytes().to_vec(), bytes);
    }
    xattrs
}
