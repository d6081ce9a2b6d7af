use super::*;

/// Bytes that compress somewhat, like a tar of binaries and text.
fn sample(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if i % 3 == 0 {
                (x >> 24) as u8
            } else {
                b"usr/lib/x86_64-linux-gnu/"[i % 25]
            }
        })
        .collect()
}

/// Write `data` through a [`MemberWriter`] in pieces of `piece` bytes.
fn write(data: &[u8], piece: usize) -> Vec<u8> {
    let mut w = MemberWriter::new(Vec::new(), 6);
    for c in data.chunks(piece.max(1)) {
        w.write_all(c).unwrap();
    }
    w.finish().unwrap()
}

fn read_all(blob: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader(io::Cursor::new(blob))?.read_to_end(&mut out)?;
    Ok(out)
}

/// The offsets of the members, walking the `TP` lengths.
fn members_of(blob: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut starts = Vec::new();
    while at < blob.len() {
        starts.push(at);
        let head: [u8; HEADER_LEN] = blob[at..at + HEADER_LEN].try_into().unwrap();
        at += HEADER_LEN + our_length(&head).expect("every member is ours") + 8;
    }
    assert_eq!(at, blob.len());
    starts
}

#[test]
fn round_trips_at_every_size_around_a_member() {
    for len in [
        0,
        1,
        MEMBER - 1,
        MEMBER,
        MEMBER + 1,
        3 * MEMBER + MEMBER / 2,
    ] {
        let data = sample(len);
        let blob = write(&data, 100_000);
        assert_eq!(read_all(blob.clone()).unwrap(), data, "len {len}");
        // Any gzip reader reads it as one stream.
        let mut plain = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, data, "len {len} through MultiGzDecoder");
        assert_eq!(members_of(&blob).len(), len.div_ceil(MEMBER).max(1));
    }
}

#[test]
fn gunzip_reads_it_as_one_stream() {
    let data = sample(2 * MEMBER + 77);
    let blob = write(&data, 4096);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.gz");
    fs_err::write(&path, &blob).unwrap();
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(&path)
        .output()
        .expect("gzip runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, data);
}

#[test]
fn the_blob_depends_on_the_data_only_not_on_how_it_was_written() {
    let data = sample(2 * MEMBER + 5000);
    let a = write(&data, 1);
    assert_eq!(a, write(&data, 65_536));
    assert_eq!(a, write(&data, data.len()));
}

#[test]
fn another_tools_gzip_is_read_by_one_thread() {
    let data = sample(MEMBER + 10);
    let mut gz = flate2::GzBuilder::new()
        .filename("x")
        .write(Vec::new(), Compression::new(6));
    gz.write_all(&data).unwrap();
    let mut blob = gz.finish().unwrap();
    // Two members, as `cat a.gz b.gz` makes.
    blob.extend_from_slice(&blob.clone());
    let mut twice = data.clone();
    twice.extend_from_slice(&data);
    assert_eq!(read_all(blob).unwrap(), twice);
}

#[test]
fn damage_anywhere_is_an_error_not_wrong_bytes() {
    let data = sample(2 * MEMBER + 300);
    let blob = write(&data, 1 << 16);
    let second = members_of(&blob)[1];
    let kind = |b: Vec<u8>| read_all(b).unwrap_err().kind();

    // A flipped byte in the second member's deflate data.
    let mut b = blob.clone();
    b[second + HEADER_LEN + 1000] ^= 0x55;
    assert_eq!(kind(b), io::ErrorKind::InvalidData);

    // A wrong CRC in the first member's trailer.
    let mut b = blob.clone();
    b[second - 8] ^= 1;
    assert_eq!(kind(b), io::ErrorKind::InvalidData);

    // A declared length that cuts the deflate data short.
    let mut b = blob.clone();
    let l = u32::from_le_bytes(b[second + 16..second + 20].try_into().unwrap());
    b[second + 16..second + 20].copy_from_slice(&(l - 10).to_le_bytes());
    assert_eq!(kind(b), io::ErrorKind::InvalidData);

    // Truncated inside the last member, and inside a header.
    assert_eq!(
        kind(blob[..blob.len() - 3].to_vec()),
        io::ErrorKind::InvalidData
    );
    assert_eq!(
        kind(blob[..second + 5].to_vec()),
        io::ErrorKind::InvalidData
    );

    // A member without the length after one with it.
    let mut b = blob.clone();
    b[second + 12] = b'X';
    assert_eq!(kind(b), io::ErrorKind::InvalidData);
}

#[test]
fn a_hostile_length_is_refused_before_anything_is_allocated() {
    let mut blob = write(b"tiny", 4);
    blob[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = read_all(blob).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("more than"), "{err}");

    // A trailer that declares a huge inflated size.
    let mut blob = write(b"tiny", 4);
    let n = blob.len();
    blob[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = read_all(blob).unwrap_err();
    assert!(err.to_string().contains("more than"), "{err}");
}

#[test]
fn dropping_the_reader_early_stops_its_threads() {
    let data = sample(20 * MEMBER);
    let blob = write(&data, 1 << 20);
    let mut r = reader(io::Cursor::new(blob)).unwrap();
    let mut first = vec![0u8; 1000];
    r.read_exact(&mut first).unwrap();
    assert_eq!(first, data[..1000]);
    // Would hang if the feeder waited for a reader that is gone.
    drop(r);
}
