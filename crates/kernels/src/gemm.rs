//! Matrix products on host memory through the `gemm` crate, the kernels under burn-flex,
//! called directly: into a caller's buffer (burn-flex's matmul zero-fills every fresh output
//! and then copies it once more to align it), on strided views (a transpose is a stride
//! swap), and optionally accumulating. This is the workspace's one GEMM call, and one of
//! its two exceptions to `unsafe_code = "deny"`.

/// The element types of [`gemm()`]: f32 and f64.
pub trait GemmElem: Copy + Default + Send + Sync + core::fmt::Debug + 'static {
    const ZERO: Self;
    const ONE: Self;
}
impl GemmElem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}
impl GemmElem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// A read-only `rows × cols` matrix view: element (i, j) at `data[i·row_stride +
/// j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, E> {
    data: &'a [E],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, E> MatRef<'a, E> {
    /// A `rows × cols` view with the given strides.
    ///
    /// # Panics
    /// If the last element, `(rows − 1)·row_stride + (cols − 1)·col_stride`, lies outside
    /// `data` (for a non-empty view).
    pub fn new(
        data: &'a [E],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(
                last < data.len(),
                "a [{rows}, {cols}] view with strides ({row_stride}, {col_stride}) needs {} elements, has {}",
                last + 1,
                data.len()
            );
        }
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// The row-major `[rows, cols]` matrix held in `data`.
    pub fn rows(data: &'a [E], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose of the row-major `[cols, rows]` matrix held in `data`: a `[rows, cols]`
    /// view.
    pub fn transposed(data: &'a [E], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, 1, rows)
    }

    /// This view's transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// Below this many multiply-adds (m·n·k) one thread does the product (burn-flex's threshold).
const PARALLEL_MIN: usize = 192 * 192 * 192;

/// How many threads a product may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// rayon's pool above a size threshold (burn-flex's), one thread below it.
    Auto,
    /// The calling thread only (the caller runs products in parallel itself).
    One,
}

/// `dst = a·b`, or `dst += a·b` when `accumulate`, with `dst` the row-major `[a.rows,
/// b.cols]` matrix in `dst`.
///
/// # Panics
/// If the inner dimensions differ or `dst.len()` is not `a.rows·b.cols`.
pub fn gemm<E: GemmElem>(
    dst: &mut [E],
    a: MatRef<E>,
    b: MatRef<E>,
    accumulate: bool,
    threads: Threads,
) {
    assert_eq!(
        a.cols, b.rows,
        "inner dimensions of [{}, {}]·[{}, {}]",
        a.rows, a.cols, b.rows, b.cols
    );
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert_eq!(dst.len(), m * n, "output [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(E::ZERO);
        }
        return;
    }
    let par = if threads == Threads::Auto && m * n * k >= PARALLEL_MIN {
        ::gemm::Parallelism::Rayon(0)
    } else {
        ::gemm::Parallelism::None
    };
    let s = |x: usize| isize::try_from(x).expect("a stride fits isize");
    #[allow(unsafe_code)]
    // SAFETY: `gemm` reads lhs(i, l) at a.data[i·a.row_stride + l·a.col_stride] (i < m,
    // l < k) and rhs(l, j) at b.data[l·b.row_stride + j·b.col_stride] (j < n): inside their
    // slices, as `MatRef::new` checked for the last element and strides are non-negative.
    // It writes (and with read_dst reads) dst(i, j) at dst[i·n + j] < m·n = dst.len().
    // `dst` is exclusively borrowed, so it aliases neither input. E is f32 or f64, which
    // `gemm` supports.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(n),
            accumulate,
            a.data.as_ptr(),
            s(a.col_stride),
            s(a.row_stride),
            b.data.as_ptr(),
            s(b.col_stride),
            s(b.row_stride),
            E::ONE,
            E::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stride layout and both modes against sums written out, in f32 and f64, on a
    /// single-threaded and a threaded size, with ragged shapes.
    #[test]
    fn gemm_matches_sums_written_out() {
        fn check<E: GemmElem + Into<f64>>(m: usize, n: usize, k: usize, of: fn(f64) -> E) {
            let a: Vec<E> = (0..m * k)
                .map(|x| of(((x * 37 % 101) as f64 - 50.0) / 16.0))
                .collect();
            let b: Vec<E> = (0..n * k)
                .map(|x| of(((x * 53 % 97) as f64 - 48.0) / 8.0))
                .collect();
            let start: Vec<E> = (0..m * n).map(|x| of((x % 7) as f64 - 3.0)).collect();
            // a as [m, k] row-major or as the transpose of [k, m]; the same for b.
            let a_at = |t: bool, i: usize, l: usize| if t { a[l * m + i] } else { a[i * k + l] };
            let b_at = |t: bool, l: usize, j: usize| if t { b[j * k + l] } else { b[l * n + j] };
            for (ta, tb, acc) in [
                (false, false, false),
                (true, false, true),
                (false, true, false),
                (true, true, true),
            ] {
                let av = if ta {
                    MatRef::transposed(&a, m, k)
                } else {
                    MatRef::rows(&a, m, k)
                };
                let bv = if tb {
                    MatRef::transposed(&b, k, n)
                } else {
                    MatRef::rows(&b, k, n)
                };
                let mut out = start.clone();
                gemm(&mut out, av, bv, acc, Threads::Auto);
                for i in 0..m {
                    for j in 0..n {
                        let mut want: f64 = if acc { start[i * n + j].into() } else { 0.0 };
                        for l in 0..k {
                            want += a_at(ta, i, l).into() * b_at(tb, l, j).into();
                        }
                        let got: f64 = out[i * n + j].into();
                        // Multiples of 1/128 below 2¹⁶ in magnitude: every partial sum is exact
                        // in f32 too, whatever the summation order.
                        assert!(
                            got == want,
                            "[{m}, {k}]·[{k}, {n}] ({ta}, {tb}, {acc}) at ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
        check::<f64>(3, 5, 7, |x| x);
        check::<f32>(3, 5, 7, |x| x as f32);
        check::<f64>(200, 190, 210, |x| x);
        check::<f32>(17, 300, 250, |x| x as f32);
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn a_view_past_its_slice_panics() {
        let v = [0.0f32; 5];
        let _ = MatRef::rows(&v, 2, 3);
    }
}
