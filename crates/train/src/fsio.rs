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
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
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
        file.set_len(len)?;
        Ok(JsonLog {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    /// Appends one event.
    pub fn write(&mut self, event: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event).expect("JSON serialises");
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Flushes to disk and returns the log length in bytes, for a checkpoint to record.
    pub fn sync(&mut self) -> std::io::Result<u64> {
        self.file.sync_data()?;
        Ok(self.len)
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
        let mut log = JsonLog::open(&p, Some(mark)).unwrap();
        log.write(&serde_json::json!({"a": 9})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"a\":9}\n"
        );
    }
}
