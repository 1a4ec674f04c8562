//! The run directory `<checkpoints_dir>/<name>/`: a run name stays inside `checkpoints_dir`, a
//! new run never writes into the directory of an earlier one unless told to (`overwrite`), and
//! a resumed run's logs end where its checkpoint does, so no row is written twice.
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Component, Path};

use tch::TchError;

use super::checkpoint::file;
use crate::error::invalid;

/// A run name is a relative path of ordinary folder names: `..`, `.`, absolute paths and
/// empty names would put the run outside (or at the root of) `checkpoints_dir`.
pub fn check_name(name: &str) -> Result<(), TchError> {
    let path = Path::new(name);
    let plain = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(invalid(format!(
            "name must be a plain run name (a folder inside checkpoints_dir, without '..', '.' or a leading '/'), got '{name}'"
        )));
    }
    Ok(())
}

/// The logs of a run: its losses, and its in-training evaluations (written by the Python layer).
const LOGS: [&str; 2] = ["loss_log.jsonl", "eval_log.jsonl"];

/// What an earlier run left in `dir`: its checkpoints and its (non-empty) logs.
fn previous_outputs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| {
            if LOGS.contains(&n.as_str()) {
                fs::metadata(dir.join(n)).is_ok_and(|m| m.len() > 0)
            } else {
                n.ends_with(".safetensors") && !n.starts_with('.')
            }
        })
        .collect();
    found.sort();
    found
}

/// Readies `dir` for a run before its first iteration. A fresh run (`resumed_at` None) refuses
/// a directory that holds an earlier run's checkpoints or logs, unless `overwrite` (then they
/// are removed). A resumed run keeps the rows of its logs up to iteration `resumed_at`.
pub fn prepare(dir: &Path, resumed_at: Option<u64>, overwrite: bool) -> Result<(), TchError> {
    match resumed_at {
        Some(iteration) => LOGS.iter().try_for_each(|log| truncate_log(&dir.join(log), iteration)),
        None => {
            let found = previous_outputs(dir);
            if found.is_empty() {
                return Ok(());
            }
            if !overwrite {
                let latest = dir.join("latest.safetensors");
                let at = file::load_metadata(&latest)
                    .ok()
                    .and_then(|m| m.get("total_iters").cloned())
                    .map_or_else(String::new, |it| format!(" (latest.safetensors is at iteration {it})"));
                return Err(invalid(format!(
                    "{} already holds a run{at}: continue it with qs_attn.resume(\"{}\"), choose another name, \
                     or pass overwrite=True to replace it (found {})",
                    dir.display(),
                    latest.display(),
                    found.join(", ")
                )));
            }
            for name in found {
                let path = dir.join(&name);
                fs::remove_file(&path)
                    .map_err(|e| invalid(format!("overwrite: cannot remove {}: {e}", path.display())))?;
            }
            Ok(())
        }
    }
}

/// Keeps the rows of the log `path` whose iteration is at most `iteration` (the rows
/// written after the checkpoint a run resumes from would otherwise appear twice). Rewritten
/// atomically; a missing log is fine.
fn truncate_log(path: &Path, iteration: u64) -> Result<(), TchError> {
    let io = |e: std::io::Error| invalid(format!("{}: {e}", path.display()));
    let Ok(file) = File::open(path) else { return Ok(()) };
    let mut kept = Vec::new();
    let mut dropped = false;
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io)?;
        let iter =
            serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v.get("iter").and_then(|i| i.as_u64()));
        match iter {
            Some(i) if i > iteration => dropped = true,
            _ => kept.push(line),
        }
    }
    if !dropped {
        return Ok(());
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut out = File::create(&tmp).map_err(io)?;
    for line in kept {
        writeln!(out, "{line}").map_err(io)?;
    }
    out.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
