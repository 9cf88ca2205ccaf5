//! DDIM against golden numbers from an independent NumPy transcription of diffusers'
//! `DDIMScheduler` (`scripts/golden/ddim.py`, which wrote `ddim_golden.json`): the timesteps of
//! every spacing and the x_0 a dummy model reaches, for both prediction types, clipping,
//! `set_alpha_to_one` and eta in {0, 0.5, 1}.

use diffusion_core::{Ddim, PredictionType, TimestepSpacing};

#[test]
fn ddim_matches_the_numpy_reference() {
    let golden: serde_json::Value = serde_json::from_str(include_str!("ddim_golden.json")).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let alphas_cumprod = floats(&golden["alphas_cumprod"]);
    let t_len = alphas_cumprod.len() as f64;
    let x_t = floats(&golden["x_T"]);
    for case in golden["cases"].as_array().unwrap() {
        let ddim = Ddim {
            alphas_cumprod: alphas_cumprod.clone(),
            steps: case["steps"].as_u64().unwrap() as usize,
            eta: case["eta"].as_f64().unwrap(),
            timestep_spacing: serde_json::from_value::<TimestepSpacing>(
                case["timestep_spacing"].clone(),
            )
            .unwrap(),
            clip_sample: case["clip_sample"].as_bool().unwrap(),
            clip_sample_range: case["clip_sample_range"].as_f64().unwrap(),
            set_alpha_to_one: case["set_alpha_to_one"].as_bool().unwrap(),
            prediction_type: serde_json::from_value::<PredictionType>(
                case["prediction_type"].clone(),
            )
            .unwrap(),
        };
        let want_ts: Vec<usize> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(ddim.timesteps(), want_ts, "{case}");
        let model = |x: &[f64], t: usize| -> Vec<f64> {
            x.iter()
                .map(|&v| v.sin() * (t as f64 + 1.0) / t_len + 0.1 * v)
                .collect()
        };
        let noise = |k: usize| -> Vec<f64> {
            (0..x_t.len())
                .map(|i| (1.3 * k as f64 + 0.7 * i as f64).cos())
                .collect()
        };
        let got = ddim.sample(x_t.clone(), model, noise);
        for (g, w) in got.iter().zip(floats(&case["x_0"])) {
            assert!((g - w).abs() < 1e-12, "{case}: {g} vs {w}");
        }
    }
}
