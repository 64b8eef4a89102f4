//! Dense symmetric eigendecompositions through faer (f64).

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

#[cfg(test)]
mod tests {
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
