//! The view of a reload: `/_epi/reload` and `epi reload`.

use std::path::Path;

use serde::Serialize;

use super::data::DataStatus;
use super::plugins::Upgrade;

/// What a reload did: each file's outcome, then the data re-read (from the registry's
/// reload results and [`epi::DataReload`]).
#[derive(Serialize)]
pub struct Reload<'a> {
    /// The files re-checked.
    pub files: Vec<FileReload<'a>>,
    /// Notifications delivered to plugins by the data re-read.
    pub data_notifications: usize,
    /// The data sources whose last read failed.
    pub data_failures: Vec<DataStatus<'a>>,
}

impl<'a> Reload<'a> {
    /// The view of `files` re-checked, then `data` re-read.
    pub fn new(files: Vec<FileReload<'a>>, data: &'a epi::DataReload) -> Self {
        Reload {
            files,
            data_notifications: data.notified,
            data_failures: super::data_status(&data.failed),
        }
    }
}

/// One file of a reload: `{"file", "result"}`, or `{"file", "error"}` when it failed (`file`
/// is `null` when no file was found for what was asked).
#[derive(Serialize)]
pub struct FileReload<'a> {
    /// The file.
    pub file: Option<&'a Path>,
    /// What the upgrade did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Upgrade<'a>>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<'a> FileReload<'a> {
    /// The outcome of upgrading `file`.
    pub fn new(file: &'a Path, outcome: &'a Result<epi::Upgrade, epi::LoadError>) -> Self {
        match outcome {
            Ok(upgrade) => FileReload {
                file: Some(file),
                result: Some(upgrade.into()),
                error: None,
            },
            Err(err) => FileReload {
                file: Some(file),
                result: None,
                error: Some(err.to_string()),
            },
        }
    }

    /// A failure that names no file.
    pub fn error(message: String) -> Self {
        FileReload {
            file: None,
            result: None,
            error: Some(message),
        }
    }
}
