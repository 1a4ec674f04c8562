//! The checkpoint file: safetensors with string metadata, written atomically (a temporary file in
//! the same folder, flushed to disk, then renamed over the target), so an interrupted save
//! leaves the previous checkpoint intact; a checksum in the metadata is verified on load
//! (`integrity.rs`).
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, View};
use tch::{Device, Kind, TchError, Tensor};

use super::integrity;
use crate::error::invalid;

/// A tensor's bytes, copied to the host, in safetensors' terms.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    fn new(name: &str, t: &Tensor) -> Result<Self, TchError> {
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::BOOL,
            k => return Err(invalid(format!("cannot store tensor '{name}' of dtype {k:?} in a checkpoint"))),
        };
        let host = t.detach().to_device(Device::Cpu).contiguous();
        let numel = host.numel();
        let mut bytes = vec![0u8; numel * host.kind().elt_size_in_bytes()];
        host.f_copy_data_u8(&mut bytes, numel)?;
        Ok(HostTensor { dtype, shape: host.size().iter().map(|&d| d as usize).collect(), bytes })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> TchError {
    invalid(format!("{}: {e}", path.display()))
}

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn save(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<(), TchError> {
    let host: Vec<(String, HostTensor)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), HostTensor::new(n, t)?))).collect::<Result<_, TchError>>()?;
    let views: Vec<(&str, &HostTensor)> = host.iter().map(|(n, h)| (n.as_str(), h)).collect();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    let tmp: PathBuf = dir.join(integrity::temp_name(file_name, std::process::id()));
    let mut metadata = metadata;
    let entries =
        host.iter().map(|(n, h)| integrity::Entry { name: n, dtype: h.dtype, shape: &h.shape, bytes: &h.bytes });
    metadata.insert(integrity::CHECKSUM_KEY.to_string(), integrity::checksum(entries.collect(), &metadata));
    safetensors::tensor::serialize_to_file(views, &Some(metadata), &tmp).map_err(|e| io_error(&tmp, e))?;
    File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all(); // make the rename durable
    }
    integrity::remove_stale_temps(dir, file_name);
    Ok(())
}

/// Reads only a checkpoint's metadata: the safetensors header (8-byte little-endian length,
/// then JSON whose `__metadata__` holds the strings), without reading the tensors.
pub fn load_metadata(path: &Path) -> Result<HashMap<String, String>, TchError> {
    use std::io::Read;
    /// safetensors' own bound on the header size.
    const MAX_HEADER: u64 = 100_000_000;
    let not_valid = |e: &dyn std::fmt::Display| io_error(path, format!("not a valid checkpoint ({e})"));
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| not_valid(&e))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(not_valid(&format!("header of {len} bytes")));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| not_valid(&e))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| not_valid(&e))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default())
}

/// Reads a checkpoint: named tensors (on the CPU) and the metadata.
pub fn load(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>), TchError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| io_error(path, format!("not a valid checkpoint ({e})")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| io_error(path, e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let entries = file.tensors().into_iter().map(|(name, v)| (name, v.dtype(), View::shape(&v).to_vec(), v.data()));
    let entries: Vec<_> = entries.collect();
    let views =
        entries.iter().map(|(name, dtype, shape, bytes)| integrity::Entry { name, dtype: *dtype, shape, bytes });
    integrity::verify(path, views.collect(), &metadata)?;
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| Ok((name, Tensor::try_from(view)?)))
        .collect::<Result<HashMap<_, _>, TchError>>()?;
    Ok((tensors, metadata))
}
