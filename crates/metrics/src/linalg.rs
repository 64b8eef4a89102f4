//! Dense symmetric eigendecompositions through faer (f64), and products of row sets on
//! host memory through the `gemm` crate (f32 or f64, `noisegeom_kernels::gemm`).

use faer::{Mat, Side};

/// Eigenvalues (descending) and unit eigenvectors of the symmetric n×n matrix `a(i, j)`.
pub fn sym_eig(n: usize, a: impl Fn(usize, usize) -> f64) -> (Vec<f64>, Vec<Vec<f64>>) {
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    let m = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (a(i, j) + a(j, i)));
    let eig = m
        .self_adjoint_eigen(Side::Lower)
        .expect("symmetric eigendecomposition converges");
    let s = eig.S().column_vector();
    let u = eig.U();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| s[y].total_cmp(&s[x]));
    let vals = order.iter().map(|&k| s[k]).collect();
    let vecs = order
        .iter()
        .map(|&k| (0..n).map(|i| u[(i, k)]).collect())
        .collect();
    (vals, vecs)
}

/// Eigenvalues (descending) of the symmetric n×n matrix `a(i, j)`.
pub fn sym_eigvals(n: usize, a: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let m = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (a(i, j) + a(j, i)));
    let mut v = m
        .self_adjoint_eigenvalues(Side::Lower)
        .expect("symmetric eigenvalues converge");
    v.sort_by(|x, y| y.total_cmp(x));
    v
}

pub use noisegeom_kernels::gemm::GemmElem;
use noisegeom_kernels::gemm::{MatRef, Threads, gemm};

/// `out[i·n + j] = Σ_l a[i·k + l]·b[j·k + l]`: the dot products of the m rows of `a` with the
/// n rows of `b`, both `[·, k]` row-major, written into the caller's `out` (`[m, n]`
/// row-major, m = a.len()/k, n = b.len()/k), by the GEMM kernels burn-flex calls
/// ([`noisegeom_kernels::gemm::gemm`]). Writing into a reused buffer is the point: burn-flex's
/// matmul zero-fills every fresh output and then copies it once more to align it, about a
/// fifth of a [512, 512]·[512, 5120] product's time here.
///
/// # Panics
/// If `k` is zero or a length is not a multiple of it, or `out.len()` is not m·n.
pub fn row_products<E: GemmElem>(a: &[E], b: &[E], k: usize, out: &mut [E]) {
    assert!(
        k > 0 && a.len().is_multiple_of(k) && b.len().is_multiple_of(k),
        "rows of length {k}"
    );
    let (m, n) = (a.len() / k, b.len() / k);
    gemm(
        out,
        MatRef::rows(a, m, k),
        MatRef::transposed(b, k, n),
        false,
        Threads::Auto,
    );
}

#[cfg(test)]
mod tests {
    /// The shapes row_products reads from the lengths, on a product by hand (the GEMM
    /// itself is tested in `noisegeom_kernels::gemm`): rows (1, 2) and (3, 4) against rows
    /// (1, 0), (0, 1) and (1, 1).
    #[test]
    fn row_products_are_the_dot_products_of_the_rows() {
        let mut out = [0.0f64; 6];
        super::row_products(
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            2,
            &mut out,
        );
        assert_eq!(out, [1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
    }

    #[test]
    fn two_by_two() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1 with eigenvectors (1, 1)/√2, (1, −1)/√2.
        let a = [[2.0, 1.0], [1.0, 2.0]];
        let (vals, vecs) = super::sym_eig(2, |i, j| a[i][j]);
        assert!((vals[0] - 3.0).abs() < 1e-14 && (vals[1] - 1.0).abs() < 1e-14);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vecs[0][0].abs() - h).abs() < 1e-14 && (vecs[0][0] - vecs[0][1]).abs() < 1e-14);
        assert_eq!(super::sym_eigvals(2, |i, j| a[i][j]).len(), 2);
    }
}
