//! Structured fuzzing of everything that reads files a user hands us: the IDX reader (raw and
//! gzip), the CIFAR-10 reader, the config parser (TOML, then resolution of the schedule) and the
//! checkpoint loader. Valid files are mutated (bit flips, bytes set to extremes, truncation,
//! extension, insertion, header fields set to extremes; for configs, values replaced by
//! extremes of every type, keys removed or added; for checkpoints, header and training-state
//! fields set to extremes with the integrity hashes recomputed so the checks behind them are
//! reached too) and fed to the reader from a seeded PRNG.
//!
//! Every case must return (`Ok` or `Err`): a panic (caught with `catch_unwind`) fails the test,
//! so does a case slower than [`SLOW`] (a hang), and so does any allocation above
//! [`ALLOC_LIMIT`] (the guard allocator below refuses it, which aborts the process): inputs are
//! a few KB, so a larger allocation can only come from trusting a count in a header.
//!
//! A short run of each target is part of the test suite; `NOISESCALE_FUZZ_CASES=1000000 cargo
//! test --release --test fuzz -- --nocapture --test-threads 1` runs that many cases per target
//! (`NOISESCALE_FUZZ_SEED` changes the seed). Results are in FUZZING.md.

use burn::tensor::Device;
use noisescale::checkpoint::{self, META_KEY, META_SHA256_KEY};
use noisescale::config::RunConfig;
use noisescale::data::{cifar, idx};
use noisescale::optim::OptimizerRecord;
use noisescale::params::named_tensors;
use noisescale::state::TrainState;
use noisescale::units::{Epoch, Samples};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest single allocation allowed while fuzzing.
const ALLOC_LIMIT: usize = 256 << 20;
/// A case taking longer than this counts as a hang.
const SLOW: Duration = Duration::from_secs(2);

struct Guard;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) -> bool {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size <= ALLOC_LIMIT {
        return true;
    }
    // Say where, before the refusal aborts the process (once: the trace allocates).
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !TOLD.swap(true, Ordering::SeqCst) {
        eprintln!(
            "fuzz: refused an allocation of {size} bytes at\n{}",
            std::backtrace::Backtrace::force_capture()
        );
    }
    false
}

// SAFETY: forwards to the system allocator; only refuses (null) requests above the limit.
unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !note(l.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !note(l.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if !note(new) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GUARD: Guard = Guard;

thread_local! {
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
}

/// Panics inside a fuzz case are expected findings, reported by the loop; others (the test's
/// own assertions) print as usual.
fn install_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(|c| c.get()) {
                default(info);
            }
        }));
    });
}

/// splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const U32_EXTREMES: [u32; 9] = [
    0,
    1,
    2,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    u32::MAX,
    60_000,
    3073,
];
const U64_EXTREMES: [u64; 8] = [
    0,
    1,
    7,
    u32::MAX as u64,
    u64::MAX,
    u64::MAX / 2,
    1 << 40,
    100_000_001,
];

/// One to three byte-level mutations of `b`; `fields` are (offset, width, big-endian) of
/// header fields that may be set to extremes.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>, fields: &[(usize, usize, bool)]) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(8) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    if !b.is_empty() {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = [0x00, 0xff, 0x7f, 0x80, rng.next() as u8][rng.below(5)];
                }
            }
            2 => {
                // Truncate: anywhere, or near either end.
                let n = match rng.below(3) {
                    0 => rng.below(b.len() + 1),
                    1 => rng.below(b.len().min(32) + 1),
                    _ => b.len().saturating_sub(1 + rng.below(16)),
                };
                b.truncate(n);
            }
            3 => {
                let n = 1 + rng.below(64);
                for _ in 0..n {
                    b.push(if rng.chance(2) { 0 } else { rng.next() as u8 });
                }
            }
            4 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            5 => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b.remove(i);
                }
            }
            _ => {
                if fields.is_empty() {
                    continue;
                }
                let (at, width, be) = fields[rng.below(fields.len())];
                if b.len() < at + width {
                    continue;
                }
                if width == 4 {
                    let v = if rng.chance(4) {
                        rng.next() as u32
                    } else {
                        U32_EXTREMES[rng.below(U32_EXTREMES.len())]
                    };
                    let bytes = if be { v.to_be_bytes() } else { v.to_le_bytes() };
                    b[at..at + 4].copy_from_slice(&bytes);
                } else {
                    let v = if rng.chance(3) {
                        // The true value ± a little.
                        let old = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                        old.wrapping_add(rng.below(17) as u64).wrapping_sub(8)
                    } else {
                        U64_EXTREMES[rng.below(U64_EXTREMES.len())]
                    };
                    let bytes = if be { v.to_be_bytes() } else { v.to_le_bytes() };
                    b[at..at + 8].copy_from_slice(&bytes);
                }
            }
        }
    }
}

fn cases(default: u64) -> u64 {
    std::env::var("NOISESCALE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed(target: u64) -> u64 {
    std::env::var("NOISESCALE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x15)
        ^ target.wrapping_mul(0x9E3779B97F4A7C15)
}

/// Runs `n` cases of `case` (which returns whether the input was accepted), failing on the
/// first panic or hang with the case's number and seed, and reports the counts.
fn fuzz(target: &str, n: u64, tag: u64, mut case: impl FnMut(&mut Rng) -> bool) {
    install_hook();
    LARGEST.store(0, Ordering::Relaxed);
    let mut rng = Rng(seed(tag));
    let start = Instant::now();
    let (mut accepted, mut slowest, mut slowest_case) = (0u64, Duration::ZERO, 0);
    for i in 0..n {
        let t = Instant::now();
        IN_CASE.with(|c| c.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| case(&mut rng)));
        IN_CASE.with(|c| c.set(false));
        let dt = t.elapsed();
        if dt > slowest {
            (slowest, slowest_case) = (dt, i);
        }
        match r {
            Ok(ok) => accepted += ok as u64,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!(
                    "fuzz {target}: case {i} (seed {:#x}) panicked: {msg}",
                    seed(tag)
                );
            }
        }
        assert!(
            dt < SLOW,
            "fuzz {target}: case {i} (seed {:#x}) took {dt:?}",
            seed(tag)
        );
    }
    eprintln!(
        "fuzz {target}: {n} cases in {:.1} s, {accepted} accepted, {} rejected with an error, 0 panics, slowest case {:.2} ms (#{slowest_case}), largest allocation {:.1} KiB",
        start.elapsed().as_secs_f64(),
        n - accepted,
        slowest.as_secs_f64() * 1e3,
        LARGEST.load(Ordering::Relaxed) as f64 / 1024.0
    );
}

fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [idx::IMAGES_MAGIC, count, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..count * rows * cols).map(|i| (i * 13 % 256) as u8));
    b
}

fn idx_labels(count: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [idx::LABELS_MAGIC, count] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..count).map(|i| (i % 10) as u8));
    b
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn fuzz_idx_reader() {
    let path = Path::new("fuzz/train-images-idx3-ubyte");
    let images = idx_images(6, 5, 4);
    let labels = idx_labels(9);
    let image_fields = [(0, 4, true), (4, 4, true), (8, 4, true), (12, 4, true)];
    let label_fields = [(0, 4, true), (4, 4, true)];
    fuzz("idx", cases(50_000), 1, |rng| {
        let is_images = rng.chance(2);
        let (mut b, fields) = if is_images {
            (images.clone(), &image_fields[..])
        } else {
            (labels.clone(), &label_fields[..])
        };
        // Raw; mutated then gzipped (a valid stream of a bad file); or gzipped then mutated.
        match rng.below(3) {
            0 => mutate(rng, &mut b, fields),
            1 => {
                mutate(rng, &mut b, fields);
                b = gzip(&b);
            }
            _ => {
                b = gzip(&b);
                mutate(rng, &mut b, &[(0, 4, true), (4, 4, true)]);
            }
        }
        let decoded = match idx::decode(path, b) {
            Ok(d) => d,
            Err(e) => {
                assert!(e.to_string().contains("fuzz/"), "{e}");
                return false;
            }
        };
        if is_images {
            match idx::parse_images(path, decoded) {
                Ok(img) => {
                    assert_eq!(img.pixels.len(), img.count * img.rows * img.cols);
                    true
                }
                Err(e) => {
                    // Every error names the file.
                    assert!(e.to_string().contains("fuzz/"), "{e}");
                    false
                }
            }
        } else {
            idx::parse_labels(path, decoded, 10)
                .map(|l| assert!(l.iter().all(|&x| x < 10)))
                .is_ok()
        }
    });
}

#[test]
fn fuzz_idx_gzip_bombs_are_refused() {
    // 64 MiB of zeros compresses to ~64 KB; with a 1 MiB limit it is refused, not inflated.
    let mut big = idx_images(1, 1, 1);
    big.resize(64 << 20, 0);
    let gz = gzip(&big);
    let err = idx::decode_limited(Path::new("bomb.gz"), gz, 1 << 20).unwrap_err();
    assert!(
        err.to_string().contains("decompresses to more than"),
        "{err}"
    );
    assert!(err.to_string().contains("bomb.gz"), "{err}");
}

#[test]
fn fuzz_cifar_reader() {
    let path = Path::new("fuzz/data_batch_1.bin");
    let mut valid = Vec::new();
    for r in 0..3 {
        valid.push(r as u8 * 3);
        valid.extend((0..cifar::RECORD_LEN - 1).map(|i| (i * 7 + r) as u8));
    }
    let fields: Vec<(usize, usize, bool)> =
        (0..3).map(|r| (r * cifar::RECORD_LEN, 4, true)).collect();
    fuzz("cifar", cases(50_000), 2, |rng| {
        let mut b = valid.clone();
        mutate(rng, &mut b, &fields);
        match cifar::parse_records(path, &b) {
            Ok((img, lab)) => {
                assert_eq!(img.len(), lab.len() * (cifar::RECORD_LEN - 1));
                true
            }
            Err(_) => false,
        }
    });
}

fn extreme_toml(rng: &mut Rng) -> toml::Value {
    use toml::Value;
    match rng.below(16) {
        0 => Value::Integer(0),
        1 => Value::Integer(-1),
        2 => Value::Integer(i64::MAX),
        3 => Value::Integer(i64::MIN),
        4 => Value::Integer(u32::MAX as i64),
        5 => Value::Integer(1 << 40),
        6 => Value::Float(f64::NAN),
        7 => Value::Float(f64::INFINITY),
        8 => Value::Float(f64::NEG_INFINITY),
        9 => Value::Float(1e308),
        10 => Value::Float(-0.0),
        11 => Value::Float(5e-324),
        12 => Value::String(["", "x", "mnist", "cuda:99", "decay-lr"][rng.below(5)].into()),
        13 => Value::Boolean(rng.chance(2)),
        14 => Value::Array(
            (0..rng.below(6))
                .map(|_| Value::Integer([0, 1, 3, 60, i64::MAX, -5][rng.below(6)]))
                .collect(),
        ),
        _ => Value::Table(toml::Table::new()),
    }
}

/// Replaces, removes or adds one entry somewhere in the tree.
fn mutate_toml(rng: &mut Rng, t: &mut toml::Table) {
    let keys: Vec<String> = t.keys().cloned().collect();
    let pick = (!keys.is_empty()).then(|| keys[rng.below(keys.len())].clone());
    match (rng.below(10), pick) {
        (0, _) | (_, None) => {
            t.insert(format!("k{}", rng.below(3)), extreme_toml(rng));
        }
        (1, Some(k)) => {
            t.remove(&k);
        }
        (_, Some(k)) => match t.get_mut(&k) {
            Some(toml::Value::Table(sub)) if !rng.chance(4) => mutate_toml(rng, sub),
            Some(v) => *v = extreme_toml(rng),
            None => {}
        },
    }
}

#[test]
fn fuzz_config_parser() {
    let mut texts: Vec<String> = noisescale::presets::PRESETS
        .iter()
        .map(|(_, t)| t.to_string())
        .collect();
    texts.push(
        "[data]\ndataset = \"synthetic\"\n[schedule]\nkind = \"hybrid\"\nepochs = 6\nlr = 0.1\n\
         batch_size = 8\nmomentum = 0.9\nmilestones = [2, 4]\nmax_batch_size = 40\n\
         [train]\nmax_micro_batch = 16\n"
            .into(),
    );
    let tables: Vec<toml::Table> = texts.iter().map(|t| t.parse().unwrap()).collect();
    // Finding of the 10^6 run: per-epoch tables sized by `epochs` (64 GiB for u32::MAX).
    let huge = texts
        .last()
        .unwrap()
        .replace("epochs = 6", "epochs = 4294967295");
    let err = RunConfig::from_toml(&huge, "huge.toml")
        .and_then(|c| c.resolve(Samples(1000), 1))
        .unwrap_err();
    assert!(err.to_string().contains("epochs"), "{err}");
    fuzz("config", cases(30_000), 3, |rng| {
        let i = rng.below(texts.len());
        let text = if rng.chance(3) {
            let mut b = texts[i].clone().into_bytes();
            mutate(rng, &mut b, &[]);
            String::from_utf8_lossy(&b).into_owned()
        } else {
            let mut t = tables[i].clone();
            for _ in 0..1 + rng.below(3) {
                mutate_toml(rng, &mut t);
            }
            toml::to_string(&t).unwrap_or_default()
        };
        let Ok(cfg) = RunConfig::from_toml(&text, "fuzz.toml") else {
            return false;
        };
        // Resolution against data sizes and worker counts, extremes included.
        let n = [0u64, 1, 7, 50_000, u32::MAX as u64, rng.next() % 100_000][rng.below(6)];
        let world = [1usize, 2, 3, 1000][rng.below(4)];
        let Ok(r) = cfg.resolve(Samples(n), world) else {
            return false;
        };
        let table = r.schedule.table();
        let _ = (r.schedule.total_updates(), table.phases.len());
        let epochs = r.schedule.epochs().0 as usize;
        if epochs > 0 {
            let e = Epoch(rng.below(epochs) as u32);
            let b = r.schedule.batch_size(e);
            let _ = (r.describe_batching(b), r.schedule.hyper(e, 0.5));
            let _ = r.schedule.noise_scale(e);
        }
        let _ = cfg.to_toml();
        true
    });
}

struct Ckpt {
    cfg: RunConfig,
    model: noisescale::model::Model,
    bytes: Vec<u8>,
    device: Device,
}

fn valid_checkpoint() -> Ckpt {
    let cfg = RunConfig::from_toml(
        "[data]\ndataset = \"synthetic\"\nsynthetic = { train = 64, test = 8, classes = 3, shape = [1, 2, 3] }\n\
         [model]\nkind = \"mlp\"\nwidths = [4]\n[schedule]\nepochs = 3\nlr = 0.1\nbatch_size = 8\nmomentum = 0.9\n",
        "fuzz",
    )
    .unwrap();
    let resolved = cfg.resolve(Samples(64), 1).unwrap();
    let device = Device::flex();
    device.seed(7);
    let model = cfg.model.init([1, 2, 3], 3, &device);
    let mut record = OptimizerRecord {
        step: 9,
        last_lr: Some(0.1),
        ..Default::default()
    };
    for t in named_tensors(&model) {
        let n = t.shape.iter().product();
        record.buffers.insert(format!("{}#v", t.name), vec![0.5; n]);
    }
    let mut state = TrainState::start();
    state.position.epoch = 1;
    state.position.offset = 16;
    state.epoch.loss_sum = 1.25;
    state.epoch.count = 16;
    let bytes = checkpoint::to_bytes(&model, &record, &state, &resolved).unwrap();
    // The same bytes in every process (safetensors writes its metadata map in hash order):
    // the header re-emitted with sorted keys, so that a case number and seed reproduce a case.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let bytes = with_header(&header.to_string(), &bytes[8 + n..]);
    Ckpt {
        cfg,
        model,
        bytes,
        device,
    }
}

/// Sets a random number in `json` (a JSON text) to an extreme, keeping it JSON.
fn extreme_number(rng: &mut Rng, json: &str) -> String {
    let spans: Vec<(usize, usize)> = {
        let b = json.as_bytes();
        let mut v = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
                let s = i;
                while i < b.len() && (b[i].is_ascii_digit() || b"-+.eE".contains(&b[i])) {
                    i += 1;
                }
                v.push((s, i));
            } else {
                i += 1;
            }
        }
        v
    };
    if spans.is_empty() {
        return json.to_string();
    }
    let (s, e) = spans[rng.below(spans.len())];
    let x = [
        "0",
        "1",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1e308",
        "3",
        "64",
    ][rng.below(10)];
    format!("{}{x}{}", &json[..s], &json[e..])
}

/// Rebuilds a safetensors file from a (possibly mutated) header JSON and the data bytes.
fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut b = (h.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&h);
    b.extend_from_slice(data);
    b
}

/// Recomputes every integrity hash of a file whose safetensors structure is valid, so that a
/// mutation reaches the checks behind them; `meta_edit` may change the training state first.
fn rehash(b: &[u8], meta_edit: impl FnOnce(&str) -> String) -> Option<Vec<u8>> {
    let st = safetensors::SafeTensors::deserialize(b).ok()?;
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(b.get(8..8 + n)?).ok()?;
    let meta_text = header
        .get("__metadata__")?
        .get(META_KEY)?
        .as_str()?
        .to_string();
    let mut meta: serde_json::Value = serde_json::from_str(&meta_edit(&meta_text)).ok()?;
    let mut hashes = serde_json::Map::new();
    for name in st.names() {
        let v = st.tensor(name).ok()?;
        hashes.insert(
            name.to_string(),
            checkpoint::tensor_sha256(name, v.dtype(), v.shape(), v.data()).into(),
        );
    }
    meta.as_object_mut()?
        .insert("tensors".into(), serde_json::Value::Object(hashes));
    let meta_text = meta.to_string();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(meta_text.as_bytes())
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let md = header.get_mut("__metadata__")?.as_object_mut()?;
    md.insert(META_KEY.into(), meta_text.into());
    md.insert(META_SHA256_KEY.into(), digest.into());
    Some(with_header(&header.to_string(), b.get(8 + n..)?))
}

#[test]
fn fuzz_checkpoint_loader() {
    let c = valid_checkpoint();
    let path = Path::new("fuzz/checkpoint.safetensors");
    let load = |b: &[u8]| checkpoint::load_bytes(path, b, c.model.clone(), &c.device).is_ok();
    assert!(load(&c.bytes), "the unmutated checkpoint must load");
    // Everything a load restores, to compare a mutant that loads with the original.
    let content = |b: &[u8]| {
        checkpoint::load_bytes(path, b, c.model.clone(), &c.device)
            .ok()
            .map(|(m, l)| {
                let w: Vec<Vec<f32>> = named_tensors(&m)
                    .into_iter()
                    .map(|t| t.value.into_data().iter::<f32>().collect())
                    .collect();
                (w, l.state, l.optimizer, l.resolved)
            })
    };
    let original = content(&c.bytes).unwrap();
    let _ = &c.cfg;
    let n = u64::from_le_bytes(c.bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(c.bytes[8..8 + n].to_vec()).unwrap();
    let data = c.bytes[8 + n..].to_vec();
    let (mut byte_mutants_loaded, mut benign) = (0u64, 0u64);
    fuzz("checkpoint", cases(10_000), 4, |rng| {
        let b = match rng.below(5) {
            // Bytes anywhere, the header length set to extremes: a mutant that loads must
            // restore exactly the original content (JSON whitespace inserted in the header
            // together with a header length one larger is such a mutant).
            0 | 1 => {
                let mut b = c.bytes.clone();
                mutate(rng, &mut b, &[(0, 8, false)]);
                if b != c.bytes
                    && let Some(got) = content(&b)
                {
                    if got == original {
                        benign += 1;
                    } else {
                        byte_mutants_loaded += 1;
                    }
                }
                b
            }
            // A number of the safetensors header (shape, offsets) set to an extreme.
            2 => with_header(&extreme_number(rng, &header), &data),
            // The same, with every hash recomputed: the checks behind the hashes.
            3 => {
                let h = extreme_number(rng, &header);
                match rehash(&with_header(&h, &data), |m| m.to_string()) {
                    Some(b) => b,
                    None => with_header(&h, &data),
                }
            }
            // A number of the training state set to an extreme, hashes recomputed.
            _ => {
                let mut r2 = Rng(rng.next());
                match rehash(&c.bytes, |m| extreme_number(&mut r2, m)) {
                    Some(b) => b,
                    None => c.bytes.clone(),
                }
            }
        };
        load(&b)
    });
    assert_eq!(
        byte_mutants_loaded, 0,
        "byte-level corruption must never load with changed content"
    );
    eprintln!(
        "fuzz checkpoint: {benign} byte mutants loaded with the original content (formatting only)"
    );
}

/// A `.npy` file made by NumPy (`tests/fixtures/make_npy.py`).
fn npy_fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/npy")
            .join(rel),
    )
    .unwrap()
}

#[test]
fn fuzz_npy_reader() {
    use noisescale::data::npy;
    let path = Path::new("fuzz/x.npy");
    let files = [
        npy_fixture("images/test_x.npy"),
        npy_fixture("images/test_y.npy"),
        npy_fixture("regression/train_x.npy"),
        npy_fixture("regression/train_y.npy"),
    ];
    fuzz("npy", cases(50_000), 7, |rng| {
        let mut b = files[rng.below(files.len())].clone();
        let header_end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        if rng.chance(2) {
            // A number of the header dict (shape, version digits) set to an extreme, the
            // header kept as text.
            let text = String::from_utf8_lossy(&b[..header_end]).into_owned();
            let start = text.find('{').unwrap_or(0);
            let h = format!("{}{}", &text[..start], extreme_number(rng, &text[start..]));
            let mut nb = h.into_bytes();
            nb.extend_from_slice(&b[header_end.min(b.len())..]);
            b = nb;
        } else {
            // Bytes; the header length (u16 LE at 8, u32 LE for version 2) and the version at
            // extremes.
            mutate(rng, &mut b, &[(8, 4, false), (4, 4, false)]);
        }
        match npy::parse(&b, path) {
            Ok(a) => {
                assert_eq!(a.values.len(), a.shape.iter().product::<usize>());
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("fuzz/"), "{e}");
                false
            }
        }
    });
}

#[test]
fn fuzz_npz_reader() {
    use noisescale::data::npy;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.npz");
    let archives = [
        npy_fixture("images/train.npz"),
        npy_fixture("regression/test.npz"),
    ];
    fuzz("npz", cases(5_000), 8, |rng| {
        let mut b = archives[rng.below(archives.len())].clone();
        // The central directory's size and offset (end record, the last 22 bytes), the first
        // entry's compressed and uncompressed sizes in its local header and in the central
        // directory (what the reader trusts), at extremes; bytes anywhere.
        let n = b.len();
        let cd = u32::from_le_bytes(b[n - 6..n - 2].try_into().unwrap()) as usize;
        let fields = [
            (n - 10, 4, false),
            (n - 6, 4, false),
            (18, 4, false),
            (22, 4, false),
            (cd + 20, 4, false),
            (cd + 24, 4, false),
        ];
        mutate(rng, &mut b, &fields);
        std::fs::write(&path, &b).unwrap();
        let mut ok = true;
        for member in ["x", "y"] {
            match npy::read_npz_member(&path, member, &mut |_, _| {}) {
                Ok(a) => assert_eq!(a.values.len(), a.shape.iter().product::<usize>()),
                Err(e) => {
                    assert!(e.to_string().contains("train.npz"), "{e}");
                    ok = false;
                }
            }
        }
        ok
    });
}

#[test]
fn fuzz_image_decoder() {
    use noisescale::data::folder;
    let path = Path::new("fuzz/image.png");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/folder/sized");
    let files = [
        std::fs::read(dir.join("train/cat/a.png")).unwrap(),
        std::fs::read(dir.join("train/cat/b.jpg")).unwrap(),
        std::fs::read(dir.join("train/dog/d.png")).unwrap(),
    ];
    // PNG: width and height in the IHDR chunk (big-endian at 16 and 20); JPEG: bytes anywhere.
    fuzz("image", cases(20_000), 9, |rng| {
        let mut b = files[rng.below(files.len())].clone();
        mutate(rng, &mut b, &[(16, 4, true), (20, 4, true)]);
        match folder::decode(&b, path) {
            Ok(img) => {
                assert!(img.width() <= folder::MAX_SIDE && img.height() <= folder::MAX_SIDE);
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("fuzz/"), "{e}");
                false
            }
        }
    });
}

/// Token streams: files of any length (partial tokens included) under every format, contexts
/// and validation starts at extremes. An accepted stream cuts into windows that stay inside
/// the file; the rest are named errors.
#[test]
fn fuzz_token_streams() {
    use noisescale::data::tokens::{TokenConfig, TokenFormat};
    use noisescale::data::{EvalSet, TrainSet};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.bin");
    let extreme = |rng: &mut Rng, n: usize| match rng.below(4) {
        0 => 0,
        1 => usize::MAX - rng.below(3),
        2 => n + rng.below(3),
        _ => rng.below(n.max(1) + 2),
    };
    fuzz("tokens", cases(2_000), 10, |rng| {
        let len = rng.below(600);
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        std::fs::write(&path, &b).unwrap();
        let format = [TokenFormat::Bytes, TokenFormat::U16, TokenFormat::U32][rng.below(3)];
        let config = TokenConfig {
            format,
            context: extreme(rng, 40),
            validation_from: (!rng.chance(8)).then(|| extreme(rng, len)),
        };
        match config.open(&path) {
            Ok((train, valid)) => {
                let n = TrainSet::len(&train);
                assert!(n >= 1 && train.tokens().end <= valid.tokens().start);
                let last = (n - 1) as u32;
                let share = train.assemble(&[0, last], 1, 3);
                assert_eq!(noisescale::data::Share::len(&share), 2);
                let spread = valid.spread(rng.below(5));
                assert!(EvalSet::len(&spread) <= valid.windows());
                true
            }
            Err(e) => {
                assert!(e.to_string().contains("tokens.bin"), "{e}");
                false
            }
        }
    });
}
