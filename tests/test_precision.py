"""The device / dtype / training-precision table (lab.precision), with the GPU stubbed where this machine has none,
and the training paths that read it (lab.train): fp32 LoRA on a 16-bit base, 4-bit refused where it cannot run."""
import json

import pytest
import torch

from lab import models, precision
from lab.errors import LabError
from lab.train import TrainConfig, check_device, load_policy, train_adapter, trainer_args


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    """A CUDA GPU as torch.cuda reports it. is_bf16_supported says True, as it does on a T4 (emulation): the
    table must not believe it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def no_gpu(monkeypatch, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("gpu, capability, load, train_load, mode", [
    ("NVIDIA H100 80GB HBM3", (9, 0), "bfloat16", "bfloat16", "bf16"),
    ("NVIDIA A100-SXM4-40GB", (8, 0), "bfloat16", "bfloat16", "bf16"),
    ("NVIDIA L4", (8, 9), "bfloat16", "bfloat16", "bf16"),
    ("Tesla T4", (7, 5), "float16", "float16", "fp16"),
    ("Tesla V100-SXM2-16GB", (7, 0), "float16", "float16", "fp16"),
    ("Tesla P100-PCIE-16GB", (6, 0), "float16", "float16", "fp16"),
    ("Tesla K80", (3, 7), "float32", "float32", "fp32"),
])
def test_the_table_follows_compute_capability_not_is_bf16_supported(monkeypatch, gpu, capability, load,
                                                                     train_load, mode):
    fake_gpu(monkeypatch, gpu, capability)
    dev = precision.probe("auto")
    assert (dev.kind, dev.name, dev.gpu, dev.capability) == ("cuda", "cuda", gpu, capability)
    assert precision.default_dtype(dev) == load
    assert models.pick_device("auto", "auto") == ("cuda", getattr(torch, load))
    prec = precision.train_precision(dev, "auto")
    assert (prec.load_dtype, prec.mode) == (train_load, mode)
    assert prec.trainer_flags == {"bf16": mode == "bf16", "fp16": mode == "fp16"}


def test_mps_is_picked_where_present_and_trains_in_fp32(monkeypatch):
    no_gpu(monkeypatch, mps=True)
    dev = precision.probe("auto")
    assert dev.kind == "mps" and models.pick_device()[0] == "mps"
    assert precision.default_dtype(dev) == "float16"
    assert precision.train_precision(dev, "auto") == precision.TrainPrecision("float32", "fp32")
    with pytest.raises(LabError, match="needs a CUDA GPU"):
        precision.train_precision(dev, "float16")


def test_cpu_row_and_what_a_cpu_refuses(monkeypatch):
    no_gpu(monkeypatch)
    dev = precision.probe("auto")
    assert dev == precision.Device("cpu", "cpu")
    assert precision.train_precision(dev, "auto") == precision.TrainPrecision("float32", "fp32")
    assert precision.train_precision(dev, "bfloat16").mode == "bf16"  # CPU autocast bf16 exists; slow but allowed
    with pytest.raises(LabError, match=r"fp16 needs a CUDA GPU.*float32"):
        precision.train_precision(dev, "float16")
    with pytest.raises(LabError, match="no CUDA GPU is visible"):
        precision.probe("cuda")
    with pytest.raises(LabError, match="no Apple GPU"):
        precision.probe("mps")
    with pytest.raises(LabError, match="Unknown device"):
        precision.probe("tpu")


def test_overrides_within_what_the_gpu_can_do(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    t4 = precision.probe("cuda:0")
    assert t4.name == "cuda:0"
    with pytest.raises(LabError, match=r"Tesla T4, compute capability 7\.5\) has no native bfloat16.*float16"):
        precision.resolve_dtype(t4, "bfloat16")
    with pytest.raises(LabError, match="no native bfloat16"):
        precision.train_precision(t4, "bfloat16")
    assert precision.train_precision(t4, "float32") == precision.TrainPrecision("float32", "fp32")
    fake_gpu(monkeypatch, "NVIDIA A100", (8, 0))
    assert precision.train_precision(precision.probe(), "float16").mode == "fp16"  # asked for: loss scaling


def test_cpu_trainer_args_use_no_mixed_precision(run, monkeypatch):
    no_gpu(monkeypatch)
    args = trainer_args(TrainConfig(model="tiny-random", max_steps=1), run.adapter_dir("a"), "cpu", 4, False)
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)


def test_a_float16_base_trains_fp32_lora_weights(run, monkeypatch):
    """The fp16 row: the base stays in float16, the LoRA weights TRL creates are fp32 (what the optimizer and the
    loss scaler need). Built on CPU with the real TRL + PEFT path; only the training step itself needs the GPU."""
    from lab.train import build_trainer
    from lab.progress import Progress

    no_gpu(monkeypatch)
    model, tok = models.load_weights("tiny-random", torch.float16)
    row = {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": [{"role": "assistant", "content": "Hi!"}],
           "rejected": [{"role": "assistant", "content": "No."}]}
    cfg = TrainConfig(model="tiny-random", max_steps=1, batch_size=1, gradient_checkpointing=False)
    trainer = build_trainer(model, tok, cfg, run.adapter_dir("a"), "cpu", [row, row], [], Progress("t", quiet=True))
    lora = {p.dtype for n, p in trainer.model.named_parameters() if "lora_" in n}
    base = {p.dtype for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert lora == {torch.float32} and base == {torch.float16}


def test_4bit_is_refused_on_cpu_before_anything_is_written(run, monkeypatch):
    no_gpu(monkeypatch)
    cfg = TrainConfig(model="tiny-random", max_steps=1, load_in_4bit=True)
    with pytest.raises(LabError, match=r"--load-in-4bit needs a CUDA GPU.*drop --load-in-4bit"):
        load_policy("tiny-random", cfg, None)
    pairs = run.pairs_file("judge")
    pairs.parent.mkdir(parents=True, exist_ok=True)
    row = {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": [{"role": "assistant", "content": "Hi!"}],
           "rejected": [{"role": "assistant", "content": "No."}], "meta": {"instruction_id": "i1"}}
    pairs.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(LabError, match="needs a CUDA GPU"):
        train_adapter(run, "judge", "q", cfg)
    assert not run.adapter_dir("q").exists()


def test_4bit_without_bitsandbytes_says_what_to_install(monkeypatch):
    import importlib.util

    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        real(name, *a))
    with pytest.raises(LabError, match="requirements-gpu.txt"):
        check_device(TrainConfig(load_in_4bit=True))


def test_4bit_settings_follow_the_precision(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    dev = precision.probe("cuda:1")
    kw = precision.quantization_kwargs(dev, precision.train_precision(dev, "auto"))
    q = kw["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.float16 and kw["device_map"] == {"": 1}
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)  # as TRL leaves a quantized model's LoRA weights
    assert precision.upcast_trainable(model, precision.TrainPrecision("float16", "fp16")) == 2
    assert {p.dtype for p in model.parameters()} == {torch.float32}
