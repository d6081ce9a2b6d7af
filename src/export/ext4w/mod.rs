//! A native ext4 writer: lays out a filesystem for a flattened tree itself
//! and writes file data in large contiguous runs, instead of `mke2fs -d`'s
//! one `pwrite` per 4 KiB block.
//!
//! The result has the features of the mke2fs config in `ext4.rs` minus
//! `resize_inode`: has_journal, ext_attr, dir_index (flag only: every
//! directory is linear, as `mke2fs -d` writes them too; the kernel makes a
//! hash tree of a one-block directory that grows), filetype, extent,
//! 64bit, flex_bg, sparse_super, large_file, huge_file, dir_nlink,
//! extra_isize and metadata_csum. 4 KiB blocks, 256-byte inodes, 32768
//! blocks per group. Without `resize_inode` no descriptor blocks are
//! reserved: `resize2fs` still grows it offline, and online the kernel
//! switches it to meta_bg once the descriptors fill their blocks (tests:
//! `resize2fs_grows_it_offline_past_its_descriptor_block` here, and
//! `tests/disk_boot_e2e.rs`, in a VM, for online).
//!
//! Xattrs are the ones a layer carries ([`carried_xattr`]), in the inode
//! when they fit, else in one block. Limits, each a clear error: 65000
//! names per file and 64998 subdirectories per directory (no hash trees),
//! 4 extent leaves per file (~170 GiB).
//!
//! Layout, all a function of the tree and the parameters:
//! - block 0: superblock; then the group descriptors; backups of both in
//!   groups 0, 1 and the powers of 3, 5 and 7 (sparse_super);
//! - after the primary descriptors, every group's block bitmap, then every
//!   inode bitmap, then every inode table (flex_bg lets them live anywhere);
//! - the journal (inode 8), one run where it can be;
//! - then each inode's blocks in inode order: directory blocks, file data,
//!   long symlink targets, xattr blocks, extent leaves.
//!
//! Inode numbers: 1–10 reserved (2 the root, 8 the journal), 11
//! lost+found, then a depth-first walk of the tree in byte order of the
//! names, each entry numbered when it is met (as `mke2fs -d` does). Times:
//! atime, ctime and crtime the epoch, mtime the tree's (seconds).

mod crc;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crc::crc32c_le;

use crate::layer::carried_xattr;

const BS: u64 = 4096;
const BSU: usize = 4096;
const BLOCKS_PER_GROUP: u64 = 32768;
const INODE_SIZE: usize = 256;
const EXTRA_ISIZE: u16 = 32;
const FIRST_INO: u32 = 11;
const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
const LPF_INO: u32 = 11;
const DESC_SIZE: usize = 64;
const MIB: u64 = 1024 * 1024;
/// Directory blocks end in a 12-byte checksum tail.
const DIR_END: usize = BSU - 12;
const MAX_EXTENT: u64 = 32768;
/// The most names an inode may have, and links a linear directory.
const LINK_MAX: u32 = 65000;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

const EXTENTS_FL: u32 = 0x80000;

/// What the filesystem is made from besides the tree.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    pub label: &'a str,
    pub uuid: [u8; 16],
    pub hash_seed: [u8; 16],
    /// Bytes (rounded down to 4 KiB; the last group may be dropped as
    /// mke2fs does when it is too small to hold its own metadata).
    pub size: u64,
    /// `None`: mke2fs' ratio for the size.
    pub inodes: Option<u64>,
    pub epoch: i64,
    /// Longest extent, in blocks (tests lower it to make many extents).
    pub max_extent: u64,
}

impl Params<'_> {
    pub fn new(label: &str, uuid: [u8; 16], size: u64, epoch: i64) -> Params<'_> {
        Params {
            label,
            uuid,
            hash_seed: uuid,
            size,
            inodes: None,
            epoch,
            max_extent: MAX_EXTENT,
        }
    }
}

/// `xxxxxxxx-xxxx-…` to bytes.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let v = hex::decode(hex).ok()?;
    v.try_into().ok()
}

/// What the writer is, for export cache keys: bump the number whenever
/// the bytes it writes for the same input change.
pub const WRITER: &str = "tplbuild-ext4w 2";

/// A filesystem the parameters cannot make (too small, too few inodes, an
/// entry ext4 cannot hold), as opposed to an I/O error.
#[derive(Debug)]
struct Layout(String);

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Layout {}

fn err(what: impl Into<String>) -> io::Error {
    io::Error::other(Layout(what.into()))
}

/// The reason, if `e` is a problem of the layout rather than of I/O.
pub fn layout_problem(e: &io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|r| r.downcast_ref::<Layout>())
        .map(|l| l.0.clone())
}

// ---------------------------------------------------------------- the tree

#[derive(Debug, Clone)]
struct Xattr {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

#[derive(Debug)]
enum Kind {
    Unused,
    Journal,
    Dir {
        parent: u32,
        entries: Vec<(Vec<u8>, u32, u8)>,
        min_blocks: u64,
    },
    File {
        path: PathBuf,
        size: u64,
    },
    Symlink(Vec<u8>),
    Dev(u64),
    Special,
}

#[derive(Debug)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    links: u32,
    xattrs: Vec<Xattr>,
    kind: Kind,
}

impl Node {
    fn unused() -> Node {
        Node {
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            links: 0,
            xattrs: Vec::new(),
            kind: Kind::Unused,
        }
    }
}

fn file_type(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFREG => 1,
        S_IFDIR => 2,
        S_IFCHR => 3,
        S_IFBLK => 4,
        S_IFIFO => 5,
        S_IFSOCK => 6,
        S_IFLNK => 7,
        _ => 0,
    }
}

/// The ext4 name index and the rest of an xattr name, for the names a
/// layer carries ([`carried_xattr`]).
fn split_xattr_name(name: &[u8]) -> Option<(u8, &[u8])> {
    for (prefix, index) in [(&b"user."[..], 1u8), (b"trusted.", 4), (b"security.", 6)] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return Some((index, rest));
        }
    }
    None
}

/// The xattrs of `path` that the image carries: the names a layer can
/// carry ([`carried_xattr`]), as every other output keeps them, never what
/// the host added to its copy of the tree (an SELinux label, an inherited
/// ACL).
fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let mut out = Vec::new();
    for (name, value) in crate::layer::read_xattrs(path)? {
        // Every carried name is in a namespace ext4 indexes.
        let Some((index, rest)) = split_xattr_name(&name).filter(|_| carried_xattr(&name)) else {
            continue;
        };
        out.push(Xattr {
            index,
            name: rest.to_vec(),
            value,
        });
    }
    // The kernel's lookup in an xattr block stops at the first entry that
    // sorts after the name: (index, length, name).
    out.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    Ok(out)
}

struct Walk {
    nodes: Vec<Node>,
    seen: HashMap<(u64, u64), u32>,
}

/// The node for `path`, not yet linked into the tree.
fn node_from(path: &Path, meta: &std::fs::Metadata) -> io::Result<Node> {
    let mode = meta.mode();
    let kind = match mode & S_IFMT {
        S_IFDIR => Kind::Dir {
            parent: 0,
            entries: Vec::new(),
            min_blocks: 1,
        },
        S_IFREG => Kind::File {
            path: path.to_path_buf(),
            size: meta.len(),
        },
        S_IFLNK => Kind::Symlink(fs_err::read_link(path)?.as_os_str().as_bytes().to_vec()),
        S_IFCHR | S_IFBLK => Kind::Dev(meta.rdev()),
        S_IFIFO | S_IFSOCK => Kind::Special,
        _ => return Err(err(format!("{}: unknown file type", path.display()))),
    };
    Ok(Node {
        mode,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        links: if mode & S_IFMT == S_IFDIR { 2 } else { 1 },
        xattrs: read_xattrs(path)?,
        kind,
    })
}

impl Walk {
    /// A directory to walk: its names, sorted, and the entries met so far.
    fn open(&mut self, dir: PathBuf, ino: u32) -> io::Result<Frame> {
        let mut names: Vec<OsString> = fs_err::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        names.reverse(); // popped from the end
        let mut entries = Vec::with_capacity(names.len() + 1);
        if ino == ROOT_INO {
            // lost+found is made whether the tree has one or not.
            if !names.iter().any(|n| n.as_bytes() == b"lost+found") {
                entries.push((b"lost+found".to_vec(), LPF_INO, 2));
                self.nodes[ROOT_INO as usize].links += 1;
            }
        }
        Ok(Frame {
            dir,
            ino,
            names,
            entries,
        })
    }

    /// Every directory from `root` down, depth first, each entry numbered
    /// when it is met. A stack of frames, not recursion: a tree may be
    /// ~2,000 directories deep, and this runs on a 2 MiB thread stack.
    fn dir(&mut self, root: &Path, root_ino: u32) -> io::Result<()> {
        let mut stack = vec![self.open(root.to_path_buf(), root_ino)?];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top.names.pop() else {
                let mut done = stack.pop().expect("a frame");
                done.entries.sort_by(|a, b| a.0.cmp(&b.0));
                if let Kind::Dir { entries: e, .. } = &mut self.nodes[done.ino as usize].kind {
                    *e = done.entries;
                }
                continue;
            };
            let ino = top.ino;
            let path = top.dir.join(&name);
            let meta = fs_err::symlink_metadata(&path)?;
            let is_dir = meta.file_type().is_dir();
            let ft = file_type(meta.mode());
            if !is_dir && meta.nlink() > 1 {
                if let Some(&other) = self.seen.get(&(meta.dev(), meta.ino())) {
                    self.nodes[other as usize].links += 1;
                    top.entries.push((name.as_bytes().to_vec(), other, ft));
                    continue;
                }
            }
            top.entries.push((name.as_bytes().to_vec(), 0, ft));
            let at = top.entries.len() - 1;
            let node = node_from(&path, &meta)?;
            let child = if ino == ROOT_INO && name.as_bytes() == b"lost+found" {
                if !is_dir {
                    return Err(err(format!(
                        "{}: lost+found must be a directory",
                        path.display()
                    )));
                }
                self.nodes[LPF_INO as usize] = node;
                LPF_INO
            } else {
                let n = u32::try_from(self.nodes.len()).map_err(|_| err("too many inodes"))?;
                self.nodes.push(node);
                n
            };
            stack.last_mut().expect("a frame").entries[at].1 = child;
            if !is_dir && meta.nlink() > 1 {
                self.seen.insert((meta.dev(), meta.ino()), child);
            }
            if is_dir {
                self.nodes[ino as usize].links += 1;
                if let Kind::Dir {
                    parent, min_blocks, ..
                } = &mut self.nodes[child as usize].kind
                {
                    *parent = ino;
                    if child == LPF_INO {
                        *min_blocks = 4;
                    }
                }
                let frame = self.open(path, child)?;
                stack.push(frame);
            }
        }
        Ok(())
    }
}

/// A directory being walked.
struct Frame {
    dir: PathBuf,
    ino: u32,
    /// Names still to visit, the next one last.
    names: Vec<OsString>,
    entries: Vec<(Vec<u8>, u32, u8)>,
}

fn walk(root: &Path, epoch: i64) -> io::Result<Vec<Node>> {
    let mut nodes: Vec<Node> = (0..=LPF_INO).map(|_| Node::unused()).collect();
    let meta = fs_err::symlink_metadata(root)?;
    if !meta.is_dir() {
        return Err(err(format!("{} is not a directory", root.display())));
    }
    let mut root_node = node_from(root, &meta)?;
    if let Kind::Dir { parent, .. } = &mut root_node.kind {
        *parent = ROOT_INO;
    }
    nodes[ROOT_INO as usize] = root_node;
    nodes[JOURNAL_INO as usize] = Node {
        mode: S_IFREG | 0o600,
        links: 1,
        mtime: epoch,
        kind: Kind::Journal,
        ..Node::unused()
    };
    nodes[LPF_INO as usize] = Node {
        mode: S_IFDIR | 0o700,
        links: 2,
        mtime: epoch,
        kind: Kind::Dir {
            parent: ROOT_INO,
            entries: Vec::new(),
            min_blocks: 4,
        },
        ..Node::unused()
    };
    let mut w = Walk {
        nodes,
        seen: HashMap::new(),
    };
    w.dir(root, ROOT_INO)?;
    Ok(w.nodes)
}

// ---------------------------------------------------------------- geometry

#[derive(Debug, Clone, Copy)]
struct Geo {
    blocks: u64,
    groups: u64,
    ipg: u64,
    itb: u64,
    gdt_blocks: u64,
}

impl Geo {
    fn inodes(&self) -> u64 {
        self.ipg * self.groups
    }
}

fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    for p in [3u64, 5, 7] {
        let mut x = p;
        while x < g {
            x *= p;
        }
        if x == g {
            return true;
        }
    }
    false
}

/// mke2fs' inode ratio for the size (its usage types).
fn default_ratio(size: u64) -> u64 {
    if size < 3 * MIB {
        8192
    } else if size < 512 * MIB {
        4096
    } else if size < 4 * 1024 * 1024 * MIB {
        16384
    } else if size < 16 * 1024 * 1024 * MIB {
        32768
    } else {
        65536
    }
}

/// As `ext2fs_initialize` computes it.
fn geometry(size: u64, inodes: Option<u64>) -> io::Result<Geo> {
    let mut blocks = size / BS;
    let inode_count = inodes.unwrap_or(size / default_ratio(size)).max(16);
    loop {
        if blocks < 64 {
            return Err(err(format!("{size} bytes is too small for ext4")));
        }
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
        let gdt_blocks = (groups * DESC_SIZE as u64).div_ceil(BS);
        let per_block = BS / INODE_SIZE as u64;
        let mut ipg = inode_count.div_ceil(groups).min(BS * 8);
        let mut itb = (ipg * INODE_SIZE as u64).div_ceil(BS);
        ipg = itb * per_block;
        ipg &= !7;
        ipg = ipg.min(BS * 8);
        itb = (ipg * INODE_SIZE as u64).div_ceil(BS);
        let overhead = 3 + itb + gdt_blocks;
        if overhead > BLOCKS_PER_GROUP {
            return Err(err("too many inodes for the size"));
        }
        let rem = blocks % BLOCKS_PER_GROUP;
        if groups == 1 && rem != 0 && rem < overhead {
            return Err(err(format!("{size} bytes is too small for ext4")));
        }
        if rem != 0 && rem < overhead + 50 {
            blocks -= rem;
            continue;
        }
        if ipg * groups >= 1 << 32 {
            return Err(err("too many inodes"));
        }
        return Ok(Geo {
            blocks,
            groups,
            ipg,
            itb,
            gdt_blocks,
        });
    }
}

/// `ext2fs_default_journal_size`, in blocks.
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        b if b < 2048 => 0,
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

// ---------------------------------------------------------------- blocks

struct Alloc {
    next: u64,
    end: u64,
    /// Backup superblocks and descriptors: (start, len), sorted.
    reserved: Vec<(u64, u64)>,
    /// The block bitmaps of all groups, one after another.
    bitmap: Vec<u8>,
}

impl Alloc {
    fn mark(&mut self, start: u64, len: u64) {
        let end = start + len;
        let mut b = start;
        while b < end && b % 8 != 0 {
            self.bitmap[(b / 8) as usize] |= 1 << (b % 8);
            b += 1;
        }
        if b + 8 <= end {
            let whole = (end - b) / 8;
            self.bitmap[(b / 8) as usize..(b / 8 + whole) as usize].fill(0xff);
            b += whole * 8;
        }
        while b < end {
            self.bitmap[(b / 8) as usize] |= 1 << (b % 8);
            b += 1;
        }
    }

    /// The first reserved range ending after `at`.
    fn next_reserved(&self, at: u64) -> Option<(u64, u64)> {
        let i = self.reserved.partition_point(|r| r.0 + r.1 <= at);
        self.reserved.get(i).copied()
    }

    /// `n` blocks in one run.
    fn contiguous(&mut self, n: u64) -> io::Result<u64> {
        loop {
            let start = self.next;
            match self.next_reserved(start) {
                Some((rs, rl)) if start + n > rs => self.next = rs + rl,
                _ => break,
            }
        }
        let start = self.next;
        if start + n > self.end {
            return Err(err(
                "the tree does not fit in the filesystem; give a larger size=",
            ));
        }
        self.next += n;
        self.mark(start, n);
        Ok(start)
    }

    /// `n` blocks in as few runs as the reserved ranges allow.
    fn runs(&mut self, mut n: u64) -> io::Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        while n > 0 {
            let start = self.next;
            let take = match self.next_reserved(start) {
                Some((rs, rl)) if start >= rs => {
                    self.next = rs + rl;
                    continue;
                }
                Some((rs, _)) => n.min(rs - start),
                None => n,
            };
            if start + take > self.end {
                return Err(err(
                    "the tree does not fit in the filesystem; give a larger size=",
                ));
            }
            self.mark(start, take);
            self.next += take;
            n -= take;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += take,
                _ => out.push((start, take)),
            }
        }
        Ok(out)
    }
}

/// Buffers writes of consecutive blocks into large `pwrite`s, made by a
/// thread of their own while the next buffer fills.
struct Out {
    offset: u64,
    /// `OUT_BUF` bytes, of which `used` are pending at `buf_block`.
    buf: Vec<u8>,
    used: usize,
    buf_block: u64,
    /// For `sendfile`, which writes at the file position.
    direct: File,
    to_writer: Option<std::sync::mpsc::SyncSender<Job>>,
    /// Bytes `sendfile` wrote, `(at, len)`, not yet handed to the writer
    /// for writeback.
    sent: Option<(u64, u64)>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<io::Result<()>>>,
}

/// What the writer thread is asked to do.
enum Job {
    /// Write `buf[..len]` at byte `at`, start its writeback, give `buf`
    /// back.
    Write(Vec<u8>, u64, usize),
    /// Start the writeback of bytes `sendfile` wrote.
    Writeback(u64, u64),
}

/// Start writing `len` bytes at `at` back to the device, without waiting.
/// The output is fsynced once it is whole; started here, the host
/// filesystem's block allocation and I/O submission for the range run on
/// the writer thread while the filesystem is still being filled, instead
/// of all at once in that fsync (or at close: ext4 flushes a file that was
/// truncated to 0 when it is closed). A hint: its result does not matter.
fn start_writeback(file: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            at as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

const OUT_BUF: usize = 16 * 1024 * 1024;
const OUT_BUFS: usize = 3;
/// Files from this size on are copied with `sendfile`.
const SENDFILE_MIN: u64 = 256 * 1024;
static ZERO_BLOCK: [u8; BSU] = [0; BSU];

impl Out {
    fn new(file: &File, offset: u64) -> io::Result<Out> {
        let direct = file.try_clone()?;
        let file = file.try_clone()?;
        // Memory is bounded by the buffers, not by the queue.
        let (to_writer, jobs) = std::sync::mpsc::sync_channel::<Job>(64);
        let (give_back, free) = std::sync::mpsc::sync_channel(OUT_BUFS);
        for _ in 1..OUT_BUFS {
            give_back.send(vec![0u8; OUT_BUF]).unwrap();
        }
        let writer = std::thread::Builder::new()
            .name("ext4w-write".into())
            .spawn(move || -> io::Result<()> {
                for job in jobs {
                    match job {
                        Job::Write(buf, at, len) => {
                            file.write_all_at(&buf[..len], at)?;
                            start_writeback(&file, at, len as u64);
                            // The filler may be done and gone.
                            let _ = give_back.send(buf);
                        }
                        Job::Writeback(at, len) => start_writeback(&file, at, len),
                    }
                }
                Ok(())
            })?;
        Ok(Out {
            offset,
            buf: vec![0u8; OUT_BUF],
            used: 0,
            buf_block: 0,
            direct,
            to_writer: Some(to_writer),
            sent: None,
            free,
            writer: Some(writer),
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.used == 0 {
            return Ok(());
        }
        let next = match self.free.recv() {
            Ok(b) => b,
            Err(_) => return Err(self.writer_failed()),
        };
        let full = std::mem::replace(&mut self.buf, next);
        let job = Job::Write(full, self.offset + self.buf_block * BS, self.used);
        self.used = 0;
        if self.to_writer.as_ref().unwrap().send(job).is_err() {
            return Err(self.writer_failed());
        }
        Ok(())
    }

    fn writer_failed(&mut self) -> io::Error {
        self.to_writer = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(p)) => std::panic::resume_unwind(p),
            _ => err("the ext4 writer thread stopped"),
        }
    }

    /// Hand what `sendfile` wrote to the writer for writeback: a range
    /// once it stops growing, or passes `OUT_BUF`.
    fn note_sent(&mut self, at: u64, len: u64) -> io::Result<()> {
        let (start, end) = match self.sent {
            Some((s, l)) if s + l == at => (s, at + len),
            Some((s, l)) => {
                self.send_writeback(s, l)?;
                (at, at + len)
            }
            None => (at, at + len),
        };
        self.sent = Some((start, end - start));
        if end - start >= OUT_BUF as u64 {
            self.sent = None;
            self.send_writeback(start, end - start)?;
        }
        Ok(())
    }

    fn send_writeback(&mut self, at: u64, len: u64) -> io::Result<()> {
        if self
            .to_writer
            .as_ref()
            .unwrap()
            .send(Job::Writeback(at, len))
            .is_err()
        {
            return Err(self.writer_failed());
        }
        Ok(())
    }

    /// Write what is pending and wait for every write.
    fn finish(mut self) -> io::Result<()> {
        self.flush()?;
        if let Some((at, len)) = self.sent.take() {
            self.send_writeback(at, len)?;
        }
        self.to_writer = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => Ok(()),
        }
    }

    /// Room for `bytes` (at most `OUT_BUF`) at `block`, zeroed from
    /// `bytes` up to a whole block.
    fn room(&mut self, block: u64, bytes: usize) -> io::Result<&mut [u8]> {
        let padded = bytes.div_ceil(BSU) * BSU;
        assert!(padded <= OUT_BUF);
        let end_block = self.buf_block + (self.used / BSU) as u64;
        if self.used > 0 && (block != end_block || self.used + padded > OUT_BUF) {
            self.flush()?;
        }
        if self.used == 0 {
            self.buf_block = block;
        }
        let at = self.used;
        self.buf[at + bytes..at + padded].copy_from_slice(&ZERO_BLOCK[..padded - bytes]);
        self.used += padded;
        Ok(&mut self.buf[at..at + bytes])
    }

    fn put(&mut self, block: u64, data: &[u8]) -> io::Result<()> {
        for (i, chunk) in data.chunks(OUT_BUF).enumerate() {
            let b = block + (i * OUT_BUF / BSU) as u64;
            self.room(b, chunk.len())?.copy_from_slice(chunk);
        }
        Ok(())
    }

    /// All of `src` (`size` bytes) into `runs`, copied by the kernel
    /// (`sendfile`: one copy, where a read and a write make two), the
    /// last block's tail zeroed. Not through the buffer: for large files.
    fn send_file(&mut self, src: &File, size: u64, runs: &[(u64, u64)]) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut left = size;
        let mut src_off = 0u64;
        for &(block, len) in runs {
            let bytes = left.min(len * BS);
            let at = self.offset + block * BS;
            (&self.direct).seek(SeekFrom::Start(at))?;
            let mut done = 0;
            while done < bytes {
                let n = rustix::fs::sendfile(
                    &self.direct,
                    src,
                    Some(&mut src_off),
                    (bytes - done).min(1 << 30) as usize,
                )?;
                if n == 0 {
                    return Err(err("a file shrank while it was read"));
                }
                done += n as u64;
            }
            let tail = (BS - bytes % BS) % BS;
            if tail > 0 {
                self.direct
                    .write_all_at(&ZERO_BLOCK[..tail as usize], at + bytes)?;
            }
            self.note_sent(at, bytes + tail)?;
            left -= bytes;
        }
        Ok(())
    }

    /// `bytes` from `from` at `block` onwards.
    fn read_into(&mut self, block: u64, bytes: usize, from: &mut File) -> io::Result<()> {
        let mut done = 0;
        while done < bytes {
            let n = (bytes - done).min(OUT_BUF);
            from.read_exact(self.room(block + (done / BSU) as u64, n)?)?;
            done += n;
        }
        Ok(())
    }
}

/// On an early return, no write may land after `make` has returned: stop
/// the writer and wait for it (what it was writing is being thrown away).
impl Drop for Out {
    fn drop(&mut self) {
        self.to_writer = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

// ---------------------------------------------------------------- records

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Low 32 bits of a time, and the `_extra` field's epoch bits; clamped,
/// as the kernel clamps, to what they can hold (1901 to 2446).
fn time_parts(t: i64) -> (u32, u32) {
    let t = t.clamp(i32::MIN as i64, i32::MAX as i64 + (3 << 32));
    let lo = t as i32;
    let extra = ((t - lo as i64) >> 32) as u32 & 3;
    (lo as u32, extra)
}

fn split_extents(runs: &[(u64, u64)], max: u64) -> Vec<(u32, u64, u16)> {
    let mut out = Vec::new();
    let mut logical = 0u64;
    for &(start, len) in runs {
        let mut done = 0;
        while done < len {
            let l = (len - done).min(max);
            out.push((logical as u32, start + done, l as u16));
            logical += l;
            done += l;
        }
    }
    out
}

fn extent_header(b: &mut [u8], entries: u16, max: u16, depth: u16) {
    put16(b, 0, 0xF30A);
    put16(b, 2, entries);
    put16(b, 4, max);
    put16(b, 6, depth);
    put32(b, 8, 0);
}

fn extent_entry(b: &mut [u8], logical: u32, start: u64, len: u16) {
    put32(b, 0, logical);
    put16(b, 4, len);
    put16(b, 6, (start >> 32) as u16);
    put32(b, 8, start as u32);
}

/// The inode-specific checksum seed (generation 0).
fn inode_seed(csum_seed: u32, ino: u32) -> u32 {
    let c = crc32c_le(csum_seed, &ino.to_le_bytes());
    crc32c_le(c, &0u32.to_le_bytes())
}

/// `ext2fs_ext_attr_hash_entry` for a name and a value.
fn xattr_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in name {
        // Unsigned, as e2fsprogs since 1.46.6 and Linux since 6.2 (and its
        // stable kernels) hash; both still accept the old signed hash.
        h = (h << 5) ^ (h >> 27) ^ c as u32;
    }
    if !value.is_empty() {
        let mut padded = value.to_vec();
        padded.resize(value.len().div_ceil(4) * 4, 0);
        for w in padded.chunks_exact(4) {
            h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(w.try_into().unwrap());
        }
    }
    h
}

fn xattr_entry_len(x: &Xattr) -> usize {
    (16 + x.name.len()).div_ceil(4) * 4
}

fn xattr_value_len(x: &Xattr) -> usize {
    x.value.len().div_ceil(4) * 4
}

/// Entries and values into `area`; value offsets count from `base`
/// (the area's start for a block, the first entry for an inode body).
/// Returns the entry hashes.
fn write_xattrs(area: &mut [u8], first_entry: usize, base: usize, xattrs: &[Xattr]) -> Vec<u32> {
    let mut e = first_entry;
    let mut v = area.len();
    let mut hashes = Vec::new();
    for x in xattrs {
        let vl = xattr_value_len(x);
        let offs = if x.value.is_empty() {
            0
        } else {
            v -= vl;
            area[v..v + x.value.len()].copy_from_slice(&x.value);
            v - base
        };
        let hash = xattr_hash(&x.name, &x.value);
        area[e] = x.name.len() as u8;
        area[e + 1] = x.index;
        put16(area, e + 2, offs as u16);
        put32(area, e + 4, 0);
        put32(area, e + 8, x.value.len() as u32);
        put32(area, e + 12, hash);
        area[e + 16..e + 16 + x.name.len()].copy_from_slice(&x.name);
        e += xattr_entry_len(x);
        hashes.push(hash);
    }
    hashes
}

fn xattrs_fit(xattrs: &[Xattr], room: usize) -> bool {
    let need: usize = xattrs
        .iter()
        .map(|x| xattr_entry_len(x) + xattr_value_len(x))
        .sum::<usize>()
        + 4;
    need <= room
}

/// Directory blocks for `entries` (with "." and ".." first), checksums
/// not yet filled in.
fn dir_blocks(ino: u32, parent: u32, entries: &[(Vec<u8>, u32, u8)], min_blocks: u64) -> Vec<u8> {
    let mut out = vec![0u8; BSU];
    let mut block_start = 0usize;
    let mut at = 0usize;
    let mut last: Option<usize> = None;
    let all = [(b".".to_vec(), ino, 2u8), (b"..".to_vec(), parent, 2u8)];
    for (name, child, ft) in all.iter().chain(entries.iter()) {
        let len = (8 + name.len()).div_ceil(4) * 4;
        if at + len > block_start + DIR_END {
            let l = last.expect("an entry fits in an empty block");
            put16(&mut out, l + 4, (block_start + DIR_END - l) as u16);
            block_start += BSU;
            out.resize(block_start + BSU, 0);
            at = block_start;
        }
        put32(&mut out, at, *child);
        put16(&mut out, at + 4, len as u16);
        out[at + 6] = name.len() as u8;
        out[at + 7] = *ft;
        out[at + 8..at + 8 + name.len()].copy_from_slice(name);
        last = Some(at);
        at += len;
    }
    let l = last.unwrap();
    put16(&mut out, l + 4, (block_start + DIR_END - l) as u16);
    while (out.len() / BSU) < min_blocks as usize {
        let s = out.len();
        out.resize(s + BSU, 0);
        put16(&mut out, s + 4, DIR_END as u16);
    }
    for s in (0..out.len()).step_by(BSU) {
        let t = s + DIR_END;
        put16(&mut out, t + 4, 12);
        out[t + 7] = 0xDE;
    }
    out
}

// ---------------------------------------------------------------- writing

/// Make the filesystem for the tree at `root` in `dest`, `offset` bytes in
/// (the file is made, or lengthened to hold it; the rest is left alone).
/// Returns the filesystem's size in blocks.
pub fn make(root: &Path, p: &Params, dest: &Path, offset: u64) -> io::Result<u64> {
    let t0 = std::time::Instant::now();
    let nodes = walk(root, p.epoch)?;
    let t_walk = t0.elapsed().as_secs_f64();
    let geo = geometry(p.size, p.inodes)?;
    let max_ino = (nodes.len() - 1) as u64;
    if max_ino > geo.inodes() {
        return Err(err(format!(
            "the tree needs {} inodes, the filesystem has {}; give a larger inodes=",
            max_ino,
            geo.inodes()
        )));
    }
    let file = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)?
        .into_file();
    let want_len = offset + geo.blocks * BS;
    if file.metadata()?.len() < want_len {
        file.set_len(want_len)?;
    }
    // Blocks not written (free space, the journal, unused inode tables)
    // read as zeros whatever the file held before, as a hole; where the
    // filesystem cannot punch one, the inode tables are written as zeros
    // (the rest is left, as mke2fs leaves it).
    let punched = rustix::fs::fallocate(
        &file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        offset,
        geo.blocks * BS,
    )
    .is_ok();
    let csum_seed = crc32c_le(!0, &p.uuid);

    // Fixed metadata.
    let mut reserved = Vec::new();
    for g in 0..geo.groups {
        if has_super(g) {
            reserved.push((g * BLOCKS_PER_GROUP, 1 + geo.gdt_blocks));
        }
    }
    let mut alloc = Alloc {
        next: 1 + geo.gdt_blocks,
        end: geo.blocks,
        reserved: reserved.clone(),
        bitmap: vec![0u8; (geo.groups * BS) as usize],
    };
    for &(s, l) in &reserved {
        alloc.mark(s, l);
    }
    let mut block_bitmap_at = Vec::new();
    for _ in 0..geo.groups {
        block_bitmap_at.push(alloc.contiguous(1)?);
    }
    let mut inode_bitmap_at = Vec::new();
    for _ in 0..geo.groups {
        inode_bitmap_at.push(alloc.contiguous(1)?);
    }
    let mut inode_table_at = Vec::new();
    for _ in 0..geo.groups {
        inode_table_at.push(alloc.contiguous(geo.itb)?);
    }

    let mut out = Out::new(&file, offset)?;
    let mut inodes = vec![[0u8; INODE_SIZE]; nodes.len()];
    let mut dirs_per_group = vec![0u32; geo.groups as usize];

    // Journal.
    let jblocks = journal_blocks(geo.blocks);
    if jblocks == 0 {
        return Err(err("the filesystem is too small for a journal"));
    }
    let jruns = alloc.runs(jblocks)?;
    let zeros = vec![0u8; 4 * MIB as usize];
    if !punched {
        // A journal with old transactions in it must never be replayed.
        for &(start, len) in &jruns {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeros.len() as u64 / BS);
                file.write_all_at(&zeros[..(n * BS) as usize], offset + (start + at) * BS)?;
                at += n;
            }
        }
    }
    {
        let mut jsb = vec![0u8; BSU];
        let be = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        be(&mut jsb, 0, 0xC03B_3998);
        be(&mut jsb, 4, 4); // superblock v2
        be(&mut jsb, 12, BS as u32);
        be(&mut jsb, 16, jblocks as u32);
        be(&mut jsb, 20, 1); // s_first
        be(&mut jsb, 24, 1); // s_sequence
        jsb[0x30..0x40].copy_from_slice(&p.uuid);
        be(&mut jsb, 0x40, 1); // s_nr_users
        out.put(jruns[0].0, &jsb)?;
    }

    let mut jnl_iblock = [0u8; 60];
    for ino in 1..nodes.len() as u32 {
        let node = &nodes[ino as usize];
        if matches!(node.kind, Kind::Unused) {
            continue;
        }
        let inode = &mut inodes[ino as usize];
        let mut flags = 0u32;
        let mut size: u64 = 0;
        let mut data_blocks: u64 = 0;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut use_extents = false;
        match &node.kind {
            Kind::Unused => unreachable!(),
            Kind::Journal => {
                size = jblocks * BS;
                data_blocks = jblocks;
                runs = jruns.clone();
                use_extents = true;
            }
            Kind::Dir {
                parent,
                entries,
                min_blocks,
            } => {
                let mut blocks = dir_blocks(ino, *parent, entries, *min_blocks);
                let n = (blocks.len() / BSU) as u64;
                let seed = inode_seed(csum_seed, ino);
                for s in (0..blocks.len()).step_by(BSU) {
                    let c = crc32c_le(seed, &blocks[s..s + DIR_END]);
                    put32(&mut blocks, s + BSU - 4, c);
                }
                runs = alloc.runs(n)?;
                let mut at = 0usize;
                for &(s, l) in &runs {
                    out.put(s, &blocks[at..at + (l as usize) * BSU])?;
                    at += l as usize * BSU;
                }
                size = n * BS;
                data_blocks = n;
                use_extents = true;
                dirs_per_group[((ino as u64 - 1) / geo.ipg) as usize] += 1;
            }
            Kind::File { path, size: sz } => {
                size = *sz;
                data_blocks = sz.div_ceil(BS);
                runs = alloc.runs(data_blocks)?;
                use_extents = true;
                if *sz >= SENDFILE_MIN {
                    let f = fs_err::File::open(path)?.into_file();
                    out.send_file(&f, *sz, &runs)?;
                    if f.metadata()?.len() != *sz {
                        return Err(err(format!("{} changed while read", path.display())));
                    }
                } else if *sz > 0 {
                    let mut f = fs_err::File::open(path)?.into_file();
                    let mut left = *sz as usize;
                    for &(s, l) in &runs {
                        let bytes = left.min(l as usize * BSU);
                        out.read_into(s, bytes, &mut f)?;
                        left -= bytes;
                    }
                    // The tree must not have grown meanwhile either.
                    if f.read(&mut [0u8; 1])? != 0 {
                        return Err(err(format!("{} changed while read", path.display())));
                    }
                }
            }
            Kind::Symlink(target) => {
                size = target.len() as u64;
                if target.len() < 60 {
                    inode[0x28..0x28 + target.len()].copy_from_slice(target);
                } else {
                    if target.len() >= BSU {
                        return Err(err("symlink target too long"));
                    }
                    data_blocks = 1;
                    runs = alloc.runs(1)?;
                    out.put(runs[0].0, target)?;
                    use_extents = true;
                }
            }
            Kind::Dev(rdev) => {
                let major = rustix::fs::major(*rdev);
                let minor = rustix::fs::minor(*rdev);
                if major < 256 && minor < 256 {
                    put32(inode, 0x28, major * 256 + minor);
                } else {
                    put32(
                        inode,
                        0x2C,
                        (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
                    );
                }
            }
            Kind::Special => {}
        }
        let mut fs_blocks = data_blocks;
        if use_extents {
            flags |= EXTENTS_FL;
            let ext = split_extents(&runs, p.max_extent.min(MAX_EXTENT));
            let ib = &mut inode[0x28..0x28 + 60];
            if ext.len() <= 4 {
                extent_header(ib, ext.len() as u16, 4, 0);
                for (i, &(l, s, n)) in ext.iter().enumerate() {
                    extent_entry(&mut ib[12 + 12 * i..], l, s, n);
                }
            } else {
                // Depth 1: up to four leaf blocks, indexed from the inode
                // (4 × 340 extents of up to 128 MiB: files of ~170 GiB).
                const LEAF_MAX: usize = (BSU - 12 - 4) / 12;
                let leaves: Vec<_> = ext.chunks(LEAF_MAX).collect();
                if leaves.len() > 4 {
                    return Err(err(format!(
                        "a file of {} bytes needs more extents than tplbuild writes",
                        size
                    )));
                }
                extent_header(ib, leaves.len() as u16, 4, 1);
                for (k, chunk) in leaves.iter().enumerate() {
                    let leaf_at = alloc.contiguous(1)?;
                    fs_blocks += 1;
                    let mut leaf = vec![0u8; BSU];
                    extent_header(&mut leaf, chunk.len() as u16, LEAF_MAX as u16, 0);
                    for (i, &(l, s, n)) in chunk.iter().enumerate() {
                        extent_entry(&mut leaf[12 + 12 * i..], l, s, n);
                    }
                    let tail = 12 + 12 * LEAF_MAX;
                    let c = crc32c_le(inode_seed(csum_seed, ino), &leaf[..tail]);
                    put32(&mut leaf, tail, c);
                    out.put(leaf_at, &leaf)?;
                    let idx = &mut ib[12 + 12 * k..24 + 12 * k];
                    put32(idx, 0, chunk[0].0);
                    put32(idx, 4, leaf_at as u32);
                    put16(idx, 8, (leaf_at >> 32) as u16);
                    put16(idx, 10, 0);
                }
            }
        }
        // Xattrs: in the inode body when all fit, else all in a block.
        if !node.xattrs.is_empty() {
            let body = 128 + EXTRA_ISIZE as usize;
            if xattrs_fit(&node.xattrs, INODE_SIZE - body - 4) {
                put32(inode, body, 0xEA02_0000);
                let area = &mut inode[body + 4..];
                write_xattrs(area, 0, 0, &node.xattrs);
            } else {
                if !xattrs_fit(&node.xattrs, BSU - 32) {
                    return Err(err("xattrs too large for one block"));
                }
                let at = alloc.contiguous(1)?;
                fs_blocks += 1;
                let mut blk = vec![0u8; BSU];
                put32(&mut blk, 0, 0xEA02_0000);
                put32(&mut blk, 4, 1); // refcount
                put32(&mut blk, 8, 1); // blocks
                let hashes = write_xattrs(&mut blk, 32, 0, &node.xattrs);
                let mut h: u32 = 0;
                for e in hashes {
                    h = (h << 16) ^ (h >> 16) ^ e;
                }
                put32(&mut blk, 12, h);
                let c = crc32c_le(crc32c_le(csum_seed, &at.to_le_bytes()), &blk);
                put32(&mut blk, 16, c);
                out.put(at, &blk)?;
                put32(inode, 0x68, at as u32);
                put16(inode, 0x76, (at >> 32) as u16);
            }
        }

        // A directory's count may pass 65000 (dir_nlink: then it is 1)
        // only when it is a hash tree, and these are linear.
        if node.links > LINK_MAX {
            return Err(err(match node.kind {
                Kind::Dir { .. } => format!(
                    "a directory has {} subdirectories; ext4 allows {} here",
                    node.links - 2,
                    LINK_MAX - 2
                ),
                _ => format!("a file has {} names; ext4 allows {LINK_MAX}", node.links),
            }));
        }
        let links = node.links;
        let (atime, aextra) = time_parts(p.epoch);
        let (mtime, mextra) = time_parts(node.mtime);
        put16(inode, 0x00, node.mode as u16);
        put16(inode, 0x02, node.uid as u16);
        put32(inode, 0x04, size as u32);
        put32(inode, 0x08, atime);
        put32(inode, 0x0C, atime);
        put32(inode, 0x10, mtime);
        put16(inode, 0x18, node.gid as u16);
        put16(inode, 0x1A, links as u16);
        let sectors = fs_blocks * (BS / 512);
        put32(inode, 0x1C, sectors as u32);
        put16(inode, 0x74, (sectors >> 32) as u16);
        put32(inode, 0x20, flags);
        put32(inode, 0x6C, (size >> 32) as u32);
        put16(inode, 0x78, (node.uid >> 16) as u16);
        put16(inode, 0x7A, (node.gid >> 16) as u16);
        put16(inode, 0x80, EXTRA_ISIZE);
        put32(inode, 0x84, aextra);
        put32(inode, 0x88, mextra);
        put32(inode, 0x8C, aextra);
        put32(inode, 0x90, atime);
        put32(inode, 0x94, aextra);
        if ino == JOURNAL_INO {
            jnl_iblock.copy_from_slice(&inode[0x28..0x28 + 60]);
        }
        let seed = crc32c_le(csum_seed, &ino.to_le_bytes());
        let seed = crc32c_le(seed, &inode[0x64..0x68]);
        let c = crc32c_le(seed, &inode[..]);
        put16(inode, 0x7C, c as u16);
        put16(inode, 0x82, (c >> 16) as u16);
    }

    let t_data = t0.elapsed().as_secs_f64();
    // Inode tables: the used inodes, zeros for the rest.
    out.flush()?;
    for g in 0..geo.groups {
        let first = g * geo.ipg + 1;
        let table = inode_table_at[g as usize];
        let mut written = 0u64;
        let used_end = (max_ino + 1).min(first + geo.ipg);
        if used_end > first {
            let room = out.room(table, ((used_end - first) as usize) * INODE_SIZE)?;
            for (i, ino) in (first..used_end).enumerate() {
                room[i * INODE_SIZE..(i + 1) * INODE_SIZE].copy_from_slice(&inodes[ino as usize]);
            }
            written = ((used_end - first) * INODE_SIZE as u64).div_ceil(BS);
        }
        out.flush()?;
        let mut at = if punched { geo.itb } else { written };
        while at < geo.itb {
            let n = (geo.itb - at).min(zeros.len() as u64 / BS);
            file.write_all_at(&zeros[..(n * BS) as usize], offset + (table + at) * BS)?;
            at += n;
        }
    }

    let t_itable = t0.elapsed().as_secs_f64();
    // Bitmaps, descriptors.
    let blocks_in_last = geo.blocks - (geo.groups - 1) * BLOCKS_PER_GROUP;
    for b in blocks_in_last..BLOCKS_PER_GROUP {
        let b = (geo.groups - 1) * BLOCKS_PER_GROUP + b;
        alloc.bitmap[(b / 8) as usize] |= 1 << (b % 8);
    }
    let mut gdt = vec![0u8; (geo.gdt_blocks * BS) as usize];
    let mut free_blocks_total = 0u64;
    let mut free_inodes_total = 0u64;
    for g in 0..geo.groups {
        let bmap = &alloc.bitmap[(g * BS) as usize..((g + 1) * BS) as usize];
        let in_group = if g == geo.groups - 1 {
            blocks_in_last
        } else {
            BLOCKS_PER_GROUP
        };
        let used: u64 =
            bmap.iter().map(|b| b.count_ones() as u64).sum::<u64>() - (BLOCKS_PER_GROUP - in_group);
        let free_blocks = in_group - used;
        let mut imap = vec![0u8; BSU];
        let first = g * geo.ipg + 1;
        let used_inodes = (max_ino + 1).saturating_sub(first).min(geo.ipg);
        for i in 0..used_inodes {
            imap[(i / 8) as usize] |= 1 << (i % 8);
        }
        for i in geo.ipg..BS * 8 {
            imap[(i / 8) as usize] |= 1 << (i % 8);
        }
        let free_inodes = geo.ipg - used_inodes;
        free_blocks_total += free_blocks;
        free_inodes_total += free_inodes;
        out.put(block_bitmap_at[g as usize], bmap)?;
        out.put(inode_bitmap_at[g as usize], &imap)?;
        let bcs = crc32c_le(csum_seed, bmap);
        let ics = crc32c_le(csum_seed, &imap[..(geo.ipg / 8) as usize]);
        let d = &mut gdt[g as usize * DESC_SIZE..(g as usize + 1) * DESC_SIZE];
        let bb = block_bitmap_at[g as usize];
        let ib = inode_bitmap_at[g as usize];
        let it = inode_table_at[g as usize];
        put32(d, 0x00, bb as u32);
        put32(d, 0x04, ib as u32);
        put32(d, 0x08, it as u32);
        put16(d, 0x0C, free_blocks as u16);
        put16(d, 0x0E, free_inodes as u16);
        put16(d, 0x10, dirs_per_group[g as usize] as u16);
        put16(d, 0x12, 0x4); // ITABLE_ZEROED
        put16(d, 0x18, bcs as u16);
        put16(d, 0x1A, ics as u16);
        put16(d, 0x1C, (geo.ipg - used_inodes) as u16);
        put32(d, 0x20, (bb >> 32) as u32);
        put32(d, 0x24, (ib >> 32) as u32);
        put32(d, 0x28, (it >> 32) as u32);
        put16(d, 0x2C, (free_blocks >> 16) as u16);
        put16(d, 0x2E, (free_inodes >> 16) as u16);
        put16(d, 0x30, (dirs_per_group[g as usize] >> 16) as u16);
        put16(d, 0x32, ((geo.ipg - used_inodes) >> 16) as u16);
        put16(d, 0x38, (bcs >> 16) as u16);
        put16(d, 0x3A, (ics >> 16) as u16);
        let c = crc32c_le(csum_seed, &(g as u32).to_le_bytes());
        let c = crc32c_le(c, d); // with bg_checksum still 0
        put16(d, 0x1E, c as u16);
    }
    out.flush()?;

    // Superblock.
    let mut sb = vec![0u8; 1024];
    let inodes_count = geo.inodes();
    let r_blocks = (geo.blocks as f64 * 5.0 / 100.0) as u64;
    let epoch = time_parts(p.epoch).0;
    put32(&mut sb, 0x00, inodes_count as u32);
    put32(&mut sb, 0x04, geo.blocks as u32);
    put32(&mut sb, 0x08, r_blocks as u32);
    put32(&mut sb, 0x0C, free_blocks_total as u32);
    put32(&mut sb, 0x10, free_inodes_total as u32);
    put32(&mut sb, 0x14, 0);
    put32(&mut sb, 0x18, 2);
    put32(&mut sb, 0x1C, 2);
    put32(&mut sb, 0x20, BLOCKS_PER_GROUP as u32);
    put32(&mut sb, 0x24, BLOCKS_PER_GROUP as u32);
    put32(&mut sb, 0x28, geo.ipg as u32);
    put32(&mut sb, 0x30, epoch); // wtime
    put16(&mut sb, 0x36, 0xFFFF); // max mount count -1
    put16(&mut sb, 0x38, 0xEF53);
    put16(&mut sb, 0x3A, 1); // clean
    put16(&mut sb, 0x3C, 1); // errors: continue
    put32(&mut sb, 0x40, epoch); // lastcheck
    put32(&mut sb, 0x4C, 1); // dynamic rev
    put32(&mut sb, 0x54, FIRST_INO);
    put16(&mut sb, 0x58, INODE_SIZE as u16);
    // compat: has_journal, ext_attr, dir_index
    put32(&mut sb, 0x5C, 0x4 | 0x8 | 0x20);
    // incompat: filetype, extents, 64bit, flex_bg
    put32(&mut sb, 0x60, 0x2 | 0x40 | 0x80 | 0x200);
    // ro_compat: sparse_super, large_file, huge_file, dir_nlink,
    // extra_isize, metadata_csum
    put32(&mut sb, 0x64, 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400);
    sb[0x68..0x78].copy_from_slice(&p.uuid);
    let label = p.label.as_bytes();
    let n = label.len().min(16);
    sb[0x78..0x78 + n].copy_from_slice(&label[..n]);
    put32(&mut sb, 0xE0, JOURNAL_INO);
    sb[0xEC..0xFC].copy_from_slice(&p.hash_seed);
    sb[0xFC] = 1; // half_md4
    sb[0xFD] = 1; // journal backup: inode blocks
    put16(&mut sb, 0xFE, DESC_SIZE as u16);
    put32(&mut sb, 0x100, 0x4 | 0x8); // user_xattr, acl
    put32(&mut sb, 0x108, epoch); // mkfs time
    for i in 0..15 {
        put32(&mut sb, 0x10C + 4 * i, get32(&jnl_iblock, 4 * i));
    }
    put32(&mut sb, 0x10C + 4 * 15, ((jblocks * BS) >> 32) as u32);
    put32(&mut sb, 0x10C + 4 * 16, (jblocks * BS) as u32);
    put32(&mut sb, 0x150, (geo.blocks >> 32) as u32);
    put32(&mut sb, 0x154, (r_blocks >> 32) as u32);
    put32(&mut sb, 0x158, (free_blocks_total >> 32) as u32);
    put16(&mut sb, 0x15C, EXTRA_ISIZE);
    put16(&mut sb, 0x15E, EXTRA_ISIZE);
    put32(&mut sb, 0x160, 0x1); // signed directory hash, as mke2fs on x86
    sb[0x174] = 4; // 16 groups per flex group
    sb[0x175] = 1; // crc32c

    for g in 0..geo.groups {
        if !has_super(g) {
            continue;
        }
        put16(&mut sb, 0x5A, g as u16);
        let c = crc32c_le(!0, &sb[..0x3FC]);
        put32(&mut sb, 0x3FC, c);
        // The primary sits 1024 bytes in; backups start their block.
        let mut block = vec![0u8; BSU];
        let at = if g == 0 { 1024 } else { 0 };
        block[at..at + 1024].copy_from_slice(&sb);
        out.put(g * BLOCKS_PER_GROUP, &block)?;
        out.put(g * BLOCKS_PER_GROUP + 1, &gdt)?;
    }
    out.finish()?;
    tracing::debug!(
        walk = t_walk,
        data = t_data - t_walk,
        inode_tables = t_itable - t_data,
        rest = t0.elapsed().as_secs_f64() - t_itable,
        "ext4w phases (seconds)"
    );
    Ok(geo.blocks)
}
