//! What can go wrong, worded for the administrator who owns the mapping file.

use std::fmt;
use std::path::PathBuf;

use uuid::Uuid;

/// Why a mapping file was refused, or why a set of identities could not be mapped.
///
/// Documents are named by their index in the file's top-level list, counting from 0, as
/// the official endpoint's messages do.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error("cannot read the identity mapping file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but its content is refused.
    #[error("identity mapping file {}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<MappingError>,
    },
    /// The text is not JSON.
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The JSON is not a list of documents.
    #[error(
        "the top level must be a JSON list of mapping documents, [{{\"DATA_TYPE\": ...}}, ...], \
         but it is {0}"
    )]
    NotAList(&'static str),
    /// One document is malformed.
    #[error("document at index {index}: {reason}")]
    Document {
        /// Its index in the list.
        index: usize,
        /// What is wrong, and what would be right.
        reason: String,
    },
    /// The identities could not be written as JSON (cannot happen with well-formed
    /// identities; kept so that nothing here panics).
    #[error("cannot encode the identities as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The first mapping that matched produced a name that is unsafe as a local username.
    #[error(
        "document at index {index} mapped the identity to {name:?}, which is refused as a \
         local username: {reason}"
    )]
    UnsafeUsername {
        /// The document that produced it.
        index: usize,
        /// The name.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No document mapped the identities, and at least one failed while trying.
    #[error("no identity mapping document mapped the identity, and {}", Failures(.0))]
    Failed(Vec<DocumentFailure>),
}

/// One document that failed while mapping; the others were still tried.
#[derive(Debug)]
pub struct DocumentFailure {
    /// The document's index in the file.
    pub index: usize,
    /// What went wrong.
    pub error: DocumentError,
}

struct Failures<'a>(&'a [DocumentFailure]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, failure) in self.0.iter().enumerate() {
            let sep = if n == 0 { "" } else { "; " };
            write!(
                f,
                "{sep}document at index {} failed: {}",
                failure.index, failure.error
            )?;
        }
        Ok(())
    }
}

/// Why one document failed to map a set of identities.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// An expression needed a value the identity does not have. Like the official
    /// endpoint, this fails the whole document, not only that identity.
    #[error("mapping {rule} needs {what} of identity {identity}, which it does not have")]
    MissingValue {
        /// The mapping's index in the document's `mappings`.
        rule: usize,
        /// `field "email"` or `match group {1}`.
        what: String,
        /// The identity's id.
        identity: Uuid,
    },
    /// The external program could not be started.
    #[error("cannot start {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// Talking to the external program failed.
    #[error("error exchanging data with {command}: {source}")]
    Io {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The external program ran too long and was killed.
    #[error("{command} did not finish within {seconds} s and was killed")]
    TimedOut {
        /// The command line.
        command: String,
        /// The limit.
        seconds: u64,
    },
    /// The external program printed more than the limit and was killed.
    #[error("{command} printed more than {limit} bytes and was killed")]
    TooMuchOutput {
        /// The command line.
        command: String,
        /// The limit.
        limit: usize,
    },
    /// The external program exited unsuccessfully.
    #[error("{command} failed ({status}); its stderr: {stderr:?}")]
    Exit {
        /// The command line.
        command: String,
        /// The exit status, e.g. `exit status: 3`.
        status: String,
        /// The start of its standard error.
        stderr: String,
    },
    /// The external program printed something other than an output document.
    #[error(
        "{command} printed output that is not an identity_mapping_output#1.0.0 document \
         ({reason}); its stdout began {stdout:?}"
    )]
    BadOutput {
        /// The command line.
        command: String,
        /// What is wrong with it.
        reason: String,
        /// The start of its standard output.
        stdout: String,
    },
    /// The external program named an identity it was not given.
    #[error(
        "{command} returned a result for {id}, which is not one of the identities it was given"
    )]
    UnknownId {
        /// The command line.
        command: String,
        /// The id it returned.
        id: Uuid,
    },
}
