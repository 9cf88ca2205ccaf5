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

    /// The device of this backend, or an error naming the feature to enable.
    pub fn device(self) -> Result<Device, String> {
        let missing = || {
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
                return Ok(Device::wgpu(Default::default()));
                #[cfg(not(feature = "wgpu"))]
                return missing();
            }
        }
    }
}
