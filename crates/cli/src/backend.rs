//! `--backend` and `--precision`: the only place that names concrete burn backends.
//! Everything below the CLI is generic over `B: Kernels`.

use burn::backend::{Autodiff, Flex, NdArray};
use clap::ValueEnum;
use noisegeom_kernels::AutodiffKernels;

/// Which burn backend runs the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// burn-flex on the CPU (fast, f32; f64 runs on ndarray).
    Cpu,
    /// burn-ndarray on the CPU (slower; f32 or f64).
    Ndarray,
    /// wgpu (Vulkan, Metal, DX12) through WGSL; f32 only.
    Wgpu,
}

/// Floating-point precision of the whole computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    F32,
    F64,
}

/// A job that runs on any autodiff backend.
pub trait Job {
    type Output;
    fn run<B: AutodiffKernels>(
        self,
        device: B::Device,
        backend: &str,
    ) -> anyhow::Result<Self::Output>;
}

/// One line per backend: what `--backend` values work in this build on this machine.
pub fn describe() -> String {
    let wgpu = if cfg!(feature = "wgpu") {
        #[cfg(feature = "wgpu")]
        let line = match first_adapter() {
            Ok(a) => format!("wgpu: adapter {a} (f32)"),
            Err(e) => format!("wgpu: unavailable: {e}"),
        };
        #[cfg(not(feature = "wgpu"))]
        let line = String::new();
        line
    } else {
        "wgpu: not compiled in (build with the `wgpu` feature)".to_string()
    };
    format!(
        "cpu: burn-flex (f32; --precision f64 runs on ndarray)\nndarray: burn-ndarray (f32, f64)\n{wgpu}"
    )
}

/// Runs `job` on the backend the flags name.
pub fn dispatch<J: Job>(
    kind: BackendKind,
    precision: Precision,
    job: J,
) -> anyhow::Result<J::Output> {
    match (kind, precision) {
        (BackendKind::Cpu, Precision::F32) => {
            job.run::<Autodiff<Flex>>(Default::default(), "cpu (flex, f32)")
        }
        (BackendKind::Cpu | BackendKind::Ndarray, Precision::F64) => {
            job.run::<Autodiff<NdArray<f64>>>(Default::default(), "ndarray (f64)")
        }
        (BackendKind::Ndarray, Precision::F32) => {
            job.run::<Autodiff<NdArray<f32>>>(Default::default(), "ndarray (f32)")
        }
        (BackendKind::Wgpu, Precision::F64) => anyhow::bail!(
            "--backend wgpu runs in f32 only (its f64 kernels give wrong numbers on Mesa); use --precision f32, or --backend cpu --precision f64"
        ),
        (BackendKind::Wgpu, Precision::F32) => wgpu_run(job),
    }
}

/// The wgpu device's largest buffer and largest storage binding, in bytes, once the device
/// is set up: a failed allocation's message names them.
#[cfg(feature = "wgpu")]
static WGPU_LIMITS: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// What a device-thread panic message should add about the device's limits.
pub fn device_limits() -> String {
    #[cfg(feature = "wgpu")]
    if let Some((buffer, binding)) = WGPU_LIMITS.get() {
        return format!(
            "; the device's largest buffer is {buffer} bytes and its largest storage binding {binding} bytes"
        );
    }
    String::new()
}

/// Where cubecl logs the kernels it compiles and launches (`bench --kernel-counts`); set
/// before the first wgpu device starts.
#[cfg(feature = "wgpu")]
static KERNEL_LOG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Turns on cubecl's compilation log and its launch log (no timing, so no added sync) in
/// `dir`, for [`kernel_counts`]. Without wgpu in the build this does nothing.
pub fn log_kernels(dir: std::path::PathBuf) {
    #[cfg(feature = "wgpu")]
    let _ = KERNEL_LOG.set(dir);
    #[cfg(not(feature = "wgpu"))]
    let _ = dir;
}

/// The kernels compiled and launched so far, from cubecl's logs; `None` unless
/// [`log_kernels`] turned them on. The logs are written by a background task: this waits
/// briefly for it (outside any timed region).
pub fn kernel_counts() -> Option<(u64, u64)> {
    #[cfg(feature = "wgpu")]
    {
        let dir = KERNEL_LOG.get()?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let count = |file: &str, marker: &str| {
            std::fs::read_to_string(dir.join(file))
                .map(|t| t.lines().filter(|l| l.contains(marker)).count() as u64)
                .unwrap_or(0)
        };
        Some((
            count("compilations.log", "[Compiling kernel]"),
            count("launches.log", "Executing"),
        ))
    }
    #[cfg(not(feature = "wgpu"))]
    None
}

#[cfg(feature = "wgpu")]
fn wgpu_run<J: Job>(job: J) -> anyhow::Result<J::Output> {
    use burn::backend::Wgpu;
    use burn::backend::wgpu::graphics::AutoGraphicsApi;
    use burn::backend::wgpu::{RuntimeOptions, WgpuDevice, init_setup};
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let adapter = first_adapter()?;
    let device = WgpuDevice::DefaultDevice;
    if WGPU_LIMITS.get().is_none() {
        // burn 0.21 gives every OS thread that touches a GPU tensor its own stream and
        // memory pool and never frees a finished thread's (tracel-ai/burn#4792): one stream.
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.streaming.max_streams = 1;
        if let Some(dir) = KERNEL_LOG.get() {
            let logger = |file: &str, level: &str| {
                format!(
                    "file = {:?}\nlevel = \"{level}\"",
                    dir.join(file).display().to_string()
                )
            };
            config.compilation.logger = toml::from_str(&logger("compilations.log", "basic"))?;
            config.profiling.logger = toml::from_str(&logger("launches.log", "minimal"))?;
        }
        CubeClRuntimeConfig::set(config);
        // cubecl asks the adapter for its own limits (not wgpu's defaults); read them back.
        let setup = init_setup::<AutoGraphicsApi>(&device, RuntimeOptions::default());
        let l = setup.device.limits();
        let limits = (l.max_buffer_size, l.max_storage_buffer_binding_size);
        let _ = WGPU_LIMITS.set(limits);
        tracing::info!(
            "wgpu adapter: {adapter}; largest buffer {} MB, largest storage binding {} MB",
            limits.0 >> 20,
            limits.1 >> 20
        );
    }
    job.run::<Autodiff<Wgpu>>(device, &format!("wgpu ({adapter}, f32)"))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_run<J: Job>(_job: J) -> anyhow::Result<J::Output> {
    anyhow::bail!(
        "this noisegeom was built without the `wgpu` feature; rebuild with default features or use --backend cpu"
    )
}

/// The adapter wgpu would use, or a one-line error naming the CPU fallback.
#[cfg(feature = "wgpu")]
pub fn first_adapter() -> anyhow::Result<String> {
    noisegeom_kernels::device_conv::adapter().ok_or_else(|| anyhow::anyhow!(no_adapter_message()))
}

#[cfg(feature = "wgpu")]
fn no_adapter_message() -> &'static str {
    "wgpu found no GPU adapter (no Vulkan/Metal/DX12 driver; on Linux without a GPU, `apt-get install mesa-vulkan-drivers` gives a software one); run on the CPU with --backend cpu"
}
