//! A mapping file that follows its edits, as the official endpoint's does: a change is
//! noticed by the file's device, inode, size, mtime and ctime, and a change that does not
//! parse leaves the mapping in force untouched (an admin's half-saved edit must not lock
//! every user out).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{IdentityMapper, MappingError};

/// A mapping file, re-read when it changes.
#[derive(Debug)]
pub struct MappingFile {
    path: PathBuf,
    text: String,
    mapper: IdentityMapper,
    /// What the file looked like when last examined: the stamp of the text in force or of
    /// a refused change, or why it could not be examined. A refused change is reported
    /// once, not on every call, because this is compared before anything is re-read.
    seen: Result<Stamp, ErrorKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl MappingFile {
    /// Reads and validates the file; an error names the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<MappingFile, MappingError> {
        let meta = fs::metadata(path).map_err(|source| read_error(path, source))?;
        let (text, mapper) = read(path)?;
        Ok(MappingFile {
            path: path.to_owned(),
            text,
            mapper,
            seen: Ok(Stamp::of(&meta)),
        })
    }

    /// The mapping in force, after re-reading the file if it changed since last looked
    /// at. An invalid new file keeps the old mapping and logs one warning saying why.
    pub fn current(&mut self) -> &IdentityMapper {
        self.refresh();
        &self.mapper
    }

    /// The validated text of the mapping in force (the MEP hands it to the helper process
    /// that maps, which parses it again with [`IdentityMapper::from_json`]).
    pub fn current_text(&mut self) -> &str {
        self.refresh();
        &self.text
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn refresh(&mut self) {
        // Stat before reading: if the file changes in between, the next call sees a new
        // stamp and reads it again, so a change is never missed.
        let meta = fs::metadata(&self.path);
        let seen = meta.as_ref().map(Stamp::of).map_err(std::io::Error::kind);
        if seen == self.seen {
            return;
        }
        self.seen = seen;
        let path = self.path.display().to_string();
        match meta
            .map_err(|source| read_error(&self.path, source))
            .and_then(|_| read(&self.path))
        {
            Ok((text, mapper)) => {
                if text != self.text {
                    tracing::info!(
                        path,
                        "identity mapping file changed; the new mapping is in force"
                    );
                }
                self.text = text;
                self.mapper = mapper;
            }
            Err(error) => tracing::warn!(
                path,
                %error,
                "identity mapping file changed but is refused; the previous mapping stays in \
                 force until the file is fixed"
            ),
        }
    }
}

fn read(path: &Path) -> Result<(String, IdentityMapper), MappingError> {
    let text = fs::read_to_string(path).map_err(|source| read_error(path, source))?;
    let mapper = IdentityMapper::from_json(&text).map_err(|source| MappingError::InFile {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    Ok((text, mapper))
}

fn read_error(path: &Path, source: std::io::Error) -> MappingError {
    MappingError::Read {
        path: path.to_owned(),
        source,
    }
}
