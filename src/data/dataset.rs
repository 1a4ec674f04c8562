//! The unaligned (unpaired) dataset (docs/algorithm.md §2): two folders of images,
//! `<root>/<phase>A` and `<root>/<phase>B`, gathered recursively, filtered by extension and sorted
//! by path.
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use tch::TchError;

use crate::error::invalid;

/// Accepted file extensions, compared case-insensitively (the reference accepts all-lower or
/// all-upper `.jpg .jpeg .png .ppm .bmp .tif .tiff`; we also take mixed case and `.webp`).
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "ppm", "bmp", "tif", "tiff", "webp"];

crate::choice_enum! {
    /// Which folder is the source domain: `AtoB` translates `<phase>A` into `<phase>B`, `BtoA`
    /// the reverse (Cityscapes labels → photos).
    pub enum Direction("direction") {
        AtoB = "AtoB",
        BtoA = "BtoA",
    }
}

/// The two file lists, already oriented: `a` is always the source domain (`real_A`), `b` the
/// target domain (`real_B`), whatever the direction.
#[derive(Clone, Debug)]
pub struct UnalignedDataset {
    pub a: Vec<PathBuf>,
    pub b: Vec<PathBuf>,
}

impl UnalignedDataset {
    /// Reads `<root>/<phase>A` and `<root>/<phase>B`; for phase `test`, when `testA` is missing
    /// but `valA` exists, `valA`/`valB` are used (as the reference does). `BtoA` swaps the roles.
    /// A missing or empty folder is an error naming the folder.
    pub fn open(root: &Path, phase: &str, direction: Direction) -> Result<Self, TchError> {
        if phase.is_empty() {
            return Err(invalid("dataset phase must not be empty (e.g. \"train\" or \"test\")"));
        }
        let mut dir_a = root.join(format!("{phase}A"));
        let mut dir_b = root.join(format!("{phase}B"));
        // test-time fallback to the validation split
        if phase == "test" && !dir_a.exists() && root.join("valA").exists() {
            dir_a = root.join("valA");
            dir_b = root.join("valB");
        }
        let a = image_files(&dir_a)?;
        let b = image_files(&dir_b)?;
        Ok(match direction {
            Direction::AtoB => UnalignedDataset { a, b },
            Direction::BtoA => UnalignedDataset { a: b, b: a },
        })
    }

    /// Items per epoch: `max(|A|, |B|)`.
    pub fn len(&self) -> usize {
        self.a.len().max(self.b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a file name ends in one of `IMAGE_EXTENSIONS` (any case).
pub fn is_image_file(path: &Path) -> bool {
    let Some(name) = path.file_name() else { return false };
    let name = name.to_string_lossy().to_ascii_lowercase();
    IMAGE_EXTENSIONS.iter().any(|ext| name.ends_with(&format!(".{ext}")))
}

/// All image files under `dir`, recursively (symbolic links followed, loops cut), sorted by
/// the path string as Python's `sorted` does (byte order of the UTF-8 path, not per component).
/// Errors when `dir` is missing, not a folder, unreadable, or holds no image.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, TchError> {
    if !dir.exists() {
        return Err(invalid(format!("dataset folder {} does not exist", dir.display())));
    }
    if !dir.is_dir() {
        return Err(invalid(format!("dataset folder {} is not a folder", dir.display())));
    }
    let mut files = Vec::new();
    walk(dir, &mut HashSet::new(), &mut files)?;
    if files.is_empty() {
        return Err(invalid(format!(
            "dataset folder {} holds no images (searched recursively for .{})",
            dir.display(),
            IMAGE_EXTENSIONS.join(" .")
        )));
    }
    files.sort_by(|x, y| x.as_os_str().as_encoded_bytes().cmp(y.as_os_str().as_encoded_bytes()));
    Ok(files)
}

fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) -> Result<(), TchError> {
    let cannot = |e: std::io::Error| invalid(format!("cannot read dataset folder {}: {e}", dir.display()));
    // a folder reached twice through symbolic links is read once
    if !seen.insert(fs::canonicalize(dir).map_err(cannot)?) {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(cannot)? {
        let path = entry.map_err(cannot)?.path();
        // follows symbolic links; a dangling link is skipped
        let Ok(meta) = fs::metadata(&path) else { continue };
        if meta.is_dir() {
            walk(&path, seen, out)?;
        } else if meta.is_file() && is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}
