//! Where a file run's rows come from: the data files by absolute path with their SHA-256, so a
//! run folder keeps a reference to its data rather than a copy, and notices when a file has
//! changed under it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Length and SHA-256 (the `sha2` crate) of a file, to tell a whole file from a truncated or
/// altered one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Bytes.
    pub len: u64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
}

impl FileDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(bytes);
        Self {
            len: bytes.len() as u64,
            sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// One data file: its absolute path and digest when the run was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// The file, absolute.
    pub path: PathBuf,
    /// Its digest.
    pub digest: FileDigest,
}

impl SourceFile {
    /// The file at `path` as it is now.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: std::fs::canonicalize(path)?,
            digest: digest_of(path)?,
        })
    }

    /// Whether the file is still the one recorded; else why not.
    pub fn check(&self) -> Result<(), String> {
        let digest = digest_of(&self.path).map_err(|e| {
            format!(
                "{}: {e} (the run's data; its rows are not copied into the run folder)",
                self.path.display()
            )
        })?;
        if digest != self.digest {
            return Err(format!(
                "{} has changed since the run was made (its SHA-256 differs); the run's rows \
                 cannot be rebuilt from it",
                self.path.display()
            ));
        }
        Ok(())
    }
}

/// The digest of a file's bytes, or of a folder's `.png` files: each name's and content's
/// digests in name order, hashed.
fn digest_of(path: &Path) -> std::io::Result<FileDigest> {
    if !path.is_dir() {
        return Ok(FileDigest::of(&std::fs::read(path)?));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("png"))
        })
        .collect();
    files.sort();
    let mut listing = String::new();
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        let d = FileDigest::of(&std::fs::read(f)?);
        listing.push_str(&format!(
            "{} {} {}\n",
            name.unwrap_or_default(),
            d.len,
            d.sha256
        ));
    }
    Ok(FileDigest::of(listing.as_bytes()))
}

/// The files of a run trained on file data: the training file (split by the run's seed unless
/// there is a test file) and the separate test file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// The data file.
    pub train: SourceFile,
    /// The separate test file, when the config names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<SourceFile>,
}
