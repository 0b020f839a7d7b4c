//! The local catalog log: one JSON line per applied command, fsynced before the command takes effect.
//!
//! A crash can leave at most the last line torn (no trailing newline, or not valid JSON); opening
//! the log drops such a tail, which is safe because its command was never acknowledged. A bad line
//! anywhere else is corruption and stops the server rather than silently losing catalog entries.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CatalogError, CatalogResult};
use crate::state::CatalogCommand;

#[derive(Serialize, Deserialize)]
struct LogEntry {
    index: u64,
    command: CatalogCommand,
}

/// An append-only file of catalog commands.
pub struct CommandLog {
    path: PathBuf,
    file: File,
    next_index: u64,
}

impl CommandLog {
    /// Opens (or creates) the log and returns it with every command it holds, in order.
    pub fn open(path: &Path) -> CatalogResult<(CommandLog, Vec<CatalogCommand>)> {
        let io_error = |source| CatalogError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut commands = Vec::new();
        let mut valid_len: u64 = 0;
        if path.exists() {
            let reader = BufReader::new(File::open(path).map_err(io_error)?);
            let mut lines = reader.split(b'\n').peekable();
            while let Some(line) = lines.next() {
                let line = line.map_err(io_error)?;
                let is_last = lines.peek().is_none();
                match serde_json::from_slice::<LogEntry>(&line) {
                    Ok(entry) if entry.index == commands.len() as u64 => {
                        commands.push(entry.command);
                        valid_len += line.len() as u64 + 1;
                    }
                    Ok(entry) => {
                        return Err(CatalogError::CorruptLog {
                            path: path.display().to_string(),
                            entry: commands.len() as u64,
                            message: format!(
                                "expected index {}, found {}",
                                commands.len(),
                                entry.index
                            ),
                        });
                    }
                    Err(_) if is_last => {
                        tracing::warn!(path = %path.display(), "dropping a torn last catalog log entry");
                    }
                    Err(e) => {
                        return Err(CatalogError::CorruptLog {
                            path: path.display().to_string(),
                            entry: commands.len() as u64,
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error)?;
        // A torn tail is cut off so the next append starts on a line of its own.
        if file.metadata().map_err(io_error)?.len() != valid_len {
            file.set_len(valid_len).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(io_error)?;
        }
        let log = CommandLog {
            path: path.to_path_buf(),
            file,
            next_index: commands.len() as u64,
        };
        Ok((log, commands))
    }

    /// Appends one command and fsyncs it: when this returns Ok the command survives a crash.
    pub fn append(&mut self, command: &CatalogCommand) -> CatalogResult<()> {
        let entry = LogEntry {
            index: self.next_index,
            command: command.clone(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| CatalogError::CorruptLog {
            path: self.path.display().to_string(),
            entry: self.next_index,
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let io_error = |source| CatalogError::Io {
            path: self.path.display().to_string(),
            source,
        };
        self.file.write_all(&line).map_err(io_error)?;
        self.file.sync_data().map_err(io_error)?;
        self.next_index += 1;
        Ok(())
    }
}

/// Fsyncs a directory so that a file created or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
