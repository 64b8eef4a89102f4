//! MNIST-style IDX files (MNIST, Fashion-MNIST), raw or gzipped.
//!
//! Debian's `dataset-fashion-mnist` installs `train-images-idx3-ubyte.gz`,
//! `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`
//! under `/usr/share/datasets/fashion-mnist`. Pixels are scaled to `[0, 1]` and images
//! become `[1, 28, 28]` inputs.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{DataError, Dataset, Provenance, Targets};

/// Where Debian's `dataset-fashion-mnist` puts the files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

const HINT: &str = "install Debian's dataset-fashion-mnist (files land in /usr/share/datasets/fashion-mnist) or copy the four IDX files from the MNIST / Fashion-MNIST distribution into this folder";

/// Which files to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `train-*`: 60 000 images.
    Train,
    /// `t10k-*`: 10 000 images.
    Test,
}

/// Reads one split; `name` goes into the provenance (`mnist` or `fashion-mnist`).
pub fn load(dir: &Path, split: Split, name: &str) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let img_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lab_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (img_dims, pixels) = read_idx(&img_path)?;
    let (lab_dims, labels) = read_idx(&lab_path)?;
    if img_dims.len() != 3 {
        return Err(bad(
            &img_path,
            format!("{} dimensions, expected 3", img_dims.len()),
        ));
    }
    if lab_dims.len() != 1 || lab_dims[0] != img_dims[0] {
        return Err(bad(
            &lab_path,
            format!(
                "{:?} labels for {} images in {}",
                lab_dims,
                img_dims[0],
                img_path.display()
            ),
        ));
    }
    if let Some((record, &label)) = labels.iter().enumerate().find(|(_, l)| **l >= 10) {
        return Err(DataError::BadLabel {
            what: "IDX label",
            path: lab_path,
            record,
            label,
            classes: 10,
        });
    }
    Ok(Dataset {
        provenance: Provenance {
            name: name.into(),
            split: match split {
                Split::Train => "train".into(),
                Split::Test => "test".into(),
            },
            source: dir.display().to_string(),
            synthetic: false,
        },
        input_shape: vec![1, img_dims[1], img_dims[2]],
        inputs: pixels.iter().map(|&b| b as f32 / 255.0).collect(),
        targets: Targets::Classes {
            labels,
            num_classes: 10,
        },
    })
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    for cand in [dir.join(stem), dir.join(format!("{stem}.gz"))] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(DataError::MissingFile {
        what: "IDX",
        path: dir.join(format!("{stem}[.gz]")),
        hint: HINT.into(),
    })
}

fn bad(path: &Path, problem: String) -> DataError {
    DataError::BadIdx {
        path: path.to_path_buf(),
        problem,
    }
}

/// Parses an unsigned-byte IDX file: magic `0x00 0x00 0x08 ndim`, big-endian u32 dims, data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("gzip stream is corrupt or truncated ({e})")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(
            path,
            "missing the unsigned-byte IDX magic number".into(),
        ));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad(path, "header is truncated".into()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| u32::from_be_bytes(bytes[4 + 4 * k..8 + 4 * k].try_into().unwrap()) as usize)
        .collect();
    // The declared dimensions are checked against the bytes present before anything is
    // allocated from them.
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| n.checked_add(header));
    if expected != Some(bytes.len()) {
        let Some(expected) = expected else {
            return Err(bad(
                path,
                format!("dimensions {dims:?} overflow; the header is corrupt"),
            ));
        };
        return Err(bad(
            path,
            format!(
                "{} bytes after decompression, but dimensions {:?} need {}; the file is truncated",
                bytes.len(),
                dims,
                expected
            ),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Writes an unsigned-byte IDX file, gzipped when the name ends in `.gz`. For tests.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> std::io::Result<()> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&(*d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    if path.extension().is_some_and(|e| e == "gz") {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&out)?;
        out = enc.finish()?;
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path, gz: bool, n: usize) {
        let ext = if gz { ".gz" } else { "" };
        let px: Vec<u8> = (0..n * 784).map(|k| (k % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for p in ["train", "t10k"] {
            write_idx(
                &dir.join(format!("{p}-images-idx3-ubyte{ext}")),
                &[n, 28, 28],
                &px,
            )
            .unwrap();
            write_idx(
                &dir.join(format!("{p}-labels-idx1-ubyte{ext}")),
                &[n],
                &labels,
            )
            .unwrap();
        }
    }

    #[test]
    fn reads_raw_and_gzipped() {
        for gz in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            fixture(tmp.path(), gz, 30);
            let ds = load(tmp.path(), Split::Test, "fashion-mnist").unwrap();
            assert_eq!(ds.len(), 30);
            assert_eq!(ds.input_shape, vec![1, 28, 28]);
            assert_eq!(ds.inputs[784 + 3], ((784 + 3) % 251) as f32 / 255.0);
            assert_eq!(ds.class_counts().unwrap(), vec![3; 10]);
        }
    }

    #[test]
    fn truncated_and_mislabelled_files_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        fixture(tmp.path(), false, 10);
        let p = tmp.path().join("t10k-images-idx3-ubyte");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let err = load(tmp.path(), Split::Test, "mnist")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated") && err.contains("t10k-images"),
            "{err}"
        );

        write_idx(
            &tmp.path().join("train-labels-idx1-ubyte"),
            &[10],
            &[11; 10],
        )
        .unwrap();
        let err = load(tmp.path(), Split::Train, "mnist")
            .unwrap_err()
            .to_string();
        assert!(err.contains("label byte 11"), "{err}");

        let err = load(&tmp.path().join("x"), Split::Train, "mnist").unwrap_err();
        assert!(matches!(err, DataError::MissingDir { .. }));
    }

    /// Seeded corruptions of raw and gzipped IDX files: truncations, flipped bytes and huge
    /// declared dimensions. A truncation and a damaged raw header are errors; a flipped pixel
    /// of a raw file is still a valid file (with that pixel changed); a damaged gzip file is an
    /// error or, where the damage hits bits that decoding ignores (the header's time and OS
    /// fields, padding), gives back exactly the original data (its CRC-32 checks that). None
    /// panics or allocates what a corrupt header declares.
    #[test]
    fn fuzzed_idx_files_fail_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = crate::seeded_rng(0, "fuzz-idx");
        let mut next = |bound: usize| rand::RngExt::random_range(&mut rng, 0..bound);
        for gz in [false, true] {
            let path = tmp.path().join(if gz { "x.gz" } else { "x" });
            write_idx(&path, &[6, 28, 28], &vec![7u8; 6 * 784]).unwrap();
            let good = std::fs::read(&path).unwrap();
            for case in 0..150 {
                let mut bytes = good.clone();
                let (kind, at) = (case % 3, next(good.len()));
                match kind {
                    0 => bytes.truncate(at),
                    1 => bytes[at] ^= 1 << next(8),
                    _ if gz => bytes[at] ^= 0xff,
                    // A dimension declared as 2³² − 1.
                    _ => bytes[4 + 4 * next(3)..][..4].copy_from_slice(&[0xff; 4]),
                }
                std::fs::write(&path, &bytes).unwrap();
                let got = read_idx(&path);
                let what = format!("case {case} (gz {gz}, kind {kind}, byte {at})");
                match (gz, kind) {
                    (_, 0) => assert!(got.is_err(), "{what}"),
                    (true, _) => {
                        if let Ok((dims, data)) = got {
                            assert_eq!(dims, vec![6, 28, 28], "{what}");
                            assert_eq!(data, vec![7u8; 6 * 784], "{what}");
                        }
                    }
                    (false, 1) if at >= 16 => {
                        let (dims, data) = got.unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!((dims, data.len()), (vec![6, 28, 28], 6 * 784));
                    }
                    (false, _) => assert!(got.is_err(), "{what}"),
                }
            }
        }
    }

    #[test]
    fn debian_fashion_mnist_when_installed() {
        let dir = Path::new(DEBIAN_FASHION_MNIST);
        if !dir.is_dir() {
            // Written past the test harness's capture so the skip is always visible.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED debian_fashion_mnist_when_installed: {DEBIAN_FASHION_MNIST} is not installed (apt-get install dataset-fashion-mnist)"
            );
            return;
        }
        let ds = load(dir, Split::Test, "fashion-mnist").unwrap();
        assert_eq!(ds.len(), 10_000);
        assert_eq!(ds.class_counts().unwrap(), vec![1000; 10]);
    }
}
