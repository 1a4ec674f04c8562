//! What keeps checkpoint files whole beyond the atomic write of `file::save`: a checksum
//! of the contents stored in the metadata and verified on load (a file damaged after it was
//! written is refused instead of silently resuming from wrong weights), and the removal of the
//! temporary files that a save interrupted by a kill left behind.
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::Dtype;
use tch::TchError;

use crate::error::invalid;

/// The metadata key of the checksum. Checkpoints written before it existed have none and load
/// unverified.
pub const CHECKSUM_KEY: &str = "checksum";

/// One stored tensor as the checksum reads it.
pub struct Entry<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

/// `crc32:<8 hex digits>` over every tensor (name, dtype, shape, bytes; by name) and every
/// metadata entry but the checksum itself (by key): independent of the order in the file.
pub fn checksum(mut entries: Vec<Entry<'_>>, metadata: &HashMap<String, String>) -> String {
    entries.sort_by(|a, b| a.name.cmp(b.name));
    let mut h = crc32fast::Hasher::new();
    for e in &entries {
        h.update(e.name.as_bytes());
        h.update(format!("\0{:?}{:?}\0", e.dtype, e.shape).as_bytes());
        h.update(e.bytes);
    }
    let mut keys: Vec<&String> = metadata.keys().filter(|k| k.as_str() != CHECKSUM_KEY).collect();
    keys.sort();
    for k in keys {
        h.update(format!("{k}\0{}\0", metadata[k]).as_bytes());
    }
    format!("crc32:{:08x}", h.finalize())
}

/// Checks the stored checksum, when there is one, against the contents read from `path`.
pub fn verify(path: &Path, entries: Vec<Entry<'_>>, metadata: &HashMap<String, String>) -> Result<(), TchError> {
    let Some(stored) = metadata.get(CHECKSUM_KEY) else { return Ok(()) };
    let actual = checksum(entries, metadata);
    if *stored != actual {
        return Err(invalid(format!(
            "{} is corrupt: its contents do not match the checksum written with it ({stored}, now {actual}); \
             the file was damaged after it was saved: use another checkpoint (e.g. an epoch_*.safetensors)",
            path.display()
        )));
    }
    Ok(())
}

/// The temporary file a save of `file_name` by process `pid` writes before renaming it.
pub fn temp_name(file_name: &str, pid: u32) -> String {
    format!("{}{pid}", temp_prefix(file_name))
}

fn temp_prefix(file_name: &str) -> String {
    format!(".{file_name}.tmp-")
}

/// Removes the temporary files of saves of `file_name` in `dir` that no running process is
/// writing (left by a process killed during a save). Another process's file is kept while that
/// process is alive (where `/proc` tells). Best effort: a file that cannot be removed is left.
pub fn remove_stale_temps(dir: &Path, file_name: &str) {
    let prefix = temp_prefix(file_name);
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(prefix.as_str())).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let _ = std::fs::remove_file(entry.path());
    }
}

fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    proc.is_dir() && proc.join(pid.to_string()).exists()
}
