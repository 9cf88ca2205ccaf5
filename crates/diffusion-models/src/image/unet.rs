//! The U-Net of improved diffusion (Nichol and Dhariwal 2021, `unet.py`), sized for small images.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};
use diffusion_data::ImageShape;
use serde::{Deserialize, Serialize};

use super::{
    ImageConfigError, conv, conv_plus, norm, norm_conv_plus, one_step, repeat2, step_column,
    to_images, to_rows,
};
use crate::network::ReverseNetwork;
use diffusion_kernels::{ConvPlus, attention, concat_channels};

/// The most channels at any level.
const MAX_CHANNELS: usize = 1 << 14;
/// The most residual blocks a level.
const MAX_BLOCKS: usize = 64;

/// The shape of a [`Unet`] (the `[model.unet]` table of a config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    /// Channels at full resolution (improved diffusion's `model_channels`); also the width of
    /// the sinusoidal embedding of t, which a two-layer MLP maps to `4 * channels`.
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Channel multiplier per resolution, the first at full resolution; each further entry
    /// halves the resolution (the image's height and width must divide by 2 that many times).
    #[serde(default = "default_mult")]
    pub channel_mult: Vec<usize>,
    /// Residual blocks per resolution on the way down (one more on the way up).
    #[serde(default = "default_res_blocks")]
    pub res_blocks: usize,
    /// Self-attention after the residual blocks at these resolutions (image heights in pixels,
    /// e.g. 7 for 28x28 images with three levels); always in the middle block.
    #[serde(default = "default_attention")]
    pub attention_resolutions: Vec<usize>,
    /// GroupNorm groups (every block's channels must divide by it).
    #[serde(default = "default_groups")]
    pub groups: usize,
    /// Attention heads (the channels where attention runs must divide by it).
    #[serde(default = "default_heads")]
    pub heads: usize,
}

fn default_channels() -> usize {
    32
}
fn default_mult() -> Vec<usize> {
    vec![1, 2, 2]
}
fn default_res_blocks() -> usize {
    1
}
fn default_attention() -> Vec<usize> {
    vec![7]
}
fn default_groups() -> usize {
    8
}
fn default_heads() -> usize {
    1
}

impl Default for UnetConfig {
    fn default() -> Self {
        Self {
            channels: default_channels(),
            channel_mult: default_mult(),
            res_blocks: default_res_blocks(),
            attention_resolutions: default_attention(),
            groups: default_groups(),
            heads: default_heads(),
        }
    }
}

/// One step of the network's plan, shared by [`UnetConfig::init`] and
/// [`UnetConfig::parameter_count`] so that the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A residual block from `in` to `out` channels, with attention after it when `attention`.
    Res {
        input: usize,
        output: usize,
        attention: bool,
    },
    /// A stride-2 3x3 convolution (`channels` in and out).
    Down(usize),
    /// Nearest upsampling by 2 and a 3x3 convolution.
    Up(usize),
}

/// The plan: (down path parts, middle channels, up path parts per level with the last part's
/// upsampling).
struct Plan {
    down: Vec<Vec<Part>>,
    middle: usize,
    up: Vec<Vec<Part>>,
}

impl UnetConfig {
    /// Checks the config against an image shape and output channel count.
    pub fn check(&self, shape: ImageShape) -> Result<(), ImageConfigError> {
        let fail = |m: String| Err(ImageConfigError(format!("model.unet: {m}")));
        if self.channels == 0 || self.groups == 0 || self.heads == 0 {
            return fail("channels, groups and heads must be at least 1".into());
        }
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return fail("channel_mult must be a non-empty list of positive multipliers".into());
        }
        if self.res_blocks == 0 {
            return fail("res_blocks must be at least 1".into());
        }
        let halvings = self.channel_mult.len() - 1;
        let scale = 1usize << halvings.min(20);
        if !shape.height.is_multiple_of(scale)
            || !shape.width.is_multiple_of(scale)
            || halvings > 20
        {
            return fail(format!(
                "{} levels halve the image {halvings} times, but {}x{} pixels do not divide by {scale}",
                self.channel_mult.len(),
                shape.height,
                shape.width
            ));
        }
        let resolutions: Vec<usize> = (0..=halvings).map(|l| shape.height >> l).collect();
        if let Some(r) = self
            .attention_resolutions
            .iter()
            .find(|r| !resolutions.contains(r))
        {
            return fail(format!(
                "attention at resolution {r}, but the levels have heights {resolutions:?}"
            ));
        }
        if self.channels > MAX_CHANNELS
            || self.channel_mult.iter().any(|&m| m > MAX_CHANNELS)
            || self.res_blocks > MAX_BLOCKS
            || self.channels * self.channel_mult.iter().max().copied().unwrap_or(1) > MAX_CHANNELS
        {
            return fail(format!(
                "at most {MAX_CHANNELS} channels a level and {MAX_BLOCKS} residual blocks"
            ));
        }
        for m in &self.channel_mult {
            let c = self.channels * m;
            if !c.is_multiple_of(self.groups) {
                return fail(format!(
                    "{c} channels do not divide into {} groups",
                    self.groups
                ));
            }
            if !c.is_multiple_of(self.heads) {
                return fail(format!(
                    "{c} channels do not divide into {} heads",
                    self.heads
                ));
            }
        }
        Ok(())
    }

    fn plan(&self, height: usize) -> Plan {
        let mc = self.channels;
        let mut ch = mc;
        let mut skips = vec![ch];
        let mut down = Vec::new();
        let levels = self.channel_mult.len();
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            let attention = self.attention_resolutions.contains(&(height >> level));
            let mut parts = Vec::new();
            for _ in 0..self.res_blocks {
                parts.push(Part::Res {
                    input: ch,
                    output: mc * mult,
                    attention,
                });
                ch = mc * mult;
                skips.push(ch);
            }
            if level + 1 < levels {
                parts.push(Part::Down(ch));
                skips.push(ch);
            }
            down.push(parts);
        }
        let middle = ch;
        let mut up = Vec::new();
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            let attention = self.attention_resolutions.contains(&(height >> level));
            let mut parts = Vec::new();
            for _ in 0..=self.res_blocks {
                let skip = skips.pop().expect("one skip per block");
                parts.push(Part::Res {
                    input: ch + skip,
                    output: mc * mult,
                    attention,
                });
                ch = mc * mult;
            }
            if level > 0 {
                parts.push(Part::Up(ch));
            }
            up.push(parts);
        }
        Plan { down, middle, up }
    }

    /// The number of parameters of [`init`](Self::init)'s network, without building it.
    pub fn parameter_count(&self, shape: ImageShape, dim_out: usize) -> u128 {
        let conv = |i: usize, o: usize, k: usize| {
            let (i, o, k) = (i as u128, o as u128, k as u128);
            i * o * k * k + o
        };
        let norm = |c: usize| 2 * c as u128;
        let linear = |i: usize, o: usize| (i as u128) * (o as u128) + o as u128;
        let mc = self.channels;
        let emb = 4 * mc;
        let res = |i: usize, o: usize, attention: bool| {
            norm(i)
                + conv(i, o, 3)
                + linear(emb, o)
                + norm(o)
                + conv(o, o, 3)
                + if i != o { conv(i, o, 1) } else { 0 }
                + if attention {
                    norm(o) + conv(o, 3 * o, 1) + conv(o, o, 1)
                } else {
                    0
                }
        };
        let part = |p: &Part| match *p {
            Part::Res {
                input,
                output,
                attention,
            } => res(input, output, attention),
            Part::Down(c) | Part::Up(c) => conv(c, c, 3),
        };
        let plan = self.plan(shape.height);
        let out_channels = dim_out / (shape.height * shape.width);
        linear(mc, emb)
            + linear(emb, emb)
            + conv(shape.channels, mc, 3)
            + plan.down.iter().flatten().map(part).sum::<u128>()
            + res(plan.middle, plan.middle, true)
            + res(plan.middle, plan.middle, false)
            + plan.up.iter().flatten().map(part).sum::<u128>()
            + norm(mc)
            + conv(mc, out_channels, 3)
    }

    /// A U-Net from images of `shape` to `dim_out` values per row (`dim_out / (h w)` output
    /// channels), its last convolution and each residual block's second one starting at zero (so
    /// each block starts as the identity, and the untrained network outputs zero).
    pub fn init(&self, shape: ImageShape, dim_out: usize, device: &Device) -> Unet {
        let mc = self.channels;
        let emb = 4 * mc;
        let plan = self.plan(shape.height);
        let groups = self.groups;
        let heads = self.heads;
        let build = |p: &Part| match *p {
            Part::Res {
                input,
                output,
                attention,
            } => Block::Res(ResAttention {
                res: ResBlock::new(input, output, emb, groups, device),
                attention: attention.then(|| Attention::new(output, groups, heads, device)),
            }),
            Part::Down(c) => Block::Down(
                Conv2dConfig::new([c, c], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            ),
            Part::Up(c) => Block::Up(conv3(c, c, false, device)),
        };
        let time = TimeEmbedding {
            first: LinearConfig::new(mc, emb).init(device),
            second: LinearConfig::new(emb, emb).init(device),
            width: mc,
        };
        let input = conv3(shape.channels, mc, false, device);
        let down = plan.down.iter().flatten().map(build).collect();
        let middle = vec![
            ResAttention {
                res: ResBlock::new(plan.middle, plan.middle, emb, groups, device),
                attention: Some(Attention::new(plan.middle, groups, heads, device)),
            },
            ResAttention {
                res: ResBlock::new(plan.middle, plan.middle, emb, groups, device),
                attention: None,
            },
        ];
        let up = plan.up.iter().flatten().map(build).collect();
        let out_channels = dim_out / (shape.height * shape.width);
        Unet {
            time,
            input,
            down,
            middle,
            up,
            out_norm: GroupNormConfig::new(groups, mc).init(device),
            output: conv3(mc, out_channels, true, device),
            shape,
        }
    }
}

/// A 3x3 convolution keeping the size, optionally starting at zero.
fn conv3(input: usize, output: usize, zero: bool, device: &Device) -> Conv2d {
    let config = Conv2dConfig::new([input, output], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1));
    if zero {
        config.with_initializer(Initializer::Zeros).init(device)
    } else {
        config.init(device)
    }
}

/// A 1x1 convolution, optionally starting at zero.
fn conv1(input: usize, output: usize, zero: bool, device: &Device) -> Conv2d {
    let config = Conv2dConfig::new([input, output], [1, 1]);
    if zero {
        config.with_initializer(Initializer::Zeros).init(device)
    } else {
        config.init(device)
    }
}

/// Sinusoidal features of t (improved diffusion's `timestep_embedding`, max period 10,000)
/// through Linear, SiLU, Linear.
#[derive(Module, Debug)]
struct TimeEmbedding {
    first: Linear,
    second: Linear,
    #[module(skip)]
    width: usize,
}

impl TimeEmbedding {
    /// `[n, 1]` steps to `[n, 4 channels]`.
    fn forward(&self, t: Tensor<2>) -> Tensor<2> {
        let half = self.width / 2;
        let device = t.device();
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32)
            .collect();
        let freqs = Tensor::<1>::from_floats(freqs.as_slice(), &device).reshape([1, half]);
        let angles = t * freqs;
        let mut features = vec![angles.clone().cos(), angles.sin()];
        if self.width % 2 == 1 {
            let n = features[0].dims()[0];
            features.push(Tensor::zeros([n, 1], &device));
        }
        let h = self.first.forward(Tensor::cat(features, 1));
        self.second.forward(silu(h))
    }
}

/// GroupNorm, SiLU, 3x3 convolution; plus the embedding of t; GroupNorm, SiLU, 3x3 convolution
/// (starting at zero); plus the input (through a 1x1 convolution when the width changes).
#[derive(Module, Debug)]
struct ResBlock {
    norm_in: GroupNorm,
    conv_in: Conv2d,
    time: Linear,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    fn new(input: usize, output: usize, emb: usize, groups: usize, device: &Device) -> Self {
        Self {
            norm_in: GroupNormConfig::new(groups, input).init(device),
            conv_in: conv3(input, output, false, device),
            time: LinearConfig::new(emb, output).init(device),
            norm_out: GroupNormConfig::new(groups, output).init(device),
            conv_out: conv3(output, output, true, device),
            skip: (input != output).then(|| conv1(input, output, false, device)),
        }
    }

    fn forward(&self, x: Tensor<4>, emb: &Tensor<2>) -> Tensor<4> {
        // the embedding of t as a shift of conv_in's output, the input as conv_out's
        // residual: both added where the outputs start
        let shift = ConvPlus::Shift(self.time.forward(silu(emb.clone())));
        let h = norm_conv_plus((&self.norm_in, true), &self.conv_in, x.clone(), shift);
        let residual = match &self.skip {
            Some(skip) => conv(skip, x),
            None => x,
        };
        let residual = ConvPlus::Residual(residual);
        norm_conv_plus((&self.norm_out, true), &self.conv_out, h, residual)
    }
}

/// Self-attention over the pixels: GroupNorm, a 1x1 convolution to q, k, v, softmax(q^T k /
/// sqrt(c / heads)) per head, a 1x1 convolution out (starting at zero), plus the input.
#[derive(Module, Debug)]
struct Attention {
    norm: GroupNorm,
    qkv: Conv2d,
    out: Conv2d,
    #[module(skip)]
    heads: usize,
}

impl Attention {
    fn new(channels: usize, groups: usize, heads: usize, device: &Device) -> Self {
        Self {
            norm: GroupNormConfig::new(groups, channels).init(device),
            qkv: conv1(channels, 3 * channels, false, device),
            out: conv1(channels, channels, true, device),
            heads,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = x.dims();
        let per_head = c / self.heads;
        let qkv = conv(&self.qkv, norm(&self.norm, x.clone(), false)).reshape([
            n * self.heads,
            3 * per_head,
            h * w,
        ]);
        let a = attention(qkv).reshape([n, c, h, w]);
        conv_plus(&self.out, a, ConvPlus::Residual(x))
    }
}

/// A residual block, with attention after it at the resolutions that have it.
#[derive(Module, Debug)]
struct ResAttention {
    res: ResBlock,
    attention: Option<Attention>,
}

impl ResAttention {
    fn forward(&self, x: Tensor<4>, emb: &Tensor<2>) -> Tensor<4> {
        let h = self.res.forward(x, emb);
        match &self.attention {
            Some(a) => a.forward(h),
            None => h,
        }
    }
}

/// One block of the down or up path (a module built once: the variants' sizes do not matter).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
enum Block {
    Res(ResAttention),
    Down(Conv2d),
    Up(Conv2d),
}

/// The U-Net (see [`UnetConfig`]).
#[derive(Module, Debug)]
pub struct Unet {
    time: TimeEmbedding,
    input: Conv2d,
    down: Vec<Block>,
    middle: Vec<ResAttention>,
    up: Vec<Block>,
    out_norm: GroupNorm,
    output: Conv2d,
    #[module(skip)]
    shape: ImageShape,
}

impl Unet {
    /// The image shape it takes.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// `x_t` rows and the steps as a float column (`[n, 1]`, or `[1, 1]` for every row).
    fn forward_steps(&self, x_t: Tensor<2>, steps: Tensor<2>) -> Tensor<2> {
        let emb = self.time.forward(steps);
        let mut h = conv(&self.input, to_images(x_t, self.shape));
        let mut skips = vec![h.clone()];
        for block in &self.down {
            h = match block {
                Block::Res(r) => r.forward(h, &emb),
                Block::Down(layer) => conv(layer, h),
                Block::Up(_) => unreachable!("the down path has no upsampling"),
            };
            skips.push(h.clone());
        }
        for block in &self.middle {
            h = block.forward(h, &emb);
        }
        for block in &self.up {
            h = match block {
                Block::Res(r) => {
                    let skip = skips.pop().expect("one skip per block");
                    r.forward(concat_channels(h, skip), &emb)
                }
                Block::Up(layer) => conv(layer, repeat2(h)),
                Block::Down(_) => unreachable!("the up path has no downsampling"),
            };
        }
        let out_norm = (&self.out_norm, true);
        to_rows(norm_conv_plus(out_norm, &self.output, h, ConvPlus::Nothing))
    }
}

impl ReverseNetwork for Unet {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Tensor<2> {
        self.forward_steps(x_t, step_column(&t))
    }

    fn forward_at(&self, x_t: Tensor<2>, t: usize) -> Tensor<2> {
        let device = x_t.device();
        self.forward_steps(x_t, one_step(t, &device))
    }
    fn splits_batches(&self) -> bool {
        true
    }
}
