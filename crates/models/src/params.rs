//! Where parameters come from, and the flat parameter view.
//!
//! The flat vector θ ∈ R^p is every parameter tensor, flattened row-major, concatenated in
//! the order of [`crate::Arch::param_layout`] (the order the module visits its params).

use burn::module::ParamId;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Element, ElementConversion, Tensor, TensorData};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// What a parameter is, for initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Weight,
    Bias,
    /// A Hadamard (diagonal-net) factor.
    Diagonal,
    /// BatchNorm's γ (initialised to 1, as in PyTorch).
    NormScale,
    /// BatchNorm's β (initialised to 0).
    NormShift,
}

/// What an initialiser needs to know about one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamInit {
    pub fan_in: usize,
    pub role: Role,
}

impl ParamInit {
    pub fn new(fan_in: usize, role: Role) -> Self {
        ParamInit { fan_in, role }
    }
}

/// Supplies parameters, in flat-vector order, while a [`crate::Net`] is built.
pub trait ParamSource<B: Backend> {
    fn param<const D: usize>(&mut self, shape: [usize; D], init: ParamInit) -> Param<Tensor<B, D>>;

    /// Called after the last parameter; a source that was given values checks that all
    /// of them were used.
    fn finish(&mut self) -> Result<(), ModelError> {
        Ok(())
    }
}

/// Initialisation scheme. **\[choice\]**, recorded in every run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// PyTorch's default for Linear/Conv2d: weights and biases ~ U(±1/√fan_in).
    #[default]
    Pytorch,
    /// Weights ~ N(0, 1/fan_in), biases 0.
    Lecun,
    /// Weights ~ N(0, 2/fan_in), biases 0.
    He,
}

impl InitScheme {
    fn draw(self, rng: &mut ChaCha8Rng, len: usize, init: ParamInit) -> Vec<f64> {
        let fan = init.fan_in.max(1) as f64;
        let normal = |rng: &mut ChaCha8Rng, std: f64| noisegeom_data::normal_vec(rng, len, std);
        match (self, init.role) {
            (_, Role::NormScale) => vec![1.0; len],
            (_, Role::NormShift) => vec![0.0; len],
            (InitScheme::Pytorch, _) => {
                let bound = 1.0 / fan.sqrt();
                (0..len).map(|_| rng.random_range(-bound..bound)).collect()
            }
            (InitScheme::Lecun | InitScheme::He, Role::Bias) => vec![0.0; len],
            (InitScheme::Lecun, _) => normal(rng, (1.0 / fan).sqrt()),
            (InitScheme::He, _) => normal(rng, (2.0 / fan).sqrt()),
        }
    }
}

/// Draws fresh parameters from a seeded host RNG, so the same seed gives the same θ on
/// every backend.
pub struct RandomInit<'a, B: Backend> {
    pub device: &'a B::Device,
    pub scheme: InitScheme,
    pub rng: ChaCha8Rng,
}

impl<'a, B: Backend> RandomInit<'a, B> {
    pub fn new(device: &'a B::Device, scheme: InitScheme, seed: u64) -> Self {
        RandomInit {
            device,
            scheme,
            rng: noisegeom_data::seeded_rng(seed, "model-init"),
        }
    }
}

impl<B: Backend> ParamSource<B> for RandomInit<'_, B> {
    fn param<const D: usize>(&mut self, shape: [usize; D], init: ParamInit) -> Param<Tensor<B, D>> {
        let len = shape.iter().product();
        let values = self.scheme.draw(&mut self.rng, len, init);
        Param::from_tensor(param_tensor(values, shape, self.device))
    }
}

/// A parameter tensor on `device` from host values in flat (row-major) order.
///
/// A matrix (a dense layer's `[out, in]` weight) is stored as the transposed view of a
/// contiguous `[in, out]` tensor. That is the layout SGD leaves it in (noisegeom-train's
/// `sgd` updates matrices in their transpose), and the one in which the forward's `x·Wᵀ`
/// reads a contiguous `Wᵀ`. gemm can round the same product differently with another operand
/// layout, so a network built from θ (a resumed run, a probe) must hold its matrices the way
/// the trained network does to compute bitwise the same numbers.
pub fn param_tensor<B: Backend, E: Element, const D: usize>(
    values: Vec<E>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    if D != 2 {
        return Tensor::from_data(TensorData::new(values, shape), device);
    }
    let (rows, cols) = (shape[0], shape[1]);
    let t = transpose(&values, rows, cols);
    let mut flipped = shape;
    flipped.swap(0, 1);
    Tensor::<B, D>::from_data(TensorData::new(t, flipped), device).swap_dims(0, 1)
}

/// Takes parameters from a host flat vector θ.
pub struct FlatSource<'a, B: Backend> {
    pub device: &'a B::Device,
    pub values: &'a [f64],
    pub offset: usize,
    /// Constants rather than trainable leaves: on an autodiff backend, a backward pass then
    /// skips their gradients (used when only activation gradients are wanted).
    pub frozen: bool,
}

impl<'a, B: Backend> FlatSource<'a, B> {
    pub fn new(device: &'a B::Device, values: &'a [f64]) -> Self {
        FlatSource {
            device,
            values,
            offset: 0,
            frozen: false,
        }
    }

    /// Like [`FlatSource::new`], with parameters that do not require gradients.
    pub fn frozen(device: &'a B::Device, values: &'a [f64]) -> Self {
        FlatSource {
            frozen: true,
            ..Self::new(device, values)
        }
    }

    /// The next `len` values in the backend's element type, converted in one pass (all zero
    /// past the end; [`ParamSource::finish`] reports it).
    pub fn take<E: Element>(&mut self, len: usize) -> Vec<E> {
        let start = self.offset.min(self.values.len());
        let end = (self.offset + len).min(self.values.len());
        self.offset += len;
        let mut out: Vec<E> = self.values[start..end].iter().map(|x| x.elem()).collect();
        out.resize(len, 0.0.elem());
        out
    }
}

impl<B: Backend> ParamSource<B> for FlatSource<'_, B> {
    fn param<const D: usize>(&mut self, shape: [usize; D], _: ParamInit) -> Param<Tensor<B, D>> {
        let values: Vec<B::FloatElem> = self.take(shape.iter().product());
        if self.frozen {
            // A constant (a tangent, a probe network) is never compared bitwise with a trained
            // network, so it keeps θ's row-major layout and skips the host transposition that
            // `param_tensor` makes: a few ms per product on the FNN. `Param::from_tensor` would
            // mark it as requiring grad.
            let tensor = Tensor::from_data(TensorData::new(values, shape), self.device);
            Param::initialized(ParamId::new(), tensor)
        } else {
            Param::from_tensor(param_tensor(values, shape, self.device))
        }
    }

    fn finish(&mut self) -> Result<(), ModelError> {
        if self.offset != self.values.len() {
            return Err(ModelError::FlatLength {
                expected: self.offset,
                actual: self.values.len(),
            });
        }
        Ok(())
    }
}

/// Visits every (i, j) of a `rows × cols` grid in 16×16 blocks, j fastest within a block, so
/// that a transposing copy reads and writes within cache-resident blocks instead of missing
/// on every value of one side. 16 rather than 32: with a row stride of a few KB (512 or 3072
/// f32 values) the 32 rows of a 32×32 block fall in one or two L1 sets and evict each other.
pub fn in_blocks(rows: usize, cols: usize, mut f: impl FnMut(usize, usize)) {
    const T: usize = 16;
    for i0 in (0..rows).step_by(T) {
        for j0 in (0..cols).step_by(T) {
            for i in i0..(i0 + T).min(rows) {
                for j in j0..(j0 + T).min(cols) {
                    f(i, j);
                }
            }
        }
    }
}

/// The transpose (`cols × rows`, row-major) of the row-major `rows × cols` matrix `src`,
/// written in order within each block (the reads stride).
pub fn transpose<E: Copy>(src: &[E], rows: usize, cols: usize) -> Vec<E> {
    let Some(&first) = src.first() else {
        return Vec::new();
    };
    let mut t = vec![first; src.len()];
    in_blocks(cols, rows, |j, i| t[j * rows + i] = src[i * cols + j]);
    t
}

/// Every float parameter of a module, flattened in visiting order.
pub fn flatten<B: Backend, M: Module<B>>(module: &M) -> Vec<f64> {
    struct Collect(Vec<f64>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0
                .extend(noisegeom_kernels::read(param.val()).iter::<f64>());
        }
    }
    let mut c = Collect(Vec::with_capacity(module.num_params()));
    module.visit(&mut c);
    c.0
}

/// The parameters of a module as one flat device tensor (no host round trip).
pub fn flatten_device<B: Backend, M: Module<B>>(module: &M) -> Tensor<B, 1> {
    struct Collect<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Collect<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().flatten::<1>(0, D - 1));
        }
    }
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    Tensor::cat(c.0, 0)
}
