//! The library side of the author-facing CLI commands (`dorado inspect`,
//! `dorado try`), kept out of `main.rs` so they are tested without spawning
//! processes and the binary stays a thin parser.

use crate::host::{ExportInfo, Host, LoadError, Module};
use dorado_core::{Rejection, StateMachine};
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

/// Why a tool command failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The module (or another input file) could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid Dorado module.
    #[error("{} is not a valid dorado module", .path.display())]
    Load {
        /// The module file.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: LoadError,
    },
    /// The host could not start or instantiate the module.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// Writing replies failed (e.g. a closed pipe).
    #[error("cannot write output")]
    Output(#[source] io::Error),
    /// Reading commands failed.
    #[error("cannot read input")]
    Input(#[source] io::Error),
    /// The final snapshot was rejected by the guest.
    #[error("final snapshot rejected")]
    Snapshot(#[source] Rejection),
    /// The snapshot file could not be written.
    #[error("cannot write snapshot to {}", .path.display())]
    WriteSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Reads and validates a module file.
pub fn load_file(host: &Host, path: &Path) -> Result<Module, ToolError> {
    read_module(host, path).map(|(module, _)| module)
}

/// Reads and validates a module file; also returns its bytes (to store them
/// under `modules/<sha256>`).
pub fn read_module(host: &Host, path: &Path) -> Result<(Module, Vec<u8>), ToolError> {
    let bytes = std::fs::read(path).map_err(|source| ToolError::Read {
        path: path.to_owned(),
        source,
    })?;
    let module = host.load(&bytes).map_err(|source| ToolError::Load {
        path: path.to_owned(),
        source,
    })?;
    Ok((module, bytes))
}

/// What `dorado inspect` reports; `Display` renders the printed report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The module file.
    pub path: PathBuf,
    /// ABI version (`dorado_abi_version()`).
    pub abi_version: u32,
    /// Size in bytes.
    pub size: usize,
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// Every export with its type.
    pub exports: Vec<ExportInfo>,
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "module:      {}", self.path.display())?;
        writeln!(f, "abi version: {}", self.abi_version)?;
        writeln!(f, "size:        {} bytes", self.size)?;
        writeln!(f, "sha256:      {}", self.sha256)?;
        writeln!(f, "imports:     none")?;
        writeln!(f, "exports:")?;
        let width = self.exports.iter().map(|e| e.name.len()).max().unwrap_or(0);
        for export in &self.exports {
            writeln!(f, "  {:width$}  {}", export.name, export.ty)?;
        }
        Ok(())
    }
}

/// `dorado inspect MODULE`: validates the module and describes it.
pub fn inspect(host: &Host, path: &Path) -> Result<Inspection, ToolError> {
    let module = load_file(host, path)?;
    Ok(Inspection {
        path: path.to_owned(),
        abi_version: module.abi_version(),
        size: module.size(),
        sha256: module.sha256().to_owned(),
        exports: module.exports().to_vec(),
    })
}

/// Counts from a `try` session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrySummary {
    /// Commands applied successfully.
    pub applied: usize,
    /// Queries answered successfully.
    pub queries: usize,
    /// Commands and queries rejected.
    pub rejected: usize,
}

/// The line protocol of `dorado try`, over any state machine.
///
/// Each input line is a command; a line starting with `?` is a query (the
/// rest of the line). Blank lines are skipped. Every other line produces
/// exactly one output line: the reply bytes, or `rejected: <reason>`;
/// processing continues after a rejection. Output is flushed per line so the
/// tool can be used interactively.
pub fn try_lines<M, R, W>(
    machine: &mut M,
    mut input: R,
    mut output: W,
) -> Result<TrySummary, ToolError>
where
    M: StateMachine + ?Sized,
    R: BufRead,
    W: Write,
{
    let mut summary = TrySummary::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .map_err(ToolError::Input)?
            == 0
        {
            break;
        }
        let text = trim_line_end(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let result = match text.strip_prefix(b"?") {
            Some(query) => machine.query(query).inspect(|_| summary.queries += 1),
            None => machine.apply(text).inspect(|_| summary.applied += 1),
        };
        match result {
            Ok(reply) => {
                output.write_all(&reply).map_err(ToolError::Output)?;
                output.write_all(b"\n").map_err(ToolError::Output)?;
            }
            Err(rejection) => {
                summary.rejected += 1;
                writeln!(output, "rejected: {rejection}").map_err(ToolError::Output)?;
            }
        }
        output.flush().map_err(ToolError::Output)?;
    }
    Ok(summary)
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `dorado try MODULE [--snapshot FILE]`: runs [`try_lines`] on a fresh
/// instance of the module, then writes the final snapshot if asked.
pub fn try_module<R: BufRead, W: Write>(
    host: &Host,
    path: &Path,
    snapshot: Option<&Path>,
    input: R,
    output: W,
) -> Result<TrySummary, ToolError> {
    let module = load_file(host, path)?;
    let mut instance = module.instantiate()?;
    let summary = try_lines(&mut instance, input, output)?;
    if let Some(snapshot_path) = snapshot {
        let bytes = instance.snapshot().map_err(ToolError::Snapshot)?;
        std::fs::write(snapshot_path, bytes).map_err(|source| ToolError::WriteSnapshot {
            path: snapshot_path.to_owned(),
            source,
        })?;
    }
    Ok(summary)
}
