//! Whether a JPEG or PNG file is whole. Decoders fill the missing part of a truncated JPEG with
//! grey and return no error, so a cut-off download would train as half an image; Pillow refuses
//! such files, and so do we. The check walks the file's own structure (no decoding): a JPEG
//! must reach its end-of-image marker after the scans, a PNG its `IEND` chunk with every chunk's
//! CRC intact. Other formats are left to their decoders.

/// `Err(why)` when `bytes` is a JPEG or PNG that is cut short or (PNG) corrupt.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        jpeg(bytes)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png(bytes)
    } else {
        Ok(())
    }
}

const TRUNCATED: &str = "the file is truncated";

/// Marker segments from SOI on: each `FF xx` with a 2-byte length, except the standalone
/// markers; after a start-of-scan the entropy-coded data runs to the next marker that is not a
/// stuffed `FF 00` or a restart marker. Whole when the end-of-image marker is reached.
fn jpeg(b: &[u8]) -> Result<(), String> {
    let mut i = 2;
    loop {
        while i < b.len() && b[i] != 0xFF {
            i += 1; // bytes between segments: tolerated, as decoders do
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1; // fill bytes
        }
        let Some(&marker) = b.get(i) else { return Err(TRUNCATED.into()) };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {
                let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
                    return Err(TRUNCATED.into());
                };
                i += len;
                if i > b.len() {
                    return Err(TRUNCATED.into());
                }
                if marker == 0xDA {
                    loop {
                        while i < b.len() && b[i] != 0xFF {
                            i += 1;
                        }
                        match b.get(i + 1) {
                            None => return Err(TRUNCATED.into()),
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

/// Chunks after the 8-byte signature: length, type, data, CRC-32 of type and data.
fn png(b: &[u8]) -> Result<(), String> {
    let mut i = 8;
    loop {
        let Some(head) = b.get(i..i + 8) else { return Err(TRUNCATED.into()) };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let Some(body) = b.get(i + 4..i + 8 + len) else { return Err(TRUNCATED.into()) };
        let Some(crc) = b.get(i + 8 + len..i + 12 + len) else { return Err(TRUNCATED.into()) };
        if crc32fast::hash(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(format!("the file is corrupt (CRC mismatch in its {} chunk)", String::from_utf8_lossy(kind)));
        }
        if kind == b"IEND" {
            return Ok(());
        }
        i += 12 + len;
    }
}
