//! The one place that names a backend: `--backend` to a Burn [`Device`], behind cargo features.

use burn::tensor::Device;
use clap::ValueEnum;

/// The compute backends a build can carry (each a cargo feature of this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (feature `flex`, the default).
    Flex,
    /// The NdArray CPU backend (feature `ndarray`; deprecated upstream).
    Ndarray,
    /// wgpu: Vulkan, Metal or DX12 GPUs (feature `wgpu`).
    Wgpu,
}

impl Backend {
    /// The lower-case name, as on the command line and in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
        }
    }

    /// The backends compiled into this binary, in order of preference.
    pub fn compiled() -> Vec<Backend> {
        let mut v = Vec::new();
        if cfg!(feature = "flex") {
            v.push(Self::Flex);
        }
        if cfg!(feature = "ndarray") {
            v.push(Self::Ndarray);
        }
        if cfg!(feature = "wgpu") {
            v.push(Self::Wgpu);
        }
        v
    }

    /// The backend used when `--backend` is not given.
    pub fn default_compiled() -> Result<Backend, String> {
        Self::compiled()
            .first()
            .copied()
            .ok_or_else(|| "no backend is compiled in; build with --features flex".to_string())
    }

    /// The device of this backend, or an error naming the feature to enable. `adapter` picks a
    /// wgpu adapter by its number in `diffusion devices` (wgpu only).
    pub fn device(self, adapter: Option<usize>) -> Result<Device, String> {
        if adapter.is_some() && self != Self::Wgpu {
            return Err(format!(
                "--device picks a wgpu adapter; backend `{}` has one device",
                self.name()
            ));
        }
        // Unused when every backend is compiled in.
        #[allow(unused_variables)]
        let missing = || -> Result<Device, String> {
            Err(format!(
                "backend `{0}` is not compiled into this binary; rebuild with `--features {0}` \
                 (e.g. `cargo xtask train --backend {0}`)",
                self.name()
            ))
        };
        match self {
            Self::Flex => {
                #[cfg(feature = "flex")]
                return Ok(Device::flex());
                #[cfg(not(feature = "flex"))]
                return missing();
            }
            #[allow(deprecated)]
            Self::Ndarray => {
                #[cfg(feature = "ndarray")]
                return Ok(Device::ndarray());
                #[cfg(not(feature = "ndarray"))]
                return missing();
            }
            Self::Wgpu => {
                #[cfg(feature = "wgpu")]
                return crate::gpu::device(adapter);
                #[cfg(not(feature = "wgpu"))]
                return missing();
            }
        }
    }
}

/// What a backend runs on, for benchmark tables: "CPU", or the wgpu adapter's name and kind
/// (a software driver says so).
pub fn describe(backend: Backend, adapter: Option<usize>) -> String {
    match backend {
        Backend::Flex | Backend::Ndarray => "CPU".into(),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => crate::gpu::describe(adapter),
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu => {
            let _ = adapter;
            "no adapter".into()
        }
    }
}

/// `diffusion devices`: the backends compiled in and, for wgpu, the adapters found.
pub fn list_devices() -> Result<(), String> {
    let all = [Backend::Flex, Backend::Ndarray, Backend::Wgpu];
    let compiled = Backend::compiled();
    println!("backends:");
    for b in all {
        let state = if compiled.contains(&b) {
            "compiled in"
        } else {
            "not compiled in (cargo feature)"
        };
        let what = match b {
            Backend::Flex => "Burn's CPU backend (the default)",
            Backend::Ndarray => "the NdArray CPU backend (deprecated upstream)",
            Backend::Wgpu => "GPUs through Vulkan, Metal or DX12",
        };
        println!("  {:<8} {state}: {what}", b.name());
    }
    #[cfg(feature = "wgpu")]
    {
        let (api, adapters) = crate::gpu::adapters();
        if adapters.is_empty() {
            println!("wgpu adapters: none ({})", crate::gpu::NO_ADAPTER);
        } else {
            println!("wgpu adapters (--backend wgpu --device N):");
            let mut n = 0;
            for a in &adapters {
                let index = if Some(a.api) == api {
                    n += 1;
                    format!("{:>3}", n - 1)
                } else {
                    "  -".to_string()
                };
                println!(
                    "  {index}  {} [{}, {:?}] {}",
                    a.name,
                    a.kind_name(),
                    a.api,
                    a.driver
                );
            }
            if adapters.iter().any(|a| Some(a.api) != api) {
                println!("  (-: on another graphics API than the one runs use)");
            }
        }
    }
    Ok(())
}
