//! A model bundle on disk: the `musicgen.json` manifest, the tokenizer and the ONNX graphs,
//! and the checks that refuse a bundle whose parts disagree.
//!
//! Opening a bundle reads and checks the manifest only; [`Bundle::session`] loads a graph
//! and compares its real inputs and outputs with the manifest, naming the file and the
//! tensor when they differ. The format is documented in `models/README.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};
use serde::Deserialize;

use crate::pattern::{Pattern, PatternError, PatternKind};
use crate::runtime::{ExecutionProvider, Runtime, session_builder};

/// The manifest's file name inside a bundle folder.
pub(crate) const MANIFEST_FILE: &str = "musicgen.json";

/// The manifest format this engine reads.
pub(crate) const FORMAT_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}: this folder is not a model bundle (`cargo xtask export` makes one)", path = .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid bundle manifest: {source}", path = .path.display())]
    Manifest { path: PathBuf, source: serde_json::Error },
    #[error("{path}: format version {found}, this engine reads version {FORMAT_VERSION}; re-export the bundle", path = .path.display())]
    FormatVersion { path: PathBuf, found: u32 },
    #[error("{path}: {field} is {value}: {why}", path = .path.display())]
    Invalid {
        path: PathBuf,
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("{path}: the manifest names no `{graph}` graph", path = .path.display())]
    MissingGraph { path: PathBuf, graph: &'static str },
    #[error("{path}: missing; the manifest lists it as the `{graph}` graph", path = .path.display())]
    MissingFile { path: PathBuf, graph: &'static str },
    #[error("{path}: {source}", path = .path.display())]
    Pattern { path: PathBuf, source: PatternError },
    #[error("{path}: ONNX Runtime could not load it: {source}", path = .path.display())]
    Load { path: PathBuf, source: ort::Error },
    #[error("{path}: {what} `{tensor}`: {problem}", path = .path.display())]
    Tensor {
        path: PathBuf,
        what: &'static str,
        tensor: String,
        problem: String,
    },
}

/// `musicgen.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model_name: String,
    pub sample_rate_hz: u32,
    pub frame_rate_hz: f64,
    pub samples_per_frame: usize,
    pub audio_channels: usize,
    pub num_codebooks: usize,
    pub cardinality: usize,
    pub special_token_id: u32,
    pub pattern: PatternSpec,
    pub max_frames: usize,
    pub decoder: DecoderGeometry,
    pub codec: CodecGeometry,
    pub quantization: Quantization,
    pub kv_cache: KvCacheSpec,
    pub graphs: BTreeMap<String, GraphSpec>,
    pub text_encoder: TextEncoderSpec,
    /// A melody model's chroma settings; absent for text-conditioned models.
    #[serde(default)]
    pub melody: Option<MelodySpec>,
    /// As the export names it; bundles exported before the field have it derived.
    #[serde(default)]
    family: Option<Family>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct TextEncoderSpec {
    /// The longest prompt in tokens (a melody model's prompt shares the decoder's
    /// positions with its chroma and the window).
    pub max_tokens: usize,
}

/// How a melody model takes its melody: the feature extractor's settings the export
/// found, and the chroma frames the decoder's prefix holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct MelodySpec {
    /// Pitch classes per frame (12).
    pub num_chroma: usize,
    /// Chroma frames in the decoder's prefix: a shorter melody is tiled, a longer one cut.
    pub chroma_length: usize,
    pub sample_rate_hz: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    /// The extractor reads at most this much audio.
    pub max_seconds: usize,
}

/// Which member of the MusicGen family a bundle holds: what the controls that apply to it
/// and the people choosing it go by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Family {
    pub channels: Channels,
    pub conditioning: Conditioning,
    pub size: Size,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    Mono,
    Stereo,
}

/// What the music is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Conditioning {
    #[serde(rename = "text")]
    Text,
    /// Text and the chroma of a melody (`musicgen-melody`).
    #[serde(rename = "text+melody")]
    TextAndMelody,
}

/// The decoder's size as Meta's checkpoints have it (`custom`: another geometry, such as
/// the tests' tiny model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Medium,
    Large,
    Custom,
}

impl Channels {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mono => "mono",
            Self::Stereo => "stereo",
        }
    }
}

impl Conditioning {
    /// As the manifest spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::TextAndMelody => "text+melody",
        }
    }
}

impl Size {
    /// As the manifest spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Medium => "medium",
            Self::Large => "large",
            Self::Custom => "custom",
        }
    }

    /// Meta's size for a decoder of `num_layers` layers `hidden_size` wide.
    fn of(num_layers: usize, hidden_size: usize) -> Self {
        match (num_layers, hidden_size) {
            (24, 1024) => Self::Small,
            (48, 1536) => Self::Medium,
            (48, 2048) => Self::Large,
            _ => Self::Custom,
        }
    }
}

impl Manifest {
    /// The codebooks Encodec decodes into one channel: a stereo model's frames hold the
    /// left and right channels' codebooks interleaved.
    pub fn codebooks_per_channel(&self) -> usize {
        self.num_codebooks / self.audio_channels
    }

    /// Which member of the MusicGen family the bundle holds: the manifest's `family`, or
    /// for a bundle exported before it, the text-conditioned model its channels and
    /// decoder geometry make.
    pub fn family(&self) -> Family {
        self.family.unwrap_or_else(|| self.derived_family())
    }

    /// The text-conditioned model the channels and the decoder's geometry make.
    fn derived_family(&self) -> Family {
        Family {
            channels: if self.audio_channels == 2 {
                Channels::Stereo
            } else {
                Channels::Mono
            },
            conditioning: if self.melody.is_some() {
                Conditioning::TextAndMelody
            } else {
                Conditioning::Text
            },
            size: Size::of(self.decoder.num_layers, self.decoder.hidden_size),
        }
    }

    /// Decoder cache slots the conditioning may take before the first step at most: a
    /// melody model's prefix (its chroma, then its prompt); none for a text-conditioned
    /// model, which cross-attends to its prompt.
    pub fn max_prefix_len(&self) -> usize {
        self.melody
            .map_or(0, |melody| melody.chroma_length + self.text_encoder.max_tokens)
    }

    /// The graphs this bundle must have: a melody model has no cross-attention, so no
    /// `cross_kv`; the codec encoder is only needed to continue audio.
    fn required_graphs(&self) -> Vec<Graph> {
        let mut graphs = vec![
            Graph::TextEncoder,
            Graph::Decoder,
            Graph::CodecFrontend,
            Graph::CodecUpsampler,
        ];
        if self.melody.is_none() {
            graphs.push(Graph::CrossKv);
        }
        graphs
    }

    /// The family for people: `stereo, text-conditioned, medium (1.5B)`.
    pub fn describe_family(&self) -> String {
        let family = self.family();
        let conditioning = match family.conditioning {
            Conditioning::Text => "text-conditioned",
            Conditioning::TextAndMelody => "text- and melody-conditioned",
        };
        let size = match family.size {
            Size::Small => "small (300M)".to_owned(),
            Size::Medium => "medium (1.5B)".to_owned(),
            Size::Large => "large (3.3B)".to_owned(),
            Size::Custom => format!(
                "{} layers of width {}, not one of Meta's sizes",
                self.decoder.num_layers, self.decoder.hidden_size
            ),
        };
        format!("{}, {conditioning}, {size}", family.channels.name())
    }

    /// Why the stated family cannot be this bundle's, naming the field.
    fn family_disagreement(&self) -> Option<(&'static str, String, String)> {
        let stated = self.family?;
        let derived = self.derived_family();
        if stated.channels != derived.channels {
            return Some((
                "family.channels",
                stated.channels.name().to_owned(),
                format!("audio_channels is {}: {}", self.audio_channels, derived.channels.name()),
            ));
        }
        if stated.conditioning != derived.conditioning {
            return Some((
                "family.conditioning",
                stated.conditioning.name().to_owned(),
                match derived.conditioning {
                    Conditioning::Text => "the manifest has no `melody` settings: a text-conditioned model".to_owned(),
                    Conditioning::TextAndMelody => "the manifest has `melody` settings: a melody model".to_owned(),
                },
            ));
        }
        if stated.size != derived.size {
            return Some((
                "family.size",
                stated.size.name().to_owned(),
                format!(
                    "a decoder of {} layers of width {} is {}",
                    self.decoder.num_layers,
                    self.decoder.hidden_size,
                    derived.size.name()
                ),
            ));
        }
        None
    }
}

/// How the decoder's weights are stored (the export's choice; the engine only reports it).
#[derive(Clone, Debug, Deserialize)]
pub struct Quantization {
    /// `none`, `int8` or `int4`.
    pub weights: String,
    /// `matmul_nbits` or `dynamic`, for quantized weights.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub block_size: Option<usize>,
    #[serde(default)]
    pub accuracy_level: Option<u32>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct KvCacheSpec {
    pub dtype: CacheType,
}

/// The element type of the self-attention cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheType {
    Float32,
    Int8,
}

impl CacheType {
    pub fn bytes_per_element(self) -> usize {
        match self {
            Self::Float32 => 4,
            Self::Int8 => 1,
        }
    }

    fn element_type(self) -> TensorElementType {
        match self {
            Self::Float32 => TensorElementType::Float32,
            Self::Int8 => TensorElementType::Int8,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct PatternSpec {
    pub kind: String,
    #[serde(default)]
    pub delays: Vec<usize>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct DecoderGeometry {
    pub num_layers: usize,
    pub num_heads: usize,
    pub head_dim: usize,
    pub hidden_size: usize,
}

/// How the codec's decoder is split for streaming (see [`crate::codec`]).
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct CodecGeometry {
    /// Frames the front end's first convolution reads on each side of a frame.
    pub conv_context_frames: usize,
    /// Frames of features on each side of a chunk that make the upsampler's output exact.
    pub upsampler_context_frames: usize,
    pub lstm_layers: usize,
    pub lstm_width: usize,
}

#[derive(Clone, Debug, Deserialize)]
pub struct GraphSpec {
    pub file: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// The graphs of a bundle, by the manifest's names for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Graph {
    TextEncoder,
    CrossKv,
    Decoder,
    CodecFrontend,
    CodecUpsampler,
    CodecEncoder,
}

impl Graph {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::TextEncoder => "text_encoder",
            Self::CrossKv => "cross_kv",
            Self::Decoder => "decoder",
            Self::CodecFrontend => "codec_frontend",
            Self::CodecUpsampler => "codec_upsampler",
            Self::CodecEncoder => "codec_encoder",
        }
    }
}

/// The tiny random-weight bundle of a source tree (`models/tiny`), searched in `dir` and
/// the folders above it: development binaries find it from where they were built,
/// without a source path compiled in.
pub fn find_tiny_bundle(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|dir| dir.join("models").join("tiny"))
        .find(|tiny| tiny.join(MANIFEST_FILE).is_file())
}

/// The first field of `manifest` outside what a MusicGen model can have: its name, its
/// value and why. Checked before anything is sized from them.
fn out_of_range(manifest: &Manifest) -> Option<(&'static str, String, &'static str)> {
    let m = manifest;
    let g = &m.decoder;
    let checks: [(&'static str, String, bool, &'static str); 12] = [
        (
            "num_codebooks",
            m.num_codebooks.to_string(),
            (1..=64).contains(&m.num_codebooks),
            "a model has 1 to 64 codebooks",
        ),
        (
            "cardinality",
            m.cardinality.to_string(),
            (2..=1 << 20).contains(&m.cardinality),
            "codebooks hold 2 to 2^20 codes",
        ),
        (
            "sample_rate_hz",
            m.sample_rate_hz.to_string(),
            (1_000..=384_000).contains(&m.sample_rate_hz),
            "a codec runs at 1 to 384 kHz",
        ),
        (
            "frame_rate_hz",
            m.frame_rate_hz.to_string(),
            m.frame_rate_hz > 0.0 && m.frame_rate_hz <= 1_000.0,
            "a codec makes more than 0 and at most 1000 frames per second",
        ),
        (
            "max_frames",
            m.max_frames.to_string(),
            (1..=1 << 20).contains(&m.max_frames),
            "a context holds 1 to 2^20 frames",
        ),
        (
            "audio_channels",
            m.audio_channels.to_string(),
            (1..=2).contains(&m.audio_channels),
            "MusicGen is mono or stereo",
        ),
        (
            "num_codebooks",
            m.num_codebooks.to_string(),
            m.num_codebooks.is_multiple_of(m.audio_channels.max(1)),
            "every channel has as many codebooks (a stereo model's are left and right interleaved)",
        ),
        (
            "decoder.num_layers",
            g.num_layers.to_string(),
            (1..=256).contains(&g.num_layers),
            "a decoder has 1 to 256 layers",
        ),
        (
            "decoder.num_heads",
            g.num_heads.to_string(),
            (1..=256).contains(&g.num_heads),
            "a layer has 1 to 256 heads",
        ),
        (
            "decoder.head_dim",
            g.head_dim.to_string(),
            (1..=1024).contains(&g.head_dim),
            "a head is 1 to 1024 wide",
        ),
        (
            "codec.lstm_width",
            m.codec.lstm_width.to_string(),
            (1..=1 << 16).contains(&m.codec.lstm_width),
            "the codec's LSTM is 1 to 65536 wide",
        ),
        (
            "text_encoder.max_tokens",
            m.text_encoder.max_tokens.to_string(),
            (1..=4096).contains(&m.text_encoder.max_tokens),
            "a prompt takes 1 to 4096 tokens",
        ),
    ];
    first_failed(checks).or_else(|| m.melody.as_ref().and_then(melody_out_of_range))
}

/// The first field of a melody model's chroma settings outside what the feature extractor
/// can have.
fn melody_out_of_range(melody: &MelodySpec) -> Option<(&'static str, String, &'static str)> {
    let checks: [(&'static str, String, bool, &'static str); 5] = [
        (
            "melody.num_chroma",
            melody.num_chroma.to_string(),
            melody.num_chroma == 12,
            "chroma has the 12 pitch classes",
        ),
        (
            "melody.chroma_length",
            melody.chroma_length.to_string(),
            (1..=1 << 14).contains(&melody.chroma_length),
            "a melody prefix holds 1 to 16384 chroma frames",
        ),
        (
            "melody.n_fft",
            melody.n_fft.to_string(),
            (2..=1 << 20).contains(&melody.n_fft) && melody.n_fft.is_multiple_of(2),
            "the chroma's FFT is even and 2 to 2^20 long",
        ),
        (
            "melody.hop_length",
            melody.hop_length.to_string(),
            (1..=melody.n_fft).contains(&melody.hop_length),
            "the chroma's hop is 1 sample to one FFT long",
        ),
        (
            "melody.sample_rate_hz",
            melody.sample_rate_hz.to_string(),
            (1_000..=384_000).contains(&melody.sample_rate_hz) && melody.max_seconds >= 1,
            "the chroma is computed at 1 to 384 kHz, over at least 1 s",
        ),
    ];
    first_failed(checks)
}

/// The first of `checks` (field, value, whether it is in range, why) that failed.
fn first_failed<const N: usize>(
    checks: [(&'static str, String, bool, &'static str); N],
) -> Option<(&'static str, String, &'static str)> {
    checks
        .into_iter()
        .find(|(_, _, ok, _)| !ok)
        .map(|(field, value, _, why)| (field, value, why))
}

/// Whether a manifest's file name names a file inside the bundle folder.
fn stays_inside(file: &str) -> bool {
    let path = Path::new(file);
    !file.is_empty()
        && path
            .components()
            .all(|part| matches!(part, std::path::Component::Normal(_)))
}

/// A bundle folder with a checked manifest.
#[derive(Clone, Debug)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    pattern_kind: PatternKind,
}

impl Bundle {
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|source| BundleError::Manifest {
            path: path.clone(),
            source,
        })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(BundleError::FormatVersion {
                path,
                found: manifest.format_version,
            });
        }
        let invalid = |field, value: String, why: &str| BundleError::Invalid {
            path: path.clone(),
            field,
            value,
            why: why.to_owned(),
        };
        if let Some((field, value, why)) = out_of_range(&manifest) {
            return Err(invalid(field, value, why));
        }
        if let Some((field, value, why)) = manifest.family_disagreement() {
            return Err(invalid(field, value, &why));
        }
        if manifest.special_token_id as usize != manifest.cardinality {
            return Err(invalid(
                "special_token_id",
                manifest.special_token_id.to_string(),
                &format!("MusicGen's special token is the cardinality, {}", manifest.cardinality),
            ));
        }
        if manifest.samples_per_frame as f64 * manifest.frame_rate_hz != f64::from(manifest.sample_rate_hz) {
            return Err(invalid(
                "samples_per_frame",
                manifest.samples_per_frame.to_string(),
                &format!(
                    "{} Hz / {} frames per second does not give it",
                    manifest.sample_rate_hz, manifest.frame_rate_hz
                ),
            ));
        }
        let pattern_kind = match manifest.pattern.kind.as_str() {
            "delay" => PatternKind::Delay {
                delays: manifest.pattern.delays.clone(),
            },
            other => PatternKind::from_name(other, manifest.num_codebooks).map_err(|source| BundleError::Pattern {
                path: path.clone(),
                source,
            })?,
        };
        pattern_kind
            .build(1, manifest.num_codebooks)
            .map_err(|source| BundleError::Pattern {
                path: path.clone(),
                source,
            })?;
        for graph in manifest.required_graphs() {
            let spec = manifest.graphs.get(graph.key()).ok_or(BundleError::MissingGraph {
                path: path.clone(),
                graph: graph.key(),
            })?;
            if !stays_inside(&spec.file) {
                return Err(invalid(
                    "graphs.*.file",
                    spec.file.clone(),
                    "a graph file must be a plain name inside the bundle folder (no `..`, no absolute path)",
                ));
            }
            let file = dir.join(&spec.file);
            if !file.is_file() {
                return Err(BundleError::MissingFile {
                    path: file,
                    graph: graph.key(),
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            pattern_kind,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub(crate) fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    pub(crate) fn pattern_kind(&self) -> &PatternKind {
        &self.pattern_kind
    }

    /// The bundle's pattern over `num_frames` frames.
    pub fn pattern(&self, num_frames: usize) -> Pattern {
        self.pattern_kind
            .build(num_frames, self.manifest.num_codebooks)
            .expect("checked when the bundle was opened")
    }

    fn graph_path(&self, graph: Graph) -> Result<(PathBuf, &GraphSpec), BundleError> {
        let spec = self.manifest.graphs.get(graph.key()).ok_or(BundleError::MissingGraph {
            path: self.dir.join(MANIFEST_FILE),
            graph: graph.key(),
        })?;
        let path = self.dir.join(&spec.file);
        if !path.is_file() {
            return Err(BundleError::MissingFile {
                path,
                graph: graph.key(),
            });
        }
        Ok((path, spec))
    }

    /// Loads `graph` on the CPU; see [`Bundle::session_on`].
    pub fn session(&self, runtime: &Runtime, graph: Graph, threads: usize) -> Result<Session, BundleError> {
        self.session_on(runtime, graph, threads, ExecutionProvider::Cpu)
            .map(|(session, _)| session)
    }

    /// Loads `graph` with `threads` intra-op threads on the first of `provider`'s choices
    /// that starts, and checks its inputs and outputs against the manifest and the model
    /// geometry. Returns the session and the provider in use.
    pub(crate) fn session_on(
        &self,
        runtime: &Runtime,
        graph: Graph,
        threads: usize,
        provider: ExecutionProvider,
    ) -> Result<(Session, String), BundleError> {
        let (path, spec) = self.graph_path(graph)?;
        let load = |source| BundleError::Load {
            path: path.clone(),
            source,
        };
        let (mut builder, used) = session_builder(runtime, provider, threads).map_err(load)?;
        if used.starts_with(ExecutionProvider::Cpu.name()) {
            let domain = crate::kernels::operator_domain().map_err(load)?;
            builder = builder.with_operators(domain).map_err(|e| load(e.into()))?;
        }
        let session = builder.commit_from_file(&path).map_err(load)?;
        let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        check_names(&path, "input", &spec.inputs, &inputs)?;
        check_names(&path, "output", &spec.outputs, &outputs)?;
        for (name, want) in self.expected_dims(graph) {
            let outlet = session
                .inputs()
                .iter()
                .chain(session.outputs())
                .find(|o| o.name() == name)
                .ok_or_else(|| BundleError::Tensor {
                    path: path.clone(),
                    what: "tensor",
                    tensor: name.to_owned(),
                    problem: "the graph does not have it".into(),
                })?;
            if let ValueType::Tensor { shape, ty, .. } = outlet.dtype() {
                if graph == Graph::Decoder
                    && name.starts_with("past_")
                    && *ty != self.manifest.kv_cache.dtype.element_type()
                {
                    return Err(BundleError::Tensor {
                        path: path.clone(),
                        what: "tensor",
                        tensor: name.to_owned(),
                        problem: format!(
                            "holds {ty:?} but the manifest's kv_cache.dtype says {:?}",
                            self.manifest.kv_cache.dtype
                        ),
                    });
                }
                for (axis, (&got, &want)) in shape.iter().zip(&want).enumerate() {
                    if got >= 0 && want >= 0 && got != want {
                        return Err(BundleError::Tensor {
                            path: path.clone(),
                            what: "tensor",
                            tensor: name.to_owned(),
                            problem: format!(
                                "axis {axis} is {got} but the manifest's geometry says {want} (shape {shape:?})"
                            ),
                        });
                    }
                }
            }
        }
        Ok((session, used))
    }

    /// Axis sizes the manifest implies for tensors whose names are fixed by the format;
    /// -1 where the size varies.
    fn expected_dims(&self, graph: Graph) -> Vec<(&'static str, Vec<i64>)> {
        let m = &self.manifest;
        let k = m.num_codebooks as i64;
        match graph {
            Graph::Decoder => {
                let mut dims = vec![
                    ("input_ids", vec![2, -1, k]),
                    ("logits", vec![2, k, m.cardinality as i64]),
                    (
                        "past_key_0",
                        vec![2, m.decoder.num_heads as i64, -1, m.decoder.head_dim as i64],
                    ),
                ];
                if let Some(melody) = m.melody {
                    dims.push(("chroma", vec![2, -1, melody.num_chroma as i64]));
                    dims.push(("conditioning", vec![2, -1, m.decoder.hidden_size as i64]));
                }
                dims
            }
            Graph::CodecFrontend => vec![
                ("audio_codes", vec![1, m.codebooks_per_channel() as i64, -1]),
                ("lstm_h", vec![m.codec.lstm_layers as i64, 1, m.codec.lstm_width as i64]),
            ],
            Graph::CodecUpsampler => vec![("features", vec![1, m.codec.lstm_width as i64, -1])],
            Graph::TextEncoder => vec![("conditioning", vec![1, -1, m.decoder.hidden_size as i64])],
            Graph::CrossKv | Graph::CodecEncoder => Vec::new(),
        }
    }
}

fn check_names(path: &Path, what: &'static str, manifest: &[String], graph: &[&str]) -> Result<(), BundleError> {
    if let Some(missing) = manifest.iter().find(|name| !graph.contains(&name.as_str())) {
        return Err(BundleError::Tensor {
            path: path.to_path_buf(),
            what,
            tensor: missing.clone(),
            problem: format!("named in {MANIFEST_FILE} but the graph's {what}s are {graph:?}"),
        });
    }
    if let Some(extra) = graph.iter().find(|name| !manifest.iter().any(|m| m == *name)) {
        return Err(BundleError::Tensor {
            path: path.to_path_buf(),
            what,
            tensor: (*extra).to_owned(),
            problem: format!("the graph has it but {MANIFEST_FILE} does not list it"),
        });
    }
    Ok(())
}
