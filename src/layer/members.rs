//! Gzip layers in independent members, so that both compressing and
//! inflating a layer use every core.
//!
//! tplbuild writes a gzip layer as a multi-member stream (RFC 1952 §2.2):
//! the tar is cut every [`MEMBER`] bytes and each piece becomes a complete
//! gzip member of its own, at the fixed level. Every gzip reader (Go's,
//! which Docker, containerd and Podman use; zlib's `gunzip`; Python's)
//! reads such a stream as one. Each member's header carries an extra
//! subfield `TP` (RFC 1952 §2.3.1.1) holding the length of the member's
//! deflate data, so a reader finds the next member without inflating this
//! one and can hand members to several threads.
//!
//! Cutting at fixed offsets of the tar, never where a `write` happened to
//! end, keeps the blob a function of the tar (DESIGN.md invariant 2)
//! whatever the number of threads.
//!
//! A stream whose first member has no `TP` field (another tool's layer) is
//! read by one thread as before. Members are hostile input like the rest
//! of a layer: a declared length, an inflated size or a CRC that does not
//! hold is an error, and no member may declare more than [`MAX_MEMBER`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// Uncompressed bytes per member: small enough to spread a layer over
/// the cores, large enough that the lost window costs <0.5% of the size.
pub(crate) const MEMBER: usize = 1 << 20;

/// The most a member may declare, compressed or inflated: a member of
/// [`MEMBER`] bytes never needs more, and a hostile stream cannot make a
/// reader hold more than this times the members in flight (four per
/// thread).
const MAX_MEMBER: usize = 4 << 20;

const SUBFIELD: [u8; 2] = *b"TP";
/// Header: magic, CM=8, FLG=FEXTRA, MTIME=0, XFL=0, OS=255, then XLEN=8 and
/// the subfield (id, LEN=4, the deflate length).
const HEADER_LEN: usize = 10 + 2 + 8;

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One gzip member holding `data`.
fn member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut deflate = Vec::with_capacity(data.len() / 2 + 1024);
    let mut c = Compress::new(Compression::new(level), false);
    loop {
        let consumed = c.total_in() as usize;
        if deflate.capacity() - deflate.len() < 64 * 1024 {
            deflate.reserve(deflate.capacity());
        }
        match c.compress_vec(&data[consumed..], &mut deflate, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => break,
            Ok(_) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    let len = u32::try_from(deflate.len()).map_err(|_| invalid("a gzip member over 4 GiB"))?;
    let mut crc = Crc::new();
    crc.update(data);
    let mut out = Vec::with_capacity(HEADER_LEN + deflate.len() + 8);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 255]);
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(&SUBFIELD);
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&deflate);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

/// A pool of threads running one function over jobs; each job's result
/// comes back on its own channel, so the caller keeps the order.
struct Pool<I: Send + 'static, O: Send + 'static> {
    jobs: Option<SyncSender<(I, SyncSender<O>)>>,
    workers: Vec<JoinHandle<()>>,
}

impl<I: Send + 'static, O: Send + 'static> Pool<I, O> {
    fn new(n: usize, f: fn(I) -> O) -> Self {
        let (tx, rx) = sync_channel::<(I, SyncSender<O>)>(n);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let workers = (0..n)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((input, reply)) = job else { return };
                    // The receiver may be gone (the reader was dropped).
                    let _ = reply.send(f(input));
                })
            })
            .collect();
        Pool {
            jobs: Some(tx),
            workers,
        }
    }

    /// Queue a job; `None` if the pool is shutting down.
    fn submit(&self, input: I) -> Option<Receiver<O>> {
        let (reply, result) = sync_channel(1);
        self.jobs.as_ref()?.send((input, reply)).ok()?;
        Some(result)
    }
}

impl<I: Send + 'static, O: Send + 'static> Drop for Pool<I, O> {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Compresses (data, level) into one member.
type CompressPool = Pool<(Vec<u8>, u32), io::Result<Vec<u8>>>;

/// The gzip writer of [`crate::layer`]'s blob sink: cuts, compresses on a
/// pool of threads, writes the members in order.
pub(crate) struct MemberWriter<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    /// Started at the first full member: a small layer needs no threads.
    pool: Option<CompressPool>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    wrote_any: bool,
}

impl<W: Write> MemberWriter<W> {
    pub fn new(out: W, level: u32) -> Self {
        MemberWriter {
            out,
            level,
            buf: Vec::with_capacity(MEMBER),
            pool: None,
            pending: VecDeque::new(),
            wrote_any: false,
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(MEMBER));
        let n = threads();
        let pool = self
            .pool
            .get_or_insert_with(|| Pool::new(n, |(d, level)| member(&d, level)));
        let result = pool
            .submit((data, self.level))
            .ok_or_else(|| io::Error::other("the compressing threads stopped"))?;
        self.pending.push_back(result);
        // Enough in flight to keep every thread busy, no more.
        while self.pending.len() > 2 * n {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(r) = self.pending.pop_front() {
            let bytes = r
                .recv()
                .map_err(|_| io::Error::other("a compressing thread died"))??;
            self.out.write_all(&bytes)?;
            self.wrote_any = true;
        }
        Ok(())
    }

    /// Write what is left and return the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() || (self.pending.is_empty() && !self.wrote_any) {
            if self.pool.is_none() {
                // Small: no thread for one member.
                let bytes = member(&self.buf, self.level)?;
                self.buf.clear();
                self.out.write_all(&bytes)?;
                self.wrote_any = true;
            } else {
                self.submit()?;
            }
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.pool = None;
        self.out.flush()?;
        // `self` implements no Drop, so the sink can be moved out.
        Ok(self.out)
    }
}

impl<W: Write> Write for MemberWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (MEMBER - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == MEMBER {
                self.submit()?;
            }
        }
        Ok(n)
    }

    /// Members are whole only at [`MemberWriter::finish`]; a flush cannot
    /// cut one early (that would move the member boundaries).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The deflate length a header of ours declares, from its first 12 bytes
/// (fixed part and XLEN) and the extra field; `None` if it is not ours.
fn our_length(head: &[u8; HEADER_LEN]) -> Option<usize> {
    let fixed_ok = head[..3] == [0x1f, 0x8b, 8] && head[3] == 0x04;
    let extra_ok = u16::from_le_bytes([head[10], head[11]]) == 8
        && head[12..14] == SUBFIELD
        && u16::from_le_bytes([head[14], head[15]]) == 4;
    (fixed_ok && extra_ok)
        .then(|| u32::from_le_bytes([head[16], head[17], head[18], head[19]]) as usize)
}

/// Inflate one member's deflate data and trailer, checking its length
/// and CRC.
fn inflate(raw: Vec<u8>) -> io::Result<Vec<u8>> {
    let (deflate, trailer) = raw.split_at(raw.len() - 8);
    let crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes")) as usize;
    if size > MAX_MEMBER {
        return Err(invalid(format!(
            "a gzip member declares {size} bytes, more than the {MAX_MEMBER} a layer member may hold"
        )));
    }
    // One byte of room past the declared size shows a member that holds more.
    let mut out = Vec::with_capacity(size + 1);
    let mut d = Decompress::new(false);
    let status = d
        .decompress_vec(deflate, &mut out, FlushDecompress::Finish)
        .map_err(|e| invalid(format!("corrupt deflate data in a gzip member: {e}")))?;
    if status != Status::StreamEnd || d.total_in() as usize != deflate.len() || out.len() != size {
        return Err(invalid(
            "a gzip member's deflate data does not match its declared sizes",
        ));
    }
    let mut c = Crc::new();
    c.update(&out);
    if c.sum() != crc {
        return Err(invalid("a gzip member fails its CRC check"));
    }
    Ok(out)
}

/// Read `r` completely into `buf`; `Ok(false)` at a clean end before the
/// first byte.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(invalid("a gzip layer ends inside a member")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

type Inflated = Receiver<io::Result<Vec<u8>>>;

/// Read a gzip stream: members of ours inflated on a pool of threads, in
/// order; anything else by one [`flate2::read::MultiGzDecoder`].
pub(crate) fn reader(mut r: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let Some(first) = (got == HEADER_LEN).then(|| our_length(&head)).flatten() else {
        let whole = io::Cursor::new(head[..got].to_vec()).chain(r);
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(whole)));
    };
    let n = threads();
    let (tx, rx) = sync_channel::<Inflated>(2 * n);
    let feeder = std::thread::spawn(move || feed(r, first, n, tx));
    Ok(Box::new(MemberReader {
        inflated: Some(rx),
        chunk: Vec::new(),
        pos: 0,
        feeder: Some(feeder),
    }))
}

/// The feeding thread: cut the stream into members (the first one's
/// header already read), queue each on the pool, pass the results on in
/// order. Stops at the end, at an error (passed on), or when the reader
/// is dropped.
fn feed(mut r: impl Read, first: usize, n: usize, tx: SyncSender<Inflated>) {
    let pool: Pool<Vec<u8>, io::Result<Vec<u8>>> = Pool::new(n, inflate);
    let fail = |tx: &SyncSender<Inflated>, e: io::Error| {
        let (reply, result) = sync_channel(1);
        let _ = reply.send(Err(e));
        let _ = tx.send(result);
    };
    let mut length = first;
    loop {
        if length > MAX_MEMBER {
            return fail(
                &tx,
                invalid(format!(
                    "a gzip member declares {length} bytes of deflate data, more than {MAX_MEMBER}"
                )),
            );
        }
        let mut raw = vec![0u8; length + 8];
        match fill(&mut r, &mut raw) {
            Ok(true) => {}
            Ok(false) => return fail(&tx, invalid("a gzip layer ends inside a member")),
            Err(e) => return fail(&tx, e),
        }
        let Some(result) = pool.submit(raw) else {
            return;
        };
        if tx.send(result).is_err() {
            return;
        }
        let mut head = [0u8; HEADER_LEN];
        match fill(&mut r, &mut head) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => return fail(&tx, e),
        }
        match our_length(&head) {
            Some(l) => length = l,
            None => {
                return fail(
                    &tx,
                    invalid("a gzip member without its length follows one with it"),
                )
            }
        }
    }
}

/// The consuming end of [`feed`].
struct MemberReader {
    inflated: Option<Receiver<Inflated>>,
    chunk: Vec<u8>,
    pos: usize,
    feeder: Option<JoinHandle<()>>,
}

impl Read for MemberReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            let Some(rx) = &self.inflated else {
                return Ok(0);
            };
            let Ok(next) = rx.recv() else {
                // The feeder is done: the end of the stream.
                return Ok(0);
            };
            match next.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.inflated = None;
                    return Err(e);
                }
                Err(_) => return Err(io::Error::other("an inflating thread died")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for MemberReader {
    /// Stop the feeder and wait for it, so the stream it read from is free
    /// again (the caller drains it to check the blob's digest).
    fn drop(&mut self) {
        self.inflated = None;
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
    }
}

#[cfg(test)]
#[path = "members_tests.rs"]
mod tests;
