//! Checkpoints: a model's parameters, and whatever the trainer keeps beside them, in one
//! safetensors file.
//!
//! A checkpoint is an ordinary safetensors file, so NumPy, PyTorch or JAX read it as it is;
//! `docs/checkpoint.md` lists every tensor of every model kind and shows how. It holds
//!
//! - every parameter under its `Param::name()`, in the model's dtype (f32 today), each weight
//!   matrix in the [d_in, d_out] layout (y = x W);
//! - the caller's extra tensors, such as the optimiser's moments under `optim.m.<name>`;
//! - string metadata: `odeflow.format` (`FORMAT_VERSION`), `odeflow.config` (the config as
//!   TOML), `odeflow.extra` (the names of the extra tensors, a JSON list), and the caller's keys.
//!
//! Because the file lists its extra tensors, every other tensor in it must be a parameter:
//! `load` can name a stray tensor instead of guessing what it is.
//!
//! `save` is atomic: it writes a hidden file beside the target, syncs it to disk and renames it
//! over the target, so a crash, a full disk or a bad argument leaves an earlier checkpoint whole.
//! `load` builds the model its config describes and fills it; `load_params` fills a model the
//! caller built, and names every tensor that does not fit.

use crate::{Config, Error, Model, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use odeflow_runtime::{DType, Element, Tensor};
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// The version of this layout, written under `FORMAT_KEY`; bump it when a name or a meaning
/// changes, so an old reader refuses a new file instead of misreading it.
pub const FORMAT_VERSION: &str = "1";
pub const FORMAT_KEY: &str = "odeflow.format";
/// The model's config, as `Config::to_toml` writes it.
pub const CONFIG_KEY: &str = "odeflow.config";
/// The names of the extra tensors, as a JSON list of strings.
pub const EXTRA_KEY: &str = "odeflow.extra";
/// Metadata keys under this prefix are odeflow's own; a caller's key may not use it.
pub const RESERVED_PREFIX: &str = "odeflow.";
/// safetensors keeps its metadata under this key of the header, so no tensor may take it.
const SAFETENSORS_METADATA_KEY: &str = "__metadata__";

// safetensors stores little-endian numbers, and this module copies bytes to and from native
// numbers without swapping them.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "checkpoint.rs assumes a little-endian machine"
);

/// A checkpoint loaded into a model of the config it was saved with.
pub struct Loaded {
    pub model: Model,
    /// The extra tensors given to `save`, by name.
    pub extra: BTreeMap<String, Tensor>,
    /// The metadata given to `save` (the `odeflow.*` keys are read into the fields above).
    pub metadata: BTreeMap<String, String>,
}

/// Everything a checkpoint file holds, before any model is built.
pub struct Contents {
    /// The config of the model that was saved.
    pub config: Config,
    /// Every tensor the file does not list as extra: the parameters, by name.
    pub params: BTreeMap<String, Tensor>,
    /// The extra tensors given to `save`, by name.
    pub extra: BTreeMap<String, Tensor>,
    /// The metadata given to `save`, without the `odeflow.*` keys read above.
    pub metadata: BTreeMap<String, String>,
}

/// How a set of tensors differs from a model's parameters: every difference, not only the first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    /// Parameters without a tensor of their name.
    pub missing: Vec<String>,
    /// Tensors that are not a parameter of the model.
    pub unexpected: Vec<String>,
    /// Tensors whose shape or dtype is not their parameter's.
    pub misfit: Vec<Misfit>,
}

/// One tensor whose shape or dtype is not its parameter's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misfit {
    pub name: String,
    /// What the model's parameter is.
    pub want: (Vec<usize>, DType),
    /// What the tensor is.
    pub got: (Vec<usize>, DType),
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.misfit.is_empty()
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            let names = self.missing.join(", ");
            parts.push(format!("{} missing: {names}", self.missing.len()));
        }
        if !self.unexpected.is_empty() {
            let names = self.unexpected.join(", ");
            parts.push(format!("{} unexpected: {names}", self.unexpected.len()));
        }
        if !self.misfit.is_empty() {
            let each: Vec<String> = self.misfit.iter().map(Misfit::to_string).collect();
            let n = self.misfit.len();
            parts.push(format!(
                "{n} of another shape or dtype: {}",
                each.join(", ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ((want, want_dtype), (got, got_dtype)) = (&self.want, &self.got);
        write!(
            f,
            "{} is {got:?} {got_dtype} where the model has {want:?} {want_dtype}",
            self.name
        )
    }
}

// saving
/// Writes `model`'s parameters, the `extra` tensors and `metadata` to `path`, atomically: on
/// any error the file that was at `path` (if any) is unchanged and no temporary file is left.
///
/// Refuses an extra tensor named like a parameter (put extras under a prefix such as
/// `optim.m.`), a name given twice, and a metadata key under `RESERVED_PREFIX`.
pub fn save(
    path: &Path,
    model: &Model,
    extra: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let tensors = tensors_to_write(path, model, extra)?;
    let header = header_metadata(path, model.config(), extra, metadata)?;
    write_atomically(path, tensors, header)
}

/// A tensor as safetensors writes it. Its bytes are made only when the writer asks for them,
/// one tensor at a time, so a save never holds a second copy of the whole model.
struct Raw {
    /// Contiguous, so that reading its values is a plain copy that cannot fail.
    tensor: Tensor,
}

impl View for Raw {
    fn dtype(&self) -> Dtype {
        match self.tensor.dtype() {
            DType::F32 => Dtype::F32,
            DType::BF16 => Dtype::BF16,
            DType::F16 => Dtype::F16,
            DType::U32 => Dtype::U32,
        }
    }

    fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // Shortfall: the runtime has no borrowed view of a buffer's bytes, so this copies the
        // values out and then into bytes: two transient copies of the largest tensor.
        fn bytes<T: Element>(t: &Tensor) -> Vec<u8> {
            let values = t.to_vec::<T>().expect("dtype matched, and contiguous");
            bytemuck::cast_slice(&values).to_vec()
        }
        Cow::Owned(match self.tensor.dtype() {
            DType::F32 => bytes::<f32>(&self.tensor),
            DType::BF16 => bytes::<bf16>(&self.tensor),
            DType::F16 => bytes::<f16>(&self.tensor),
            DType::U32 => bytes::<u32>(&self.tensor),
        })
    }

    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.dtype().size_in_bytes()
    }
}

/// The parameters, then the extras, each under a name no other tensor has.
fn tensors_to_write(
    path: &Path,
    model: &Model,
    extra: &[(String, Tensor)],
) -> Result<Vec<(String, Raw)>> {
    let params: BTreeSet<&str> = model.params().iter().map(|p| p.name()).collect();
    let mut extras = BTreeSet::new();
    for (name, _) in extra {
        let msg = if params.contains(name.as_str()) {
            format!(
                "the extra tensor {name} has the name of a parameter; put extras under a prefix \
                 such as optim.m.{name}"
            )
        } else if name == SAFETENSORS_METADATA_KEY {
            format!("{name} is the name safetensors keeps for its metadata; choose another")
        } else if !extras.insert(name.as_str()) {
            format!("the extra tensor {name} is given twice; give each a name of its own")
        } else {
            continue;
        };
        return Err(bad(path, msg));
    }
    let raw = |t: &Tensor| -> Result<Raw> {
        Ok(Raw {
            tensor: t.contiguous()?,
        })
    };
    let mut out = Vec::with_capacity(params.len() + extra.len());
    for p in model.params() {
        out.push((p.name().to_string(), raw(&p.value())?));
    }
    for (name, t) in extra {
        out.push((name.clone(), raw(t)?));
    }
    Ok(out)
}

/// The header's string map: odeflow's keys, then the caller's.
fn header_metadata(
    path: &Path,
    config: &Config,
    extra: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<HashMap<String, String>> {
    if let Some(key) = metadata.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
        let msg = format!(
            "the metadata key {key} is under {RESERVED_PREFIX}, which odeflow keeps for itself; \
             rename it"
        );
        return Err(bad(path, msg));
    }
    let extra_names: Vec<&str> = extra.iter().map(|(name, _)| name.as_str()).collect();
    let mut header: HashMap<String, String> = metadata.clone().into_iter().collect();
    header.insert(FORMAT_KEY.into(), FORMAT_VERSION.into());
    header.insert(CONFIG_KEY.into(), config.to_toml());
    let names = serde_json::to_string(&extra_names).expect("a list of strings serialises");
    header.insert(EXTRA_KEY.into(), names);
    Ok(header)
}

/// Writes a hidden temporary file beside `path`, syncs it and renames it over `path`.
fn write_atomically(
    path: &Path,
    tensors: Vec<(String, Raw)>,
    header: HashMap<String, String>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let failed = |step: &str, e: &dyn fmt::Display| {
        let msg = format!(
            "could not {step} ({e}); check that the folder {} exists, is writable and has room \
             (any earlier checkpoint at this path is unchanged)",
            dir.display()
        );
        bad(path, msg)
    };
    let temp = TempFile::beside(path)?;
    // safetensors lays out the file (names sorted by dtype, then alphabetically) and writes it
    safetensors::serialize_to_file(tensors, Some(header), temp.path())
        .map_err(|e| failed("write the checkpoint", &e))?;
    // the data must be on disk before the rename makes it the checkpoint
    File::open(temp.path())
        .and_then(|f| f.sync_all())
        .map_err(|e| failed("sync the checkpoint to disk", &e))?;
    temp.rename_to(path)
        .map_err(|e| failed("rename the checkpoint into place", &e))?;
    // the rename itself is durable once the folder is synced. Some filesystems refuse to sync a
    // folder; then a crash can at worst undo the rename, leaving the earlier checkpoint whole.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A file under a temporary name, deleted when dropped unless renamed into place first.
struct TempFile {
    /// `None` once renamed: nothing left to delete.
    path: Option<PathBuf>,
}

impl TempFile {
    /// `dir/.name.<pid>.tmp` for `dir/name`: hidden, in the same folder so that the rename is
    /// atomic, and named by the process so that two processes never write the same one.
    fn beside(target: &Path) -> Result<TempFile> {
        let Some(name) = target.file_name() else {
            return Err(bad(target, "the path names no file; give a file name"));
        };
        let temp_name = format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id());
        Ok(TempFile {
            path: Some(target.with_file_name(temp_name)),
        })
    }

    fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("a temp file has a path until renamed")
    }

    fn rename_to(mut self, target: &Path) -> io::Result<()> {
        let path = self.path.take().expect("renamed once");
        if let Err(e) = fs::rename(&path, target) {
            self.path = Some(path); // so that drop deletes it
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // best effort, and often there is no file yet: the error that brought us here is the
            // one worth reporting
            let _ = fs::remove_file(path);
        }
    }
}

// loading
/// Reads the checkpoint at `path` and loads it into a model built from the config it records.
pub fn load(path: &Path) -> Result<Loaded> {
    let contents = read(path)?;
    let model = Model::new(&contents.config, 0).map_err(|e| {
        let msg = format!("its config cannot build a model ({e}); the file was edited");
        bad(path, msg)
    })?;
    load_params(&model, &contents.params).map_err(|e| match e {
        Error::ParamMismatch(m) => bad(
            path,
            format!(
                "its tensors do not fit the config it records: {m}; the file was edited or \
                 written by another version of odeflow"
            ),
        ),
        other => other,
    })?;
    Ok(Loaded {
        model,
        extra: contents.extra,
        metadata: contents.metadata,
    })
}

/// Reads every tensor and the metadata of the checkpoint at `path`, without building a model.
pub fn read(path: &Path) -> Result<Contents> {
    let map = map_file(path)?;
    let not_safetensors = |e: SafeTensorError| describe_unreadable(path, &e, map.len());
    // safetensors hands out the string metadata only through `read_metadata`, so the header
    // is parsed twice (it is a few kilobytes)
    let (_, header) = SafeTensors::read_metadata(&map).map_err(not_safetensors)?;
    let file = SafeTensors::deserialize(&map).map_err(not_safetensors)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut metadata: BTreeMap<String, String> = metadata.into_iter().collect();
    let config = take_config(path, &mut metadata)?;
    let extra_names = take_extra_names(path, &mut metadata)?;
    let (mut params, mut extra) = (BTreeMap::new(), BTreeMap::new());
    for (name, view) in file.iter() {
        let tensor = tensor_from_bytes(path, name, view.dtype(), view.shape(), view.data())?;
        let into = if extra_names.contains(name) {
            &mut extra
        } else {
            &mut params
        };
        into.insert(name.to_string(), tensor);
    }
    if let Some(name) = extra_names.iter().find(|n| !extra.contains_key(*n)) {
        let msg = format!(
            "{EXTRA_KEY} lists {name}, but the file has no such tensor; the file was edited or \
             is corrupt"
        );
        return Err(bad(path, msg));
    }
    Ok(Contents {
        config,
        params,
        extra,
        metadata,
    })
}

/// Sets every parameter of `model` to the tensor of its name in `tensors`, after checking that
/// the names are exactly the parameters' and that each shape and dtype is its parameter's.
/// On a mismatch, returns `Error::ParamMismatch` listing every difference and changes nothing.
/// There is no cast: a tensor of another dtype is a mismatch.
pub fn load_params(model: &Model, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mismatch = compare(model, tensors);
    if !mismatch.is_empty() {
        return Err(Error::ParamMismatch(mismatch));
    }
    for p in model.params() {
        p.set_value(tensors[p.name()].clone())?;
    }
    Ok(())
}

/// Every way `tensors` differs from `model`'s parameters.
fn compare(model: &Model, tensors: &BTreeMap<String, Tensor>) -> Mismatch {
    let mut mismatch = Mismatch::default();
    for p in model.params() {
        let Some(t) = tensors.get(p.name()) else {
            mismatch.missing.push(p.name().to_string());
            continue;
        };
        let want = (p.shape(), p.value().dtype());
        let got = (t.shape().to_vec(), t.dtype());
        if want != got {
            let name = p.name().to_string();
            mismatch.misfit.push(Misfit { name, want, got });
        }
    }
    let names: BTreeSet<&str> = model.params().iter().map(|p| p.name()).collect();
    let unexpected = tensors.keys().filter(|k| !names.contains(k.as_str()));
    mismatch.unexpected = unexpected.cloned().collect();
    mismatch
}

/// The file at `path`, memory-mapped.
///
/// Why a map and not `fs::read`: a checkpoint with optimiser moments is three times the model,
/// and every tensor is copied out of the file into a buffer of its own anyway. Read into memory,
/// the file and the tensors would both be held at the peak; mapped, the file's pages are read
/// as each tensor is copied and the OS may drop them again, so the peak is about the tensors.
fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => bad(
            path,
            "no such file: check the path, or train a model first (training writes the \
             checkpoints)",
        ),
        _ => bad(path, format!("could not open it: {e}")),
    })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(bad(
            path,
            "not a regular file; give the path of a checkpoint file",
        ));
    }
    // SAFETY: a map is sound while nobody changes the file under it. The map is read-only and
    // `save` never writes a checkpoint in place: it writes a new file and renames it over the
    // old name, which leaves the inode we mapped intact. What remains is another program
    // truncating the file while we copy from it (a SIGBUS), the standard caveat of mapped input.
    unsafe { Mmap::map(&file) }.map_err(|e| bad(path, format!("could not map it: {e}")))
}

/// Why the bytes of a `len`-byte file are not a safetensors file, and what to do.
fn describe_unreadable(path: &Path, e: &SafeTensorError, len: usize) -> Error {
    let why = match e {
        SafeTensorError::HeaderTooSmall => {
            format!("it is {len} bytes long, too short for a safetensors header")
        }
        SafeTensorError::InvalidHeaderLength => {
            "it is truncated: it ends inside the header its first 8 bytes announce".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "its {len} bytes are not what its header describes: it is truncated, or has bytes \
             after its end"
        ),
        SafeTensorError::HeaderTooLarge => {
            "its first 8 bytes do not give a plausible header length".into()
        }
        SafeTensorError::InvalidHeader(_)
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization(_)
        | SafeTensorError::JsonError(_) => "its header is not the JSON safetensors writes".into(),
        other => format!("its header is corrupt ({other})"),
    };
    bad(
        path,
        format!(
            "not a valid safetensors file: {why}; if it was being written or copied, copy it \
             again, or use an earlier checkpoint"
        ),
    )
}

/// Checks `odeflow.format`, parses `odeflow.config`, and removes both from `metadata`.
fn take_config(path: &Path, metadata: &mut BTreeMap<String, String>) -> Result<Config> {
    let Some(toml) = metadata.remove(CONFIG_KEY) else {
        let msg = format!(
            "not an odeflow checkpoint: it is a safetensors file without {CONFIG_KEY} metadata \
             (odeflow's save writes it); convert it, or pass a checkpoint written by odeflow"
        );
        return Err(bad(path, msg));
    };
    match metadata.remove(FORMAT_KEY) {
        Some(v) if v == FORMAT_VERSION => {}
        Some(v) => {
            let msg = format!(
                "it is in checkpoint format {v}, and this build reads format {FORMAT_VERSION}; \
                 read it with the version of odeflow that wrote it"
            );
            return Err(bad(path, msg));
        }
        None => {
            let msg = format!("it has {CONFIG_KEY} but no {FORMAT_KEY} metadata; was it edited?");
            return Err(bad(path, msg));
        }
    }
    Config::from_toml(&toml).map_err(|e| {
        let msg = format!("its {CONFIG_KEY} is not a valid config ({e}); the file was edited");
        bad(path, msg)
    })
}

/// Parses `odeflow.extra` (a JSON list of names) and removes it from `metadata`.
fn take_extra_names(
    path: &Path,
    metadata: &mut BTreeMap<String, String>,
) -> Result<BTreeSet<String>> {
    let Some(json) = metadata.remove(EXTRA_KEY) else {
        let msg = format!("it has no {EXTRA_KEY} metadata; the file was edited");
        return Err(bad(path, msg));
    };
    let names: Vec<String> = serde_json::from_str(&json).map_err(|e| {
        let msg = format!("its {EXTRA_KEY} is not a JSON list of names ({e}); the file was edited");
        bad(path, msg)
    })?;
    Ok(names.into_iter().collect())
}

/// A tensor of ours from the little-endian bytes of one safetensors entry. A dtype odeflow has
/// no tensor for is an error, never a cast.
fn tensor_from_bytes(
    path: &Path,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    bytes: &[u8],
) -> Result<Tensor> {
    // the bytes may sit at any offset of the file, so they are collected (with a copy that
    // handles any alignment) rather than reinterpreted in place
    fn values<T: Element>(bytes: &[u8], shape: &[usize]) -> Result<Tensor> {
        let data: Vec<T> = bytemuck::pod_collect_to_vec(bytes);
        Ok(Tensor::from_vec(data, shape)?)
    }
    match dtype {
        Dtype::F32 => values::<f32>(bytes, shape),
        Dtype::BF16 => values::<bf16>(bytes, shape),
        Dtype::F16 => values::<f16>(bytes, shape),
        Dtype::U32 => values::<u32>(bytes, shape),
        other => {
            let msg = format!(
                "the tensor {name} is {other:?}, a dtype odeflow has no tensors of (it has f32, \
                 bf16, f16 and u32); convert it before loading"
            );
            Err(bad(path, msg))
        }
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelKind;

    /// docs/checkpoint.md, compiled in so that editing it reruns this test.
    const FORMAT_DOC: &str = include_str!("../../docs/checkpoint.md");

    /// A small config whose sizes are all different, so that a wrong symbol in the doc shows:
    /// V 64, P 16, D 32, E 4, S 5 (2S+1 = 11), L 2, d_ff 4D = 128.
    fn tiny(kind: ModelKind) -> Config {
        let cfg = Config {
            vocab_size: 64,
            seq_len: 16,
            d_model: 32,
            n_heads: 2,
            n_steps: 2,
            time_embed_dim: 4,
            sinusoidal_dim: 5,
            ..Config::tiny()
        };
        cfg.with_model(kind)
    }

    /// A model of every kind the doc describes.
    fn every_kind() -> Vec<Model> {
        let untied_ode = Config {
            tie_embeddings: false,
            ..tiny(ModelKind::NeuralOde)
        };
        let mut models = Vec::new();
        for cfg in [
            tiny(ModelKind::NeuralOde),
            untied_ode,
            tiny(ModelKind::LlamaOde),
            tiny(ModelKind::Gpt2),
        ] {
            let model = Model::new(&cfg, 0).unwrap();
            if let Model::Ode(ode) = &model {
                models.push(Model::Discrete(ode.to_discrete(3).unwrap()));
            }
            models.push(model);
        }
        models
    }

    /// A parameter name with each layer index written `{i}`: `h.3.ln_1.weight` becomes
    /// `h.{i}.ln_1.weight` (the digit of `lin1` stays).
    fn pattern(name: &str) -> String {
        let index = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        let parts: Vec<&str> = name
            .split('.')
            .map(|s| if index(s) { "{i}" } else { s })
            .collect();
        parts.join(".")
    }

    /// Every (name, shape) row of the doc's tables: "| `name` | [A, B] | ... |".
    fn doc_rows() -> Vec<(String, String)> {
        let rows = FORMAT_DOC.lines().filter(|l| l.starts_with("| `"));
        let cell = |l: &str, i: usize| l.split('|').nth(i).unwrap_or("").trim().to_string();
        rows.map(|l| (cell(l, 1).trim_matches('`').to_string(), cell(l, 2)))
            .collect()
    }

    /// A shape of the doc, such as "[E+1, D, 3D]", evaluated for `cfg`.
    fn eval_shape(shape: &str, cfg: &Config) -> Vec<usize> {
        let inner = shape.trim_start_matches('[').trim_end_matches(']');
        inner
            .split(',')
            .map(|dim| eval_dim(dim.trim(), cfg))
            .collect()
    }

    /// A sum of terms, each an optional integer times an optional symbol: "2S+1", "3D", "d_ff".
    fn eval_dim(dim: &str, cfg: &Config) -> usize {
        let term = |t: &str| {
            let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let (coef, symbol) = t.split_at(digits);
            let coef = if coef.is_empty() {
                1
            } else {
                coef.parse().unwrap()
            };
            let value = match symbol {
                "" => 1,
                "V" => cfg.vocab_size,
                "P" => cfg.seq_len,
                "D" => cfg.d_model,
                "E" => cfg.time_embed_dim,
                "S" => cfg.sinusoidal_dim,
                "d_ff" => cfg.ff_width(),
                _ => panic!("unknown symbol {symbol:?} in the doc's shape {dim:?}"),
            };
            coef * value
        };
        dim.split('+').map(|t| term(t.trim())).sum()
    }

    #[test]
    fn the_format_doc_lists_every_parameter_with_its_shape() {
        let rows = doc_rows();
        assert!(rows.len() > 50, "the doc's tables were not found: {rows:?}");
        for model in every_kind() {
            let cfg = model.config();
            for p in model.params() {
                let name = pattern(p.name());
                let shapes: Vec<Vec<usize>> = rows
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, s)| eval_shape(s, cfg))
                    .collect();
                let kind = (cfg.model.name(), cfg.discrete);
                assert!(
                    !shapes.is_empty(),
                    "docs/checkpoint.md lacks `{name}` ({kind:?})"
                );
                assert!(
                    shapes.contains(&p.shape()),
                    "docs/checkpoint.md gives `{name}` the shapes {shapes:?}, the {kind:?} model \
                     has {:?}",
                    p.shape()
                );
            }
        }
    }

    #[test]
    fn the_doc_names_the_metadata_keys_and_the_format_version() {
        for key in [FORMAT_KEY, CONFIG_KEY, EXTRA_KEY] {
            assert!(FORMAT_DOC.contains(&format!("`{key}`")), "{key}");
        }
        assert!(FORMAT_DOC.contains(&format!("`{FORMAT_KEY}` = `\"{FORMAT_VERSION}\"`")));
    }

    #[test]
    fn a_mismatch_lists_every_difference_in_one_line() {
        let m = Mismatch {
            missing: vec!["a".into(), "b".into()],
            unexpected: vec!["c".into()],
            misfit: vec![Misfit {
                name: "d".into(),
                want: (vec![2, 3], DType::F32),
                got: (vec![3, 2], DType::BF16),
            }],
        };
        let want = "2 missing: a, b; 1 unexpected: c; 1 of another shape or dtype: d is [3, 2] \
                    bf16 where the model has [2, 3] f32";
        assert_eq!(m.to_string(), want);
        assert!(Mismatch::default().is_empty());
    }
}
