//! The official CIFAR-10 binary files (`cifar-10-binary.tar.gz`).
//!
//! Each of `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin` holds 10000 records
//! of 1 label byte followed by 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each plane
//! row-major), so exactly 30 730 000 bytes. Pixels are scaled to `[0, 1]`.

use std::path::{Path, PathBuf};

use crate::{DataError, Dataset, Provenance, Targets};

pub const RECORDS_PER_FILE: usize = 10_000;
pub const RECORD_BYTES: usize = 1 + 3 * 32 * 32;
pub const FILE_BYTES: u64 = (RECORDS_PER_FILE * RECORD_BYTES) as u64;
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
pub const TEST_FILE: &str = "test_batch.bin";
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const HINT: &str = "download the binary version, https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, extract it and pass the folder cifar-10-batches-bin";

/// Which files to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The five `data_batch_*.bin` files: 50 000 images.
    Train,
    /// `test_batch.bin`: 10 000 images.
    Test,
}

/// Accepts the folder holding the `.bin` files or its parent (the archive's top level).
pub fn resolve_dir(dir: &Path) -> Result<PathBuf, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    let nested = dir.join("cifar-10-batches-bin");
    if !dir.join(TEST_FILE).exists() && nested.is_dir() {
        return Ok(nested);
    }
    Ok(dir.to_path_buf())
}

/// Reads one split. Every file is checked for its exact size and every label byte for `< 10`.
pub fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let dir = resolve_dir(dir)?;
    let files: Vec<&str> = match split {
        Split::Train => TRAIN_FILES.to_vec(),
        Split::Test => vec![TEST_FILE],
    };
    let n = files.len() * RECORDS_PER_FILE;
    let mut inputs = Vec::with_capacity(n * 3072);
    let mut labels = Vec::with_capacity(n);
    for name in files {
        let bytes = read_checked(&dir.join(name))?;
        for (r, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            if rec[0] >= 10 {
                return Err(DataError::BadLabel {
                    what: "CIFAR-10",
                    path: dir.join(name),
                    record: r,
                    label: rec[0],
                    classes: 10,
                });
            }
            labels.push(rec[0]);
            inputs.extend(rec[1..].iter().map(|&b| b as f32 / 255.0));
        }
    }
    Ok(Dataset {
        provenance: Provenance {
            name: "cifar10".into(),
            split: match split {
                Split::Train => "train".into(),
                Split::Test => "test".into(),
            },
            source: dir.display().to_string(),
            synthetic: false,
        },
        input_shape: vec![3, 32, 32],
        inputs,
        targets: Targets::Classes {
            labels,
            num_classes: 10,
        },
    })
}

fn read_checked(path: &Path) -> Result<Vec<u8>, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::MissingFile {
            what: "CIFAR-10",
            path: path.to_path_buf(),
            hint: format!("expected {FILE_BYTES} bytes (10000 records of 3073); {HINT}"),
        },
        _ => DataError::io(path, e),
    })?;
    if meta.len() != FILE_BYTES {
        return Err(DataError::WrongSize {
            what: "CIFAR-10 batch",
            path: path.to_path_buf(),
            actual: meta.len(),
            expected: FILE_BYTES,
            hint: HINT.into(),
        });
    }
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

/// Writes a file in the official format. Used by tests and fixtures, never by a run.
pub fn write_batch(path: &Path, labels: &[u8], pixels: &[u8]) -> std::io::Result<()> {
    assert_eq!(pixels.len(), labels.len() * 3072);
    let mut out = Vec::with_capacity(labels.len() * RECORD_BYTES);
    for (l, px) in labels.iter().zip(pixels.chunks_exact(3072)) {
        out.push(*l);
        out.extend_from_slice(px);
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the six official files; record r of file f has label (r + f) % 10 and every
    /// pixel of channel ch equal to (r + ch) % 256.
    fn write_fixture(dir: &Path) {
        let labels_for = |f: usize| -> Vec<u8> {
            (0..RECORDS_PER_FILE)
                .map(|r| ((r + f) % 10) as u8)
                .collect()
        };
        let pixels: Vec<u8> = (0..RECORDS_PER_FILE)
            .flat_map(|r| (0..3072).map(move |k| ((r + k / 1024) % 256) as u8))
            .collect();
        for (f, name) in TRAIN_FILES.iter().chain([&TEST_FILE]).enumerate() {
            write_batch(&dir.join(name), &labels_for(f), &pixels).unwrap();
        }
    }

    #[test]
    fn reads_official_layout() {
        let tmp = tempfile::tempdir().unwrap();
        write_fixture(tmp.path());
        let train = load(tmp.path(), Split::Train).unwrap();
        assert_eq!(train.len(), 50_000);
        assert_eq!(train.input_shape, vec![3, 32, 32]);
        let test = load(tmp.path(), Split::Test).unwrap();
        assert_eq!(test.len(), 10_000);
        let Targets::Classes { labels, .. } = &test.targets else {
            panic!("classes expected")
        };
        // test_batch is file index 5: record 7 has label (7 + 5) % 10 = 2.
        assert_eq!(labels[7], 2);
        // Record 7, green channel (ch 1): (7 + 1) / 255.
        let row = &test.inputs[7 * 3072..8 * 3072];
        assert_eq!(row[1024 + 5], 8.0 / 255.0);
        assert_eq!(row[0], 7.0 / 255.0);
        assert_eq!(test.class_counts().unwrap(), vec![1000; 10]);
    }

    #[test]
    fn accepts_the_archive_top_level() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&inner).unwrap();
        write_fixture(&inner);
        assert_eq!(load(tmp.path(), Split::Test).unwrap().len(), 10_000);
    }

    #[test]
    fn missing_truncated_and_corrupt_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load(&tmp.path().join("nope"), Split::Test).unwrap_err();
        assert!(matches!(err, DataError::MissingDir { .. }), "{err}");

        let err = load(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(
            err.contains("test_batch.bin") && err.contains("30730000"),
            "{err}"
        );
        assert!(err.contains("cifar-10-binary.tar.gz"), "{err}");

        std::fs::write(tmp.path().join(TEST_FILE), vec![0u8; 3073 * 10]).unwrap();
        let err = load(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(err.contains("30730") && err.contains("truncated"), "{err}");

        let mut labels = vec![0u8; RECORDS_PER_FILE];
        labels[42] = 10;
        write_batch(
            &tmp.path().join(TEST_FILE),
            &labels,
            &vec![0u8; RECORDS_PER_FILE * 3072],
        )
        .unwrap();
        let err = load(tmp.path(), Split::Test).unwrap_err().to_string();
        assert!(
            err.contains("record 42") && err.contains("label byte 10"),
            "{err}"
        );
    }

    /// Seeded corruptions of the test batch: truncations, appended bytes and flipped bytes.
    /// A file of the wrong size and a label byte ≥ 10 are errors; a flipped pixel is still a
    /// valid file; nothing panics or reads past the file.
    #[test]
    fn fuzzed_batches_fail_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let labels: Vec<u8> = (0..RECORDS_PER_FILE).map(|r| (r % 10) as u8).collect();
        let pixels = vec![9u8; RECORDS_PER_FILE * 3072];
        let path = tmp.path().join(TEST_FILE);
        write_batch(&path, &labels, &pixels).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut rng = crate::seeded_rng(0, "fuzz-cifar10");
        let mut next = |bound: usize| rand::RngExt::random_range(&mut rng, 0..bound);
        for case in 0..12 {
            let mut bytes = good.clone();
            let at = next(good.len());
            let expect_ok = match case % 3 {
                0 => {
                    bytes.truncate(at);
                    false
                }
                1 => {
                    bytes.extend(std::iter::repeat_n(0u8, 1 + at % 5000));
                    false
                }
                _ => {
                    bytes[at] ^= 0xf0;
                    // A label byte (first of a record) turns 0..9 into 240..249.
                    at % RECORD_BYTES != 0
                }
            };
            std::fs::write(&path, &bytes).unwrap();
            let got = load(tmp.path(), Split::Test);
            assert_eq!(got.is_ok(), expect_ok, "case {case} (byte {at})");
        }
    }
}
