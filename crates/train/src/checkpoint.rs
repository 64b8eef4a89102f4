//! Checkpoints: parameters, optimiser state, step and log position, in one atomically
//! written file.
//!
//! Layout: the 8 bytes `NGCKPT02`, a little-endian u64 header length, a JSON header, the
//! parameters and (if any) the momentum buffer as little-endian f64, and a little-endian u64
//! checksum (FNV-1a) of every byte before it, so damage anywhere, header included, is
//! detected instead of loaded. Files of the first layout, `NGCKPT01` (no trailing checksum;
//! the header's checksum covers the payload), still load.

use std::path::{Path, PathBuf};

use noisegeom_models::Arch;
use serde::{Deserialize, Serialize};

use crate::fsio::{LogMark, fnv, write_atomic};

const MAGIC: &[u8; 8] = b"NGCKPT02";
/// The first layout, without the trailing checksum.
const MAGIC_V1: &[u8; 8] = b"NGCKPT01";

/// Everything needed to continue a run exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Steps completed.
    pub step: u64,
    /// θ, in the flat order of [`Arch::param_layout`].
    pub params: Vec<f64>,
    /// The SGD momentum buffer, flat like θ; `None` without momentum.
    pub momentum: Option<Vec<f64>>,
    /// Length of `metrics.jsonl` when the checkpoint was taken.
    pub log_bytes: u64,
    /// Checksum of those bytes ([`fnv`]); `None` in checkpoints written before it was
    /// recorded.
    pub log_checksum: Option<u64>,
    /// The training losses summed since the last logged step, and how many: the logged loss
    /// averages this window, so a run resumed between log steps continues the same sum.
    pub loss_window: (f64, u64),
    /// The probe due at `step` was interrupted by a stop request: a resumed run takes it
    /// first.
    pub probe_pending: bool,
    pub arch: Arch,
}

#[derive(Serialize, Deserialize)]
struct Header {
    step: u64,
    num_params: usize,
    has_momentum: bool,
    log_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_checksum: Option<u64>,
    /// [`Checkpoint::loss_window`]'s sum as its bits (exact through JSON), and its count;
    /// absent in checkpoints written before they were recorded (an empty window).
    #[serde(default)]
    window_sum_bits: u64,
    #[serde(default)]
    window_steps: u64,
    #[serde(default)]
    probe_pending: bool,
    checksum: u64,
    arch: Arch,
}

/// Why a checkpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is damaged ({problem}); delete it to resume from the one before")]
    Damaged { path: PathBuf, problem: String },
}

impl Checkpoint {
    /// Where the log was when this checkpoint was taken (`None` for checkpoints that did not
    /// record its checksum).
    pub fn log_mark(&self) -> Option<LogMark> {
        self.log_checksum.map(|checksum| LogMark {
            bytes: self.log_bytes,
            checksum,
        })
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut payload = Vec::with_capacity(8 * self.params.len() * 2);
        for v in self.params.iter().chain(self.momentum.iter().flatten()) {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        let header = serde_json::to_vec(&Header {
            step: self.step,
            num_params: self.params.len(),
            has_momentum: self.momentum.is_some(),
            log_bytes: self.log_bytes,
            log_checksum: self.log_checksum,
            window_sum_bits: self.loss_window.0.to_bits(),
            window_steps: self.loss_window.1,
            probe_pending: self.probe_pending,
            checksum: fnv(&payload),
            arch: self.arch.clone(),
        })
        .expect("header serialises");
        let mut out = Vec::with_capacity(16 + header.len() + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&payload);
        let trailer = fnv(&out);
        out.extend_from_slice(&trailer.to_le_bytes());
        write_atomic(path, &out)
    }

    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let damaged = |problem: &str| CheckpointError::Damaged {
            path: path.to_path_buf(),
            problem: problem.to_string(),
        };
        let trailer = match bytes.get(..8) {
            Some(m) if m == MAGIC => 8,
            Some(m) if m == MAGIC_V1 => 0,
            _ => return Err(damaged("not a noisegeom checkpoint")),
        };
        let hlen = bytes
            .get(8..16)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .and_then(|h| usize::try_from(h).ok())
            .ok_or_else(|| damaged("truncated header"))?;
        let header: Header = 16usize
            .checked_add(hlen)
            .and_then(|end| bytes.get(16..end))
            .and_then(|h| serde_json::from_slice(h).ok())
            .ok_or_else(|| damaged("unreadable header"))?;
        // The declared sizes are checked against the file's length before anything is
        // allocated from them.
        let payload_bytes = header
            .num_params
            .checked_mul(if header.has_momentum { 16 } else { 8 });
        let expected = payload_bytes.and_then(|n| (16 + hlen).checked_add(n)?.checked_add(trailer));
        if expected != Some(bytes.len()) {
            return Err(damaged(if expected.is_some_and(|e| bytes.len() > e) {
                "trailing bytes after the payload"
            } else {
                "truncated payload"
            }));
        }
        let (body, sum) = bytes.split_at(bytes.len() - trailer);
        if trailer > 0 && fnv(body).to_le_bytes()[..] != *sum {
            return Err(damaged("checksum mismatch"));
        }
        let payload = &body[16 + hlen..];
        if fnv(payload) != header.checksum {
            return Err(damaged("checksum mismatch"));
        }
        let values: Vec<f64> = payload
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (params, rest) = values.split_at(header.num_params);
        Ok(Checkpoint {
            step: header.step,
            params: params.to_vec(),
            momentum: header.has_momentum.then(|| rest.to_vec()),
            log_bytes: header.log_bytes,
            log_checksum: header.log_checksum,
            loss_window: (f64::from_bits(header.window_sum_bits), header.window_steps),
            probe_pending: header.probe_pending,
            arch: header.arch,
        })
    }
}

/// Checkpoint files in a run's `checkpoints/` folder, oldest first.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name
                .strip_prefix("step-")?
                .strip_suffix(".ckpt")?
                .parse()
                .ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// File name for the checkpoint after `step` steps.
pub fn file_name(step: u64) -> String {
    format!("step-{step:010}.ckpt")
}

#[cfg(test)]
mod tests {
    use super::*;
    use noisegeom_models::Stage;

    #[test]
    fn round_trip_and_damage_detection() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = Checkpoint {
            step: 12,
            params: vec![1.5, -2.0, 1e-300],
            momentum: Some(vec![0.0, 0.25, 3.0]),
            log_bytes: 99,
            log_checksum: Some(7),
            loss_window: (0.1 + 0.2, 3),
            probe_pending: true,
            arch: Arch {
                input_shape: vec![3],
                stages: vec![Stage::Dense {
                    out: 1,
                    bias: false,
                }],
            },
        };
        let p = tmp.path().join(file_name(12));
        ck.save(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), ck);
        assert_eq!(list(tmp.path()), vec![(12, p.clone())]);

        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let err = Checkpoint::load(&p).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        let err = Checkpoint::load(&p).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    /// Seeded corruptions of a checkpoint: truncations, flipped bits anywhere (header and
    /// checksum included), and huge declared sizes. Every one is an error naming the damage;
    /// none panics or allocates what a corrupt header declares.
    #[test]
    fn fuzzed_checkpoints_are_all_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let ck = Checkpoint {
            step: 40,
            params: (0..50).map(|k| k as f64 / 7.0).collect(),
            momentum: Some(vec![0.5; 50]),
            log_bytes: 1234,
            log_checksum: Some(0xfeed),
            loss_window: (0.75, 2),
            probe_pending: false,
            arch: Arch {
                input_shape: vec![49],
                stages: vec![Stage::Dense { out: 1, bias: true }],
            },
        };
        let p = tmp.path().join(file_name(40));
        ck.save(&p).unwrap();
        let good = std::fs::read(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), ck);
        let mut rng = noisegeom_data::seeded_rng(0, "fuzz-checkpoint");
        let mut next = |bound: usize| rand::RngExt::random_range(&mut rng, 0..bound);
        for case in 0..400 {
            let mut bytes = good.clone();
            match case % 4 {
                0 => bytes.truncate(next(good.len())),
                1 => {
                    let at = next(good.len());
                    bytes[at] ^= 1 << next(8);
                }
                // The header length declared as 2⁶⁴ − 1.
                2 => bytes[8..16].copy_from_slice(&[0xff; 8]),
                // A huge parameter count (2⁶⁴ − 1 or 10¹⁴), the header still valid JSON.
                _ => {
                    let needle = b"\"num_params\":50";
                    let huge: &[u8] = if case % 8 == 3 {
                        b"\"num_params\":18446744073709551615"
                    } else {
                        b"\"num_params\":99999999999999"
                    };
                    let at = bytes
                        .windows(needle.len())
                        .position(|w| w == needle)
                        .expect("the header names num_params");
                    let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
                    let grown = hlen + (huge.len() - needle.len()) as u64;
                    bytes.splice(at..at + needle.len(), huge.iter().copied());
                    bytes[8..16].copy_from_slice(&grown.to_le_bytes());
                }
            }
            std::fs::write(&p, &bytes).unwrap();
            let Err(err) = Checkpoint::load(&p) else {
                panic!("case {case} loaded")
            };
            assert!(
                matches!(err, CheckpointError::Damaged { .. }),
                "case {case}: {err}"
            );
        }
    }
}
