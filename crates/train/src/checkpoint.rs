//! Checkpoints: parameters, optimiser state, step and log position, in one atomically
//! written file.
//!
//! Layout: the 8 bytes `NGCKPT01`, a little-endian u64 header length, a JSON header, then
//! the parameters and (if any) the momentum buffer as little-endian f64. The header holds a
//! checksum of the payload, so a damaged file is detected instead of loaded.

use std::path::{Path, PathBuf};

use noisegeom_models::Arch;
use serde::{Deserialize, Serialize};

use crate::fsio::write_atomic;

const MAGIC: &[u8; 8] = b"NGCKPT01";

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

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Checkpoint {
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
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(damaged("not a noisegeom checkpoint"));
        }
        let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
        let header: Header = bytes
            .get(16..16 + hlen)
            .and_then(|h| serde_json::from_slice(h).ok())
            .ok_or_else(|| damaged("unreadable header"))?;
        let payload = &bytes[16 + hlen..];
        let count = header.num_params * if header.has_momentum { 2 } else { 1 };
        if payload.len() != 8 * count {
            return Err(damaged("truncated payload"));
        }
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
}
