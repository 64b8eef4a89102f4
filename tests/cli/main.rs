//! End-to-end tests of the `noisegeom` binary, organised by topic.

/// Every bad input gives one line on stderr, exit code 2, and no panic.
mod bad_inputs;
/// Bring your own model: `sequential` architectures, state_dicts and probe files.
mod byom;
/// Training on files in the official CIFAR-10 binary format; `data info`.
mod cifar_format;
/// Every command README.md and the guide show, run at quick sizes.
mod docs;
/// `figure NAME --quick`: smoke tests of the paper's figures.
mod figures;
/// `measure` and `export`.
mod geometry;
/// Determinism, interruption and resume.
mod reproducibility;
/// `sweep plan|run|merge` in separate processes, and the Slurm templates run through bash.
mod sweep;
/// The wgpu backend against the CPU on tiny shapes (needs a Vulkan driver; lavapipe will do).
mod wgpu;

mod support;
