use std::path::PathBuf;

/// Everything that can go wrong while reading or preparing data. Each message says what
/// went wrong, where, and how to fix it, on one line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "dataset directory {path} does not exist; pass the folder that holds the files with --data (or `data.dir` in the config)"
    )]
    MissingDir { path: PathBuf },

    #[error("{what} file {path} is missing; {hint}")]
    MissingFile {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{path} has {actual} bytes but a {what} file has {expected}; the file is truncated or is not the official binary version ({hint})"
    )]
    WrongSize {
        what: &'static str,
        path: PathBuf,
        actual: u64,
        expected: u64,
        hint: String,
    },

    #[error(
        "{path}: record {record} has label byte {label}, but labels must be below {classes}; the file is corrupt or not a {what} file"
    )]
    BadLabel {
        what: &'static str,
        path: PathBuf,
        record: usize,
        label: u8,
        classes: usize,
    },

    #[error("{path}: {problem}; expected an IDX file as distributed with MNIST / Fashion-MNIST")]
    BadIdx { path: PathBuf, problem: String },

    #[error(
        "a subset of {requested} samples was requested from {dataset}, which has only {available}; lower the subset size"
    )]
    SubsetTooLarge {
        requested: usize,
        available: usize,
        dataset: String,
    },

    #[error(
        "a class-balanced subset needs {want} samples of class {class} from {dataset}, which has {have}; lower the subset size or set balanced = false"
    )]
    ClassTooSmall {
        class: usize,
        have: usize,
        want: usize,
        dataset: String,
    },

    #[error(
        "{dataset} has regression targets, so a class-balanced subset is undefined; set balanced = false"
    )]
    BalancedNeedsClasses { dataset: String },

    #[error("invalid synthetic data setting: {0}")]
    Synthetic(String),

    #[error("config: {0}")]
    Config(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
