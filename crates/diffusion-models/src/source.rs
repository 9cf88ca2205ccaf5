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
        let bytes = std::fs::read(path)?;
        Ok(Self {
            path: std::fs::canonicalize(path)?,
            digest: FileDigest::of(&bytes),
        })
    }

    /// The file's bytes, if it is still the one recorded; else why not.
    pub fn read_checked(&self) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(&self.path).map_err(|e| {
            format!(
                "{}: {e} (the run's data file; its rows are not copied into the run folder)",
                self.path.display()
            )
        })?;
        if FileDigest::of(&bytes) != self.digest {
            return Err(format!(
                "{} has changed since the run was made (its SHA-256 differs); the run's rows \
                 cannot be rebuilt from it",
                self.path.display()
            ));
        }
        Ok(bytes)
    }
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
