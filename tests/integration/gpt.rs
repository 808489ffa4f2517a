//! The language model: the transformer against PyTorch (`bench/gpt_torch.py reference` made
//! `tests/fixtures/gpt/reference.safetensors`: a 2-block model's weights, a batch, its loss and
//! every gradient in float64), the causal mask, and an LM run on the sample clock that is
//! killed and resumed.

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use noisescale::data::tokens::TokenBatch;
use noisescale::model::gpt::{Gpt, GptConfig};
use noisescale::params::Grads;
use safetensors::SafeTensors;
use std::path::Path;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/gpt/reference.safetensors"
);

const TINY: GptConfig = GptConfig {
    vocab: 256,
    context: 8,
    layers: 2,
    heads: 2,
    dim: 16,
    dropout: 0.0,
};

fn f64s(st: &SafeTensors<'_>, name: &str) -> (Vec<f64>, Vec<usize>) {
    let v = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let data = v
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (data, v.shape().to_vec())
}

fn ids(st: &SafeTensors<'_>, name: &str, device: &Device) -> Tensor<2, Int> {
    let v = st.tensor(name).unwrap();
    let data: Vec<i64> = v
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Tensor::from_data(TensorData::new(data, [v.shape()[0], v.shape()[1]]), device)
}

/// PyTorch's name of a burn parameter and whether its matrix is stored transposed there
/// (`nn.Linear` keeps `[out, in]`, burn's `Linear` `[in, out]`).
fn torch_name(burn: &str) -> (String, bool) {
    let name = burn.replace(".gamma", ".weight").replace(".beta", ".bias");
    let linear = [".qkv.weight", ".proj.weight", ".fc.weight", ".out.weight"]
        .iter()
        .any(|s| name.ends_with(s));
    (name, linear)
}

/// Sets every parameter of the model to PyTorch's (as f32).
struct Load<'a> {
    path: Vec<String>,
    st: &'a SafeTensors<'a>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (name, transposed) = torch_name(&self.path.join("."));
        let (data, shape) = f64s(self.st, &format!("param.{name}"));
        let (id, tensor, mapper) = param.consume();
        let data: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        let mut value: Tensor<D> =
            Tensor::from_data(TensorData::new(data, shape), &tensor.device());
        if transposed {
            value = value.swap_dims(0, 1);
        }
        assert_eq!(value.dims(), tensor.dims(), "{name}");
        Param::from_mapped_value(id, value.require_grad(), mapper)
    }
}

fn device() -> Device {
    Device::flex().autodiff()
}

#[test]
fn loss_and_every_gradient_match_pytorch() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let device = device();
    let model = TINY.init(&device).map(&mut Load {
        path: Vec::new(),
        st: &st,
    });
    let batch = TokenBatch {
        tokens: ids(&st, "x", &device),
        targets: ids(&st, "y", &device),
    };
    let loss = model.loss(batch).loss;
    let got = loss.clone().into_scalar::<f32>() as f64;
    let want = f64s(&st, "loss").0[0];
    // float32 against float64: relative 1e-5 on the loss.
    assert!(
        ((got - want) / want).abs() < 1e-5,
        "loss {got} against PyTorch's {want}"
    );
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let grads = Grads::from_params(&model, &grads);
    assert_eq!(grads.tensors.len(), 28, "every parameter has a gradient");
    for (name, g) in grads.tensors {
        let (torch, transposed) = torch_name(&name);
        let (want, shape) = f64s(&st, &format!("grad.{torch}"));
        let want: Vec<f64> = if transposed {
            // PyTorch's [out, in] read as burn's [in, out].
            let (o, i) = (shape[0], shape[1]);
            (0..i)
                .flat_map(|c| (0..o).map(move |r| (r, c)))
                .map(|(r, c)| want[r * i + c])
                .collect()
        } else {
            want
        };
        let got: Vec<f32> = g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (f64::from(a) - b).abs())
            .fold(0.0, f64::max);
        // float32 arithmetic: within 1e-5 of the tensor's largest entry.
        assert!(
            worst <= 1e-5 * scale,
            "{name}: largest difference {worst:.3e} against entries up to {scale:.3e}"
        );
    }
}

#[test]
fn no_position_sees_a_later_token() {
    let device = Device::flex();
    let model: Gpt = noisescale::model::init_seeded(3, &device, |d| TINY.init(d));
    let a: Vec<i64> = (0..16).map(|i| (i * 37 % 256) as i64).collect();
    let mut b = a.clone();
    // Change the last three tokens of the first window.
    for t in b.iter_mut().take(8).skip(5) {
        *t = (*t + 101) % 256;
    }
    let logits = |ids: Vec<i64>| -> Vec<f32> {
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 8]), &device);
        model
            .forward(x)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (la, lb) = (logits(a), logits(b));
    let at = |l: &[f32], w: usize, t: usize| l[(w * 8 + t) * 256..(w * 8 + t + 1) * 256].to_vec();
    for t in 0..5 {
        assert_eq!(
            at(&la, 0, t),
            at(&lb, 0, t),
            "position {t} saw a later token"
        );
    }
    assert_ne!(
        at(&la, 0, 5),
        at(&lb, 0, 5),
        "the changed token itself must show"
    );
    for t in 0..8 {
        assert_eq!(
            at(&la, 1, t),
            at(&lb, 1, t),
            "another window leaked in at {t}"
        );
    }
}

/// A small LM run on the sample clock: B × 4 at sample 900, within the first epoch of
/// N = 1,023 windows of 32 bytes, ending within the second; evaluations every 300 samples.
fn lm_config(dir: &Path) -> std::path::PathBuf {
    let kjv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/text/kjv.txt");
    let text = format!(
        r#"
seed = 4
[data]
dataset = "tokens"
dir = "{}"
tokens = {{ format = "bytes", context = 32, validation_from = 32768 }}
[model]
kind = "gpt"
context = 32
layers = 1
heads = 2
dim = 32
[optimizer]
kind = "adamw"
weight_decay = 0.1
decay_on = "matrices"
clip_grad_norm = 1.0
[schedule]
kind = "increase-batch"
samples = 1400
lr = 0.003
batch_size = 8
momentum = 0.9
factor = 4.0
milestone_samples = [900]
warmup_samples = 100
[train]
eval_every = 300
eval_subset = 16
eval_batch_size = 64
checkpoint_every_updates = 5
"#,
        kjv.display()
    );
    let path = dir.join("lm.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_lm_run_killed_and_resumed_writes_the_uninterrupted_files() {
    use crate::common::{kill, resume_cmd, spawn, succeed, timing_free, train_cmd};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = lm_config(tmp.path());
    // Token file is 4.3 MB, but the config trains on its first 32 KiB.
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    succeed(train_cmd(&cfg, &a, &[]));
    let m = timing_free(&a);
    // 113 updates of 8 up to sample 900, then B = 32: 4 to the end of epoch 1 (the last one
    // of 27), 12 more to sample 1,400 (the last of 25).
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].updates.0, 113 + 4 + 12);
    assert_eq!(m[1].samples.0, 1_400);
    assert_eq!(m[1].batch_size, 32);
    let evals = std::fs::read_to_string(a.join("evals.jsonl")).unwrap();
    assert_eq!(evals.lines().count(), 5, "{evals}");
    // Killed once a mid-epoch checkpoint exists, then resumed.
    let mut child = spawn(train_cmd(&cfg, &b, &[]));
    let ckpt = b.join(noisescale::run_dir::CHECKPOINT_FILE);
    let start = std::time::Instant::now();
    while !ckpt.exists() && start.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    kill("-KILL", child.id());
    let _ = child.wait();
    succeed(resume_cmd(&b));
    // Debug text, as NaN (no accuracy) equals nothing.
    assert_eq!(format!("{:?}", timing_free(&b)), format!("{m:?}"));
    let strip = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("evals.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let mut v = v.as_object().unwrap().clone();
                v.remove("wall_seconds");
                serde_json::to_string(&v).unwrap()
            })
            .collect()
    };
    assert_eq!(strip(&b), strip(&a));
    // The trained model continues a prompt: the same seed gives the same text, another seed
    // another.
    let sample = |seed: &str| {
        let o = std::process::Command::new(crate::common::BIN)
            .args(["sample", b.to_str().unwrap(), "--prompt", "And God said"])
            .args(["--tokens", "40", "--seed", seed])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let (one, again, other) = (sample("1"), sample("1"), sample("2"));
    assert!(one.starts_with("And God said") && one.len() > "And God said".len() + 20);
    assert_eq!(one, again);
    assert_ne!(one, other);
}
