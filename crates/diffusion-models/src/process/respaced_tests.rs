//! The respaced chains as processes: their kernels against f64 references computed here from
//! the original kernels, and with every step kept, the original chain.

use burn::tensor::{Device, Tensor};
use diffusion_core::{
    BetaSchedule, BinomialDiffusion, GaussianDiffusion, Respacing, ReverseParametrization,
};

use super::{BinomialBound, GaussianBound, Process, Respaced, affine_map, host, tensor2};
use crate::network::ReverseNetwork;
use crate::sampling::tests::{gaussian, trained};

fn normal(seed: u64, n: usize, d: usize, device: &Device) -> Tensor<2> {
    crate::tensors::normal(&mut diffusion_data::rng(seed, 0), n, d, device)
}

fn binomial(steps: usize) -> BinomialBound {
    BinomialBound {
        diffusion: BinomialDiffusion::new(
            BetaSchedule::Reciprocal.raw_betas(steps).unwrap(),
            0.2,
            10,
        )
        .unwrap(),
        parametrization: ReverseParametrization::Paper,
        respaced: None,
    }
}

/// The shorter chain of `r` as its own diffusion, b'_k = 1 − abar_{s_k} / abar_{s_{k−1}},
/// independently of the process.
fn short_chain(g: &GaussianDiffusion, r: &Respacing) -> GaussianDiffusion {
    let mut prev = 1.0;
    let betas = r
        .kept()
        .iter()
        .map(|&s| {
            let a = g.alpha_bar(s);
            let b = 1.0 - a / prev;
            prev = a;
            b
        })
        .collect();
    GaussianDiffusion::new(betas, g.dim()).unwrap()
}

/// Every parametrization's respaced kernel at every kept step is the shorter chain's posterior
/// mean at the original kernel's x̂_0 = (μ − c_t x) / c_0, with the log-variance at the same
/// fraction of [ln b~'_k, ln b'_k] as the original's of [ln b~_t, ln b_t] (computed here in
/// f64 from the original kernel's output); with a decoder's own coefficients (the
/// noise-predicting form) the same to rounding.
#[test]
fn the_respaced_kernel_is_the_original_one_mapped() {
    let device = Device::flex();
    let steps = 60;
    let r = Respacing::new(steps, vec![1, 4, 5, 17, 30, 60]).unwrap();
    let x = normal(4, 40, 2, &device);
    let xs = host(x.clone());
    for parametrization in [
        ReverseParametrization::Direct,
        ReverseParametrization::Paper,
        ReverseParametrization::Epsilon,
        ReverseParametrization::EpsilonFixed,
    ] {
        let g = gaussian(steps, parametrization);
        let net = trained(g.clone(), 2, steps);
        let process = g.respaced(&r).unwrap();
        let short = short_chain(&g.diffusion, &r);
        let (tables, process_tables) = (g.tables(&device), process.tables(&device));
        for k in 2..=r.kept().len() {
            let t = r.kept()[k - 1];
            let (mean, log_var) = g.mean_log_variance(&net, &tables, x.clone(), t);
            let (got_mean, got_lv) = process.mean_log_variance(&net, &process_tables, x.clone(), k);
            let (c0, ct, post) = g.diffusion.posterior_coefficients(t);
            let (lo, hi) = (post.ln(), g.diffusion.beta(t).ln());
            let (c0s, cts, post_s) = short.posterior_coefficients(k);
            let (los, his) = (post_s.ln(), short.beta(k).ln());
            let kept = r.kept()[k - 2] + 1 == t;
            let rows = host(mean).into_iter().zip(host(log_var)).zip(&xs);
            for (((m, lv), &xv), (gm, glv)) in
                rows.zip(host(got_mean).into_iter().zip(host(got_lv)))
            {
                let (m, lv, xv) = (m as f64, lv as f64, xv as f64);
                let (want_m, want_lv) = if kept {
                    (m, lv)
                } else {
                    let x0 = (m - ct * xv) / c0;
                    let v = (lv - lo) / (hi - lo);
                    (c0s * x0 + cts * xv, los + v * (his - los))
                };
                let tag = format!("{parametrization:?} k = {k}");
                assert!(
                    (gm as f64 - want_m).abs() < 1e-4 * (1.0 + want_m.abs()),
                    "{tag}: {gm} vs {want_m}"
                );
                assert!(
                    (glv as f64 - want_lv).abs() < 1e-4 * (1.0 + want_lv.abs()),
                    "{tag}: {glv} vs {want_lv}"
                );
            }
        }
        batch_rows_take_their_steps_kernels(&process, &net);
        if !parametrization.predicts_noise() {
            continue;
        }
        // the noise-predicting form: the parametrization with the shorter chain's coefficients
        let own = GaussianBound {
            respaced: Some(Respaced {
                network_steps: r.kept().to_vec(),
                mapped_from: None,
            }),
            ..process.clone()
        };
        let own_tables = own.tables(&device);
        for k in 2..=r.kept().len() {
            let (m1, lv1) = process.mean_log_variance(&net, &process_tables, x.clone(), k);
            let (m2, lv2) = own.mean_log_variance(&net, &own_tables, x.clone(), k);
            for (a, b) in host(m1)
                .iter()
                .zip(host(m2))
                .chain(host(lv1).iter().zip(host(lv2)))
            {
                assert!(
                    (a - b).abs() < 2e-4 * (1.0 + a.abs()),
                    "{parametrization:?} k = {k}: {a} vs {b}"
                );
            }
        }
    }
}

/// Keeping every step is the ancestral sampler, draw for draw, for both processes; the maps
/// (taken even where they are skipped) are the identity, and the bound of that chain is the
/// original's, point by point, for the same draws.
#[test]
fn keeping_every_step_is_the_original_chain() {
    let device = Device::flex();
    for parametrization in [
        ReverseParametrization::Direct,
        ReverseParametrization::Paper,
        ReverseParametrization::Epsilon,
    ] {
        let g = gaussian(30, parametrization);
        let net = trained(g.clone(), 2, 30);
        let all = Respacing::even(30, 30).unwrap();
        let process = g.respaced(&all).unwrap();
        for k in 2..=30 {
            let map = affine_map(&g.diffusion, &process.diffusion, all.kept()[k - 1], k);
            for (got, want) in map.iter().zip([1.0, 0.0, 1.0, 0.0]) {
                assert!(
                    (got - want).abs() < 1e-9,
                    "{parametrization:?} k = {k}: {map:?}"
                );
            }
        }
        let draw = |p: &GaussianBound| {
            super::sample(p, &net, 200, &mut diffusion_data::rng(1, 0), &device, 200)
        };
        assert_eq!(draw(&g), draw(&process), "{parametrization:?}");
        same_bound(
            &g,
            &process,
            &net,
            &diffusion_data::SwissRoll::new(0.5)
                .unwrap()
                .stream(3)
                .next_batch(500),
        );
    }
    let b = binomial(40);
    let net = trained(b.clone(), 10, 40);
    let process = b.respaced(&Respacing::even(40, 40).unwrap()).unwrap();
    let draw = |p: &BinomialBound| {
        super::sample(p, &net, 300, &mut diffusion_data::rng(2, 0), &device, 300)
    };
    assert_eq!(draw(&b), draw(&process));
    let beat = diffusion_data::Heartbeat::new(10, 5).unwrap();
    same_bound(
        &b,
        &process,
        &net,
        &beat.stream_with(diffusion_data::rng(1, 0)).next_batch(500),
    );
}

/// The bound of `a` and of `b` for each of `points`, with the same draws, agree to 1e-4 bits.
fn same_bound<P: Process, N: ReverseNetwork>(a: &P, b: &P, net: &N, points: &[f32]) {
    let device = Device::flex();
    let bound = |p: &P| {
        super::bound_bits_per_point(
            p,
            net,
            points,
            &mut diffusion_data::rng(5, 0),
            &device,
            4096,
        )
    };
    for (x, y) in bound(a).iter().zip(bound(b)) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}

/// A binomial respaced kernel is the mixture p̂ q'(1 | x_t, x_0 = 1) + (1 − p̂) q'(1 | x_t,
/// x_0 = 0) of the shorter chain's posteriors, p̂ = (f − q_0) / (q_1 − q_0) clamped to [0, 1]
/// from the original kernel's f at s_k (computed here in f64); the bound's rows of mixed steps
/// take the same kernels as the chain's steps.
#[test]
fn the_binomial_respaced_kernel_mixes_the_shorter_chains_posteriors() {
    let device = Device::flex();
    let b = binomial(40);
    let net = trained(b.clone(), 10, 40);
    let r = Respacing::new(40, vec![1, 2, 9, 10, 25, 40]).unwrap();
    let process = b.respaced(&r).unwrap();
    let (tables, process_tables) = (b.tables(&device), process.tables(&device));
    let n = 30;
    let bits: Vec<f32> = host(normal(6, n, 10, &device))
        .iter()
        .map(|&v| f32::from(v > 0.3))
        .collect();
    let x = tensor2(bits.clone(), n, 10, &device);
    let sigmoid = |l: f64| 1.0 / (1.0 + (-l).exp());
    let mut by_step = Vec::new();
    for k in 2..=r.kept().len() {
        let t = r.kept()[k - 1];
        let f = host(b.logits_at(&net, &tables, &x, t));
        let got = host(process.logits_at(&net, &process_tables, &x, k));
        let kept = r.kept()[k - 2] + 1 == t;
        for (j, (&l, &g)) in f.iter().zip(&got).enumerate() {
            let want = if kept {
                l as f64
            } else {
                let xt = bits[j] as f64;
                let q = |chain: &BinomialDiffusion, step, x0| chain.posterior_one(step, x0, xt);
                let (q1, q0) = (q(&b.diffusion, t, 1.0), q(&b.diffusion, t, 0.0));
                let p_hat = ((sigmoid(l as f64) - q0) / (q1 - q0)).clamp(0.0, 1.0);
                let p = p_hat * q(&process.diffusion, k, 1.0)
                    + (1.0 - p_hat) * q(&process.diffusion, k, 0.0);
                let p = p.clamp(1e-7, 1.0 - 1e-7);
                (p / (1.0 - p)).ln()
            };
            assert!(
                (g as f64 - want).abs() < 2e-3 * (1.0 + want.abs()),
                "k = {k} bit {j}: {g} vs {want}"
            );
        }
        by_step.push(got);
    }
    // a batch whose rows cycle through the steps 2..=K maps each row as its step does
    let ks: Vec<usize> = (0..n).map(|i| 2 + i % (r.kept().len() - 1)).collect();
    // the original kernel of each row at its s_k, then the rows' maps
    let mut raw = vec![0.0f32; n * 10];
    for (i, &k) in ks.iter().enumerate() {
        let l = host(b.logits_at(&net, &tables, &x, r.kept()[k - 1]));
        raw[i * 10..(i + 1) * 10].copy_from_slice(&l[i * 10..(i + 1) * 10]);
    }
    let raw = tensor2(raw, n, 10, &device);
    let mapped = host(process_tables.as_ref().unwrap().map_rows(raw, &x, &ks));
    for (i, &k) in ks.iter().enumerate() {
        for j in 0..10 {
            let want = by_step[k - 2][i * 10 + j];
            let got = mapped[i * 10 + j];
            assert!(
                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                "row {i} (k = {k}) bit {j}: {got} vs {want}"
            );
        }
    }
}

/// The KL terms of a batch of rows at mixed steps of a respaced chain (its bound's path, the
/// kernels mapped per row) against the kernels of its chain's steps, KL computed here in f64.
fn batch_rows_take_their_steps_kernels<N: ReverseNetwork>(process: &GaussianBound, net: &N) {
    let device = Device::flex();
    let tables = process.tables(&device);
    let n = 24;
    let steps = process.steps();
    let ks: Vec<usize> = (0..n).map(|i| 2 + i % (steps - 1)).collect();
    let x0 = host(normal(9, n, 2, &device));
    let rows = process.prepare_rows(&x0, &ks, &mut diffusion_data::rng(3, 0));
    let batch = rows.upload(&tables, &device);
    let (x_t, q_mean, q_var) = (
        batch.x_t.clone(),
        host(batch.posterior_mean.clone()),
        host(batch.posterior_variance.clone()),
    );
    let got = host(process.kl_batch(net, &tables, batch));
    for (i, &k) in ks.iter().enumerate() {
        let (mean, log_var) = process.mean_log_variance(net, &tables, x_t.clone(), k);
        let (mean, log_var) = (host(mean), host(log_var));
        let mut want = 0.0f64;
        for j in i * 2..i * 2 + 2 {
            let (mq, vq) = (q_mean[j] as f64, q_var[i] as f64);
            let (mp, lvp) = (mean[j] as f64, log_var[j] as f64);
            want += 0.5 * (lvp - vq.ln() + (vq + (mq - mp).powi(2)) / lvp.exp() - 1.0);
        }
        assert!(
            (got[i] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
            "row {i} (k = {k}): {} vs {want}",
            got[i]
        );
    }
}

/// A chain that ends in the decoder: noise-predicting runs respace with their own coefficients
/// whatever the kept steps; a mapped chain must keep step 1, whose original kernel is the
/// decoder (else a clear error), and then has that kernel at its step 1.
#[test]
fn a_decoded_chain_keeps_its_decoder() {
    let device = Device::flex();
    let decoder = super::Decoder {
        lowest: vec![-0.5; 2],
        highest: vec![0.5; 2],
        half: vec![0.25; 2],
    };
    let with_decoder = |p| GaussianBound {
        decoder: Some(decoder.clone()),
        ..gaussian(40, p)
    };
    let skips_one = Respacing::new(40, vec![3, 20, 40]).unwrap();
    let keeps_one = Respacing::new(40, vec![1, 20, 40]).unwrap();
    let eps = with_decoder(ReverseParametrization::Epsilon);
    let own = eps.respaced(&skips_one).unwrap();
    assert!(own.respaced.as_ref().unwrap().mapped_from.is_none());
    let paper = with_decoder(ReverseParametrization::Paper);
    let err = paper.respaced(&skips_one).unwrap_err().to_string();
    assert!(err.contains("keeps step 1"), "{err}");
    let mapped = paper.respaced(&keeps_one).unwrap();
    assert_eq!(mapped.first_step(), 1);
    let net = trained(gaussian(40, ReverseParametrization::Paper), 2, 40);
    let x = normal(8, 16, 2, &device);
    let (a, b) = (paper.tables(&device), mapped.tables(&device));
    let (m1, v1) = paper.mean_log_variance(&net, &a, x.clone(), 1);
    let (m2, v2) = mapped.mean_log_variance(&net, &b, x, 1);
    assert_eq!((host(m1), host(v1)), (host(m2), host(v2)));
}
