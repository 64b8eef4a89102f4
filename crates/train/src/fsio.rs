//! Crash-safe file output.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync,
/// rename over the target, fsync the folder. A reader sees the old file or the new one,
/// never a partial one, even after `kill -9` or a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        // A full disk or a file-size limit: leave no partial temporary file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// An append-only JSON-lines log. Each event is one `write` of one whole line, so a crash
/// leaves at most a torn last line, which [`JsonLog::open`] drops.
pub struct JsonLog {
    file: File,
    path: PathBuf,
    len: u64,
    /// [`fnv`] of the log's bytes so far.
    hash: u64,
}

/// A position in a log, as a checkpoint records it: the length in bytes and the checksum of
/// those bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogMark {
    pub bytes: u64,
    pub checksum: u64,
}

/// FNV-1a, 64 bits, continuing from `h` (start from [`FNV_START`]).
pub fn fnv_from(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The FNV-1a offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits, of `bytes`: the checksum of checkpoints and of the log they record.
pub fn fnv(bytes: &[u8]) -> u64 {
    fnv_from(FNV_START, bytes)
}

/// Checks that the log at `path` still begins with the bytes `mark` recorded. `Err` says
/// how it differs: shorter (truncated) or with other bytes (edited).
pub fn check_log(path: &Path, mark: LogMark) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("it cannot be read ({e})"))?;
    let Some(prefix) = usize::try_from(mark.bytes)
        .ok()
        .and_then(|n| bytes.get(..n))
    else {
        return Err(format!(
            "it has {} bytes, but the checkpoint recorded {}: it was truncated",
            bytes.len(),
            mark.bytes
        ));
    };
    if fnv(prefix) != mark.checksum {
        return Err(format!(
            "its first {} bytes differ from what the checkpoint recorded: it was edited",
            mark.bytes
        ));
    }
    Ok(())
}

impl JsonLog {
    /// Opens `path` for appending, keeping its first `keep` bytes (all of it when `None`)
    /// and dropping a torn last line.
    pub fn open(path: &Path, keep: Option<u64>) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut len = file.metadata()?.len();
        if let Some(k) = keep {
            len = len.min(k);
        }
        // Cut back to the end of the last complete line.
        let bytes = std::fs::read(path)?;
        let bytes = &bytes[..len as usize];
        len = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p as u64 + 1);
        let hash = fnv(&bytes[..len as usize]);
        file.set_len(len)?;
        Ok(JsonLog {
            file,
            path: path.to_path_buf(),
            len,
            hash,
        })
    }

    /// Appends one event.
    pub fn write(&mut self, event: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).expect("JSON serialises");
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.len += line.len() as u64;
        self.hash = fnv_from(self.hash, &line);
        Ok(())
    }

    /// Flushes to disk and returns the log's length and checksum, for a checkpoint to record.
    pub fn sync(&mut self) -> std::io::Result<LogMark> {
        self.file.sync_data()?;
        Ok(LogMark {
            bytes: self.len,
            checksum: self.hash,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }

    #[test]
    fn log_drops_torn_lines_and_truncates_to_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("m.jsonl");
        let mut log = JsonLog::open(&p, None).unwrap();
        log.write(&serde_json::json!({"a": 1})).unwrap();
        let mark = log.sync().unwrap();
        log.write(&serde_json::json!({"a": 2})).unwrap();
        drop(log);
        // A torn line, as a crash mid-write would leave.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"a\": 3")
            .unwrap();
        let log = JsonLog::open(&p, None).unwrap();
        drop(log);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        assert_eq!(check_log(&p, mark), Ok(()));
        assert_eq!(mark.checksum, fnv(b"{\"a\":1}\n"));
        let mut log = JsonLog::open(&p, Some(mark.bytes)).unwrap();
        log.write(&serde_json::json!({"a": 9})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":9}\n"
        );
    }
}
