//! The fused diagonal Gaussian KL against `diffusion_core::kl_diag_gaussian` (Burn's composition
//! of the same formula): values and all five inputs' gradients, with
//! the posterior's variance per row and per coordinate, on one thread and split across the
//! pool, log-variances far outside exp's polynomial domain included.

use burn::tensor::{Device, Distribution, Tensor};
use diffusion_core::kl_diag_gaussian as composed;
use diffusion_kernels::{fused_here, kl_diag_gaussian};

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().try_to_vec::<f32>().unwrap()
}

/// a = b or |a - b| <= tol (1 + |b|), element by element.
fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        // equal (infinities of one sign included) or close
        assert!(
            x == y || (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what} [{i}]: {x} vs {y}"
        );
    }
}

fn check(n: usize, d: usize, qd: usize) {
    let device = Device::flex().autodiff();
    let normal = |shape: [usize; 2], scale: f64| {
        Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device) * scale
    };
    let var_q = normal([n, qd], 1.0).exp() * 0.1;
    let logvar_q = var_q.clone().log();
    let mut logvar_p = normal([n, d], 2.0);
    if n > 4 {
        // past exp's polynomial domain on both sides, and at its edges
        let edges =
            Tensor::<2>::from_floats([[-80.0], [95.0], [87.0], [-88.2]], &device).repeat_dim(1, d);
        logvar_p = logvar_p.slice_assign([0..4, 0..d], edges);
    }
    let inputs = [
        normal([n, d], 1.0),
        var_q,
        logvar_q,
        normal([n, d], 1.0),
        logvar_p,
    ];
    let weights = normal([n, 1], 1.0).squeeze_dim::<1>(1);
    let run = |fused: bool| {
        let t = inputs.clone().map(|t| t.detach().require_grad());
        assert!(fused_here(&t[0]));
        let [a, b, c, e, f] = t.clone();
        let kl = if fused {
            kl_diag_gaussian(a, b, c, e, f)
        } else {
            composed(a, b, c, e, f)
        };
        let grads = (kl.clone() * weights.clone()).sum().backward();
        let gs: Vec<Vec<f32>> = t.iter().map(|t| values(&t.grad(&grads).unwrap())).collect();
        (values(&kl), gs)
    };
    let ((kl_f, g_f), (kl_b, g_b)) = (run(true), run(false));
    let label = format!("n {n} d {d} qd {qd}");
    close(&kl_f, &kl_b, 1e-5, &format!("KL, {label}"));
    for (i, name) in ["mu_q", "var_q", "logvar_q", "mu_p", "logvar_p"]
        .iter()
        .enumerate()
    {
        close(&g_f[i], &g_b[i], 1e-5, &format!("d/d{name}, {label}"));
    }
}

#[test]
fn the_fused_kl_matches_burns_composition_in_value_and_every_gradient() {
    for (n, d) in [(3, 1), (37, 2), (20_000, 2), (500, 5)] {
        check(n, d, 1);
        check(n, d, d);
    }
}

/// Without autodiff, and with only the network's side tracked, as the bound uses it.
#[test]
fn untracked_inputs_and_the_plain_device() {
    let device = Device::flex();
    let t = |seed: f32| Tensor::<2>::from_floats([[0.5 * seed, -1.0], [2.0, 0.25 * seed]], &device);
    let var_q = Tensor::<2>::from_floats([[0.3], [0.05]], &device);
    let fused = kl_diag_gaussian(t(1.0), var_q.clone(), var_q.clone().log(), t(-2.0), t(0.5));
    let want = composed(t(1.0), var_q.clone(), var_q.log(), t(-2.0), t(0.5));
    close(&values(&fused), &values(&want), 1e-6, "plain device");
    // the closed form by hand for row 0: mu_q (0.5, -1), mu_p (-1, -1), logvar_p (0.25, -1)
    let row0: f64 = [(0.5f64, -1.0f64, 0.25f64), (-1.0, -1.0, -1.0)]
        .iter()
        .map(|&(mq, mp, lvp)| {
            0.5 * (lvp - 0.3f64.ln() + (0.3 + (mq - mp).powi(2)) * (-lvp).exp() - 1.0)
        })
        .sum();
    assert!(
        (values(&fused)[0] as f64 - row0).abs() < 1e-5,
        "{} vs {row0}",
        values(&fused)[0]
    );
}
