//! The wgpu backend's adapters: which graphics API and adapter a run gets, found before Burn is
//! asked for a device, so a machine without a usable driver gets one clear line in a moment
//! instead of a runtime that waits on a GPU that is not there.
//!
//! The APIs tried are Vulkan, Metal and DX12, in that order (the first with a GPU, else the
//! first with any adapter, as Burn's own automatic choice does). OpenGL is left out: wgpu's GL
//! backend serves compute poorly and, without a Vulkan driver, Mesa's EGL made Burn's runtime
//! fail with "Could not lock adapter context" and hang.

use burn::tensor::wgpu::{WgpuBackend, wgpu};
use burn::tensor::{Device, DeviceKind};

/// What to install when no adapter is found (one line).
pub const NO_ADAPTER: &str = "the wgpu backend found no GPU adapter (it needs a Vulkan, Metal or \
    DX12 driver): on Linux install your GPU vendor's Vulkan driver, or `apt-get install \
    mesa-vulkan-drivers` for a software one (slow); on macOS Metal is built in; on Windows \
    update the GPU driver; or use --backend flex";

/// One adapter as wgpu reports it.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The adapter's name, e.g. "NVIDIA H200" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Discrete, integrated, virtual, CPU (a software driver) or other.
    pub kind: wgpu::DeviceType,
    /// The driver and its version.
    pub driver: String,
    /// The graphics API it was found on.
    pub api: wgpu::Backend,
    /// Its index among the adapters of its kind on its API (how Burn addresses it).
    kind_index: usize,
}

impl Adapter {
    /// "discrete GPU", "CPU (software driver)", ...
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            wgpu::DeviceType::DiscreteGpu => "discrete GPU",
            wgpu::DeviceType::IntegratedGpu => "integrated GPU",
            wgpu::DeviceType::VirtualGpu => "virtual GPU",
            wgpu::DeviceType::Cpu => "CPU (software driver)",
            wgpu::DeviceType::Other => "other",
        }
    }

    fn device_kind(&self) -> Result<DeviceKind, String> {
        Ok(match self.kind {
            wgpu::DeviceType::DiscreteGpu => DeviceKind::DiscreteGpu(self.kind_index),
            wgpu::DeviceType::IntegratedGpu => DeviceKind::IntegratedGpu(self.kind_index),
            wgpu::DeviceType::VirtualGpu => DeviceKind::VirtualGpu(self.kind_index),
            wgpu::DeviceType::Cpu if self.kind_index == 0 => DeviceKind::Cpu,
            _ => {
                return Err(format!(
                    "adapter {:?} ({}) cannot be selected by Burn; pick another --device",
                    self.name,
                    self.kind_name()
                ));
            }
        })
    }
}

/// The APIs tried, best first, of those this build of wgpu has.
fn candidates() -> Vec<wgpu::Backend> {
    [
        wgpu::Backend::Vulkan,
        wgpu::Backend::Metal,
        wgpu::Backend::Dx12,
    ]
    .into_iter()
    .filter(|api| wgpu::Instance::enabled_backend_features().contains((*api).into()))
    .collect()
}

/// The adapters of one API.
fn probe(api: wgpu::Backend) -> Vec<Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let mut per_kind = std::collections::HashMap::new();
    block_on(instance.enumerate_adapters(api.into()))
        .iter()
        .map(|a| {
            let info = a.get_info();
            let index = per_kind.entry(info.device_type).or_insert(0usize);
            let adapter = Adapter {
                name: info.name.clone(),
                kind: info.device_type,
                driver: format!("{} {}", info.driver, info.driver_info)
                    .trim()
                    .to_string(),
                api,
                kind_index: *index,
            };
            *index += 1;
            adapter
        })
        .collect()
}

/// Every API's adapters, and the API a run uses: the first with a GPU, else the first with any.
pub fn adapters() -> (Option<wgpu::Backend>, Vec<Adapter>) {
    let found: Vec<(wgpu::Backend, Vec<Adapter>)> = candidates()
        .into_iter()
        .map(|api| (api, probe(api)))
        .collect();
    let gpu = found
        .iter()
        .find(|(_, a)| a.iter().any(|a| a.kind != wgpu::DeviceType::Cpu));
    let chosen = gpu
        .or_else(|| found.iter().find(|(_, a)| !a.is_empty()))
        .map(|(api, _)| *api);
    (chosen, found.into_iter().flat_map(|(_, a)| a).collect())
}

/// The adapters a run can be given, numbered as `--device` numbers them: those of the API
/// [`adapters`] chooses.
pub fn usable() -> Vec<Adapter> {
    let (api, all) = adapters();
    all.into_iter().filter(|a| Some(a.api) == api).collect()
}

/// The adapter a run on `--device index` gets, as "name (kind)": that one, or with none the
/// first that is not a software driver (Burn's default device prefers a real GPU).
pub fn describe(index: Option<usize>) -> String {
    let usable = usable();
    let chosen = match index {
        Some(i) => usable.get(i),
        None => usable
            .iter()
            .find(|a| a.kind != wgpu::DeviceType::Cpu)
            .or(usable.first()),
    };
    chosen.map_or_else(
        || "no adapter".into(),
        |a| format!("{} ({})", a.name, a.kind_name()),
    )
}

/// The Burn device on adapter `index` of [`usable`] (none: the API's best adapter), or one line
/// saying why there is none.
pub fn device(index: Option<usize>) -> Result<Device, String> {
    let usable = usable();
    let Some(first) = usable.first() else {
        return Err(NO_ADAPTER.into());
    };
    let api = match first.api {
        wgpu::Backend::Metal => WgpuBackend::Metal,
        wgpu::Backend::Dx12 => WgpuBackend::Dx12,
        _ => WgpuBackend::Vulkan,
    };
    let kind = match index {
        None => DeviceKind::DefaultDevice,
        Some(i) => usable
            .get(i)
            .ok_or_else(|| {
                format!(
                    "--device {i}: there are {} wgpu adapter(s), numbered from 0 (see `diffusion devices`)",
                    usable.len()
                )
            })?
            .device_kind()?,
    };
    Device::wgpu_options()
        .graphics_api(api)
        .device_kind(kind)
        .init()
        .map_err(|e| {
            let e = e.to_string();
            format!(
                "the wgpu adapter could not be opened: {}",
                e.lines().next().unwrap_or_default()
            )
        })
}

/// Runs a future to completion on this thread (wgpu's native futures are ready at once).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
