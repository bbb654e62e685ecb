"""Ranking an instruction's responses: PairRM (every response against every other one, in both orders) or a reward
model (each response scored alone, lab.reward). RANKERS holds the two kinds; a spec's checkpoint says which it is.

PairRM (`llm-blender/PairRM`, a DeBERTa-v3-large cross-encoder) reads `<source> <candidate1> <candidate2>` and gives
a logit that candidate 1 is better. We call llm-blender's model directly, but batch differently: its `rank` runs the
K*(K-1) ordered pairs as K*(K-1) sequential forward passes; here each instruction is encoded once and the ordered
pairs of several instructions go through the model together, `batch_size` rows per pass, rows of similar length
side by side (what keeps a GPU busy). The logits equal llm-blender's `rank` / `compare` (tests/test_rank.py).

Ranker specs (`--ranker`):
  - `llm-blender/PairRM` (default) or another hub id of an llm-blender ranker: downloaded with the hub's own cache.
    Its config names the backbone `microsoft/deberta-v3-large`, which is fetched too. Offline and not cached, this
    fails with a message that says so (llm-blender itself says "reward model type not supported").
  - a local folder holding an llm-blender ranker checkpoint (config.json with `ranker_type`, model.safetensors).
    Its `model_name` may name a subfolder (the backbone); that makes a folder self-contained and movable.
  - `tiny-random`: a 2-layer random DeBERTa-v2 PairRM with a tokenizer trained here, built once into the lab cache
    fully offline. Its rankings are noise: tests and smoke runs only.
  - a reward model (lab.reward): a hub id or folder whose config.json names a *ForSequenceClassification with one
    label (e.g. Skywork/Skywork-Reward-V2-Qwen3-0.6B), or `tiny-reward` (random weights: noise).
A hub id is downloaded first and its config.json decides the kind.
Inputs are cut to PairRM's limits (source 1224, candidate 412 tokens): long answers are ranked on their beginning;
a reward model reads at most its own maximum length.

rankings.jsonl's format, `ranking_record` and the readers `latest_rankings` and `preference` are
lab/records/rankings.py; each kind's fields are its RANKERS entry's `fields`.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab import efficiency, reward
from lab.config import Settings, opt
from lab.errors import LabError
from lab.models import HUB_ID, build_once, cache_dir, pick_device
from lab.precision import DEVICE_HELP, DTYPE_HELP
from lab.progress import Progress
from lab.records.rankings import latest_rankings, ranking_record
from lab.records.samples import Group, groups
from lab.store import ASSET_FILES, Run, asset, once

DEFAULT_RANKER = "llm-blender/PairRM"
PAIRRM_SOURCE_MAX, PAIRRM_CANDIDATE_MAX = 1224, 412  # PairRM's training lengths, in tokens
CPU_ATTENTION_BUDGET = 2 ** 21  # attention scores (rows x heads x length^2) per CPU pass: ~8 MB of fp32
QUANTIZE_SKIP = ("query_proj", "key_proj")  # not int8 in int8 mode (bf16 or fp32): the softmax amplifies rounding


@dataclass
class RankConfig(Settings):
    ranker: str = opt(DEFAULT_RANKER, "PairRM (hub id, local llm-blender ranker folder, or 'tiny-random') or a "
                      "reward model (hub id or folder of a one-label sequence classifier, e.g. "
                      "Skywork/Skywork-Reward-V2-Qwen3-0.6B, or 'tiny-reward'); the tiny ones have random weights: "
                      "their rankings are noise", label="Ranker")
    batch_size: int = opt(32, "rows per forward pass: PairRM's ordered response pairs (K responses give K*(K-1) per "
                          "instruction), a reward model's responses (K per instruction)", label="Rows per pass")
    quantize: str = opt("none", "int8 (PairRM only): dynamic int8 quantization of the linear layers, CPU only: "
                        "2-2.6x faster on CPUs with bf16 units (~1.9x on others), rankings that agree with fp32 "
                        "(bench/rank.py)",
                        ("none", "int8"), label="Quantize (CPU)")
    device: str = opt("auto", DEVICE_HELP)
    dtype: str = opt("auto", DTYPE_HELP)

    def validate(self) -> "RankConfig":
        if self.batch_size < 1:
            raise LabError(f"--batch-size must be at least 1 (got {self.batch_size}); 20 fits 5 responses at once.")
        return self


# ---- transformers-5 compatibility (the only place that patches anything) --------------------------------------------
def _install_shims() -> None:
    """llm-blender 0.0.2 was written for transformers 4. Two names it uses were removed in v5:
    `transformers.utils.hub.TRANSFORMERS_CACHE` (imported at module load) and `tokenizer.batch_encode_plus`
    (called by its collator). Both are restored as thin aliases, only where missing, before llm_blender is imported."""
    import transformers.utils.hub as tf_hub
    from huggingface_hub import constants
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    if not hasattr(tf_hub, "TRANSFORMERS_CACHE"):
        tf_hub.TRANSFORMERS_CACHE = constants.HF_HUB_CACHE
    if not hasattr(PreTrainedTokenizerBase, "batch_encode_plus"):
        def batch_encode_plus(self, batch_text_or_text_pairs, **kwargs):  # v4 name of __call__ on a batch
            return self(batch_text_or_text_pairs, **kwargs)

        PreTrainedTokenizerBase.batch_encode_plus = batch_encode_plus


def blender_module():
    """`llm_blender`, imported after the shims."""
    _install_shims()
    import llm_blender

    return llm_blender


# ---- the tiny random PairRM ---------------------------------------------------------------------------------------
def _train_tokenizer(out: Path, vocab_size: int = 2000):
    """A small Unigram tokenizer trained on the bundled instructions, in DeBERTa-v2's format (no hub needed)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import DebertaV2Tokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    texts = [json.loads(line)["prompt"] for f in sorted(asset(k) for k in ASSET_FILES)
             for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)]  # every ASCII character is a piece, so plain English never hits [UNK]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]",
                                      initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    deberta_tok = DebertaV2Tokenizer(vocab=vocab, unk_id=specials.index("[UNK]"))
    deberta_tok.save_pretrained(out)
    return deberta_tok


def build_random_pairrm(out: Path, backbone: dict | None = None, seed: int = 0) -> None:
    """Write an llm-blender PairRM checkpoint with random weights to `out`:
        out/config.json          llm-blender RankerConfig (model_name "backbone": the subfolder below)
        out/model.safetensors    the CrossCompareReranker state (backbone + head, embeddings resized for its tokens)
        out/backbone/            a DeBERTa-v2 config + random weights + tokenizer
    `backbone` overrides DebertaV2Config fields (default: 2 layers of width 64; see bench/rank.py for PairRM's)."""
    import torch
    from safetensors.torch import save_model
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(seed)
    tok = _train_tokenizer(out / "backbone")
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=512, relative_attention=True, position_buckets=256,
                 pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm",
                 share_att_key=True, type_vocab_size=0,
                 initializer_range=0.2)  # wider than BERT's 0.02 so that random logits differ visibly per response
    DebertaV2Model(DebertaV2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                   **{**shape, **(backbone or {})})).save_pretrained(out / "backbone")
    config = {"ranker_type": "pairranker", "model_type": "deberta", "model_name": "backbone",
              "source_maxlength": PAIRRM_SOURCE_MAX, "candidate_maxlength": PAIRRM_CANDIDATE_MAX, "n_tasks": 1,
              "drop_out": 0.05, "inference_mode": "bubble", "fp16": True}
    ranker, _, _ = _blender_parts(out, config, load_weights=False)
    save_model(ranker, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def tiny_random_path() -> str:
    return str(build_once(cache_dir() / "tiny-random-pairrm", build_random_pairrm))


# ---- resolving and loading ----------------------------------------------------------------------------------------
def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:  # the hub raises many types: offline, not found, gated, connection
        raise LabError(_hub_message(repo_id, e)) from e


PAIRRM = "llm-blender/PairRM"
OFFLINE_RANKER = "tiny-random"  # the one ranker that loads with no Hub: random weights, for a smoke test only


def hub_reachable(timeout_s: float = 1.5) -> bool:
    """Whether the Hugging Face Hub can be reached: not with HF_HUB_OFFLINE set, else a TCP connect to its endpoint
    (HF_ENDPOINT's host) within timeout_s. Not cached: a form asks once when the app is built."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def in_local_cache(repo_id: str) -> bool:
    """Whether the Hub's cache on this machine holds repo_id's config (a download made earlier loads offline)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def default_ranker() -> tuple[str, str]:
    """(the ranker a form starts on, why, '' for the usual one): PairRM where it can load (cached here, or the Hub
    reachable); else the offline smoke-test ranker, since PairRM would fail on the first Rank."""
    if in_local_cache(PAIRRM) or hub_reachable():
        return PAIRRM, ""
    return OFFLINE_RANKER, (f"The Hugging Face Hub is not reachable from this machine (HF_HUB_OFFLINE is set, or no "
                            f"network) and {PAIRRM} is not in its cache, so the ranker starts on {OFFLINE_RANKER} "
                            f"(random weights: a smoke test of the pipeline, not a ranking). Download PairRM once "
                            f"where the Hub is reachable (`hf download {PAIRRM}`) to rank for real.")


def _hub_message(repo_id: str, err: Exception) -> str:
    name, text = type(err).__name__, str(err)
    if "RepositoryNotFound" in name or "404" in text:
        return f"Ranker {repo_id} was not found on the Hugging Face Hub: check the id, or give a local folder."
    return (f"Could not get ranker {repo_id} from the Hugging Face Hub ({name}): this machine looks offline, or "
            "HF_HUB_OFFLINE is set, and the model is not in the local cache. Download it once where the hub is "
            f"reachable (`hf download {repo_id}`), give a local folder, or use --ranker tiny-random for a smoke test.")


def resolve_ranker(spec: str) -> Path:
    """Spec -> a local folder holding a ranker checkpoint of one of the RANKERS kinds (kind_of says which)."""
    spec = (spec or "").strip()
    tiny = {kind.tiny: kind.tiny_path for kind in RANKERS.values()}
    if spec in tiny:
        return Path(tiny[spec]())
    path = Path(spec).expanduser()
    if path.is_dir():
        kind_of(path)
        return path.resolve()
    if HUB_ID.match(spec):
        folder = _download(spec)
        kind_of(folder, spec)
        return folder
    raise LabError(f"Unknown ranker {spec!r}: give a hub id ({DEFAULT_RANKER}, or a reward model such as "
                   f"{REWARD_EXAMPLE}), a local folder, 'tiny-random' or 'tiny-reward'.")


def kind_of(folder: Path, spec: str | None = None) -> str:
    """The RANKERS kind of a checkpoint folder, from its config.json; a LabError when it is none of them."""
    cfg = folder / "config.json"
    config = json.loads(cfg.read_text(encoding="utf-8")) if cfg.exists() else {}
    for name, kind in RANKERS.items():
        if kind.recognise(config):
            return name
    raise LabError(f"{spec or folder} is neither an llm-blender ranker checkpoint (config.json with 'ranker_type') "
                   "nor a reward model (config.json naming a *ForSequenceClassification with one label): point "
                   f"--ranker at a PairRM ({DEFAULT_RANKER}), a reward model ({REWARD_EXAMPLE}), 'tiny-random' or "
                   "'tiny-reward'.")


def _backbone_name(folder: Path, config: dict) -> str:
    """The backbone llm-blender builds: a subfolder of the checkpoint when it names one, else a hub id."""
    name = config.get("model_name") or ""
    return str(folder / name) if name and (folder / name).is_dir() else name


def _blender_parts(folder: Path, config: dict, load_weights: bool = True):
    """(ranker nn.Module, tokenizer, collator) through llm-blender's own builder."""
    lb = blender_module()
    from llm_blender.blender.blender_utils import load_ranker as lb_load_ranker

    with warnings.catch_warnings():  # dataclasses_json warns about every field left None; llm-blender leaves many
        warnings.simplefilter("ignore", RuntimeWarning)
        cfg = lb.RankerConfig.from_dict({**config, "model_name": _backbone_name(folder, config),
                                         "load_checkpoint": str(folder) if load_weights else None})
    if cfg.ranker_type != "pairranker":
        raise LabError(f"{folder}: ranker_type {cfg.ranker_type!r} is not a pairwise ranker; the lab ranks with "
                       "PairRM-style pair rankers (ranker_type 'pairranker').")
    try:
        return lb_load_ranker(cfg)
    except OSError as e:  # the backbone (e.g. microsoft/deberta-v3-large) is not reachable
        raise LabError(_hub_message(cfg.model_name, e)) from e


@dataclass
class Ranker:
    """A loaded pair ranker: the llm-blender CrossCompareReranker, its tokenizer and collator."""

    spec: str
    path: str
    model: Any
    tokenizer: Any
    collator: Any
    device: str
    quantize: str = "none"
    kind: str = "pairrm"

    @property
    def limits(self) -> tuple[int, int]:
        """(source, candidate) maximum lengths in tokens."""
        return self.collator.source_maxlength, self.collator.candidate_maxlength


_CACHE: dict[tuple, Ranker] = {}


def load_ranker(spec: str = DEFAULT_RANKER, device: str | None = None, dtype: str | None = None,
                quantize: str = "none"):
    """Load (or reuse) a ranker of any kind (a PairRM Ranker, a lab.reward.RewardModel) in the dtype of
    lab.precision's table (fp32 on CPU) unless `dtype` says otherwise; quantize "int8": PairRM's linear layers
    dynamically quantized (CPU only)."""
    folder = resolve_ranker(spec)
    dev, torch_dtype = pick_device(device, dtype)
    if quantize == "int8" and dev != "cpu":
        raise LabError(f"--quantize int8 runs on CPU only (PyTorch's dynamic int8 kernels); on {dev} use "
                       "--quantize none (the GPU's 16-bit dtype is already fast).")
    key = (str(folder), dev, str(torch_dtype), quantize)
    if key not in _CACHE:
        _CACHE.clear()  # one ranker per process: they are big
        _CACHE[key] = RANKERS[kind_of(folder)].load(spec, folder, dev, torch_dtype, quantize)
    return _CACHE[key]


def _load_pairrm(spec: str, folder: Path, dev: str, torch_dtype, quantize: str) -> Ranker:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model, tok, collator = _blender_parts(folder, config)
    model = model.to(device=dev, dtype=torch_dtype).eval()
    return Ranker(spec, str(folder), quantize_int8(model) if quantize == "int8" else model, tok, collator, dev,
                  quantize)


def quantize_int8(model):
    """Dynamic int8 quantization (torch.ao.quantization.quantize_dynamic) of the backbone's linear layers: int8
    weights with one scale per output channel, activations quantized per pass. The query and key projections
    (QUANTIZE_SKIP) are not quantized: rounding there is amplified by the attention softmax. They run in bf16
    where the CPU has native bf16 matrix units (AVX512-BF16 / AMX; bf16 keeps 8 significant bits per value where
    int8 shares 8 bits across a whole tensor), fp32 elsewhere. The head stays fp32. Speed and agreement with fp32
    are measured by bench/rank.py; docs/pairs.md has the figures and the variants that did worse."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    backbone = model.pretrained_model
    spec = {name: per_channel_dynamic_qconfig for name, m in backbone.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith(QUANTIZE_SKIP)}
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices: the API still works in 2.13
        warnings.simplefilter("ignore")
        backbone = quantize_dynamic(backbone, spec, dtype=torch.qint8)
    if native_bf16():
        for name, m in backbone.named_modules():
            if isinstance(m, torch.nn.Linear) and name.endswith(QUANTIZE_SKIP):
                in_bf16(m)
    model.pretrained_model = backbone
    return model


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively: x86 with AVX512-BF16 or AMX (oneDNN's own bf16 check
    also passes on AVX512 CPUs without them, Skylake / Cascade Lake, where bf16 is emulated and slower than fp32);
    on ARM oneDNN's check (bf16 dot products)."""
    import platform

    import torch

    cpu = torch.cpu
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return True
    if hasattr(cpu, "get_capabilities") and cpu.get_capabilities().get("amx_bf16"):
        return True
    if platform.machine().lower() in ("arm64", "aarch64"):
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def in_bf16(module):
    """Compute `module` in bf16 (its weights stored in bf16) while it takes and returns the model's dtype."""
    import torch

    dtype = next(module.parameters()).dtype
    module.to(torch.bfloat16)
    module.register_forward_pre_hook(lambda _, args: (args[0].to(torch.bfloat16), *args[1:]))
    module.register_forward_hook(lambda _, args, out: out.to(dtype))
    return module


# ---- all ordered pairs in one batch -------------------------------------------------------------------------------
def _pair_rows(ranker: Ranker, source: str, candidates: list[str]) -> tuple[list[tuple], list[bool]]:
    """Encode one instruction once (llm-blender's collator: prefixes, truncation), then list its K*(K-1) ordered
    pairs as rows (source ids, mask, cand1 ids, mask, cand2 ids, mask), each a 1-D tensor without padding.
    Also returns, per candidate, whether truncation cut it."""
    enc = ranker.collator([{"source": source, "candidates": candidates}])
    src_ids, src_mask = enc["source_ids"][0], enc["source_attention_mask"][0]
    cand_ids, cand_mask = enc["candidate_ids"][0], enc["candidate_attention_mask"][0]  # [K, C]
    k = len(candidates)
    rows = [(src_ids, src_mask, cand_ids[i], cand_mask[i], cand_ids[j], cand_mask[j])
            for i in range(k) for j in range(k) if i != j]
    full = [len(ranker.tokenizer(ranker.collator.candidate_prefix + c)["input_ids"]) for c in candidates]
    return rows, [n > int(m.sum()) for n, m in zip(full, cand_mask)]


def _forward_rows(ranker: Ranker, rows: list[tuple]):
    """One forward pass over rows -> logits [len(rows)] (logit that cand1 beats cand2 after the source)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    pad = ranker.tokenizer.pad_token_id
    cols = list(zip(*rows))
    # right padding: llm-blender's cat_ids cuts each part at its last [SEP] and moves padding to the end
    batch = [pad_sequence(list(c), batch_first=True, padding_value=pad if n % 2 == 0 else 0).to(ranker.device)
             for n, c in enumerate(cols)]
    with torch.inference_mode():
        return ranker.model._forward(*batch)["logits"].float().cpu()


def _chunks(length: list[int], order: list[int], batch_size: int, budget: int | None) -> list[list[int]]:
    """Consecutive runs of `order` (rows sorted by length) of at most batch_size rows and, given a budget, at most
    `budget` attention-score elements (rows x longest row squared; the caller folds in the heads)."""
    out: list[list[int]] = []
    for i in order:
        chunk = out[-1] if out else None
        if chunk and len(chunk) < batch_size and (budget is None or (len(chunk) + 1) * length[i] ** 2 <= budget):
            chunk.append(i)
        else:
            out.append([i])
    return out


def _forward_by_length(ranker: Ranker, rows: list[tuple], batch_size: int):
    """Logits for all rows, in their order. Rows of similar length share a pass, so little compute goes to padding
    (attention cost grows with the square of the longest row in a batch). On CPU a pass also holds at most
    CPU_ATTENTION_BUDGET attention scores per layer: bigger passes spill the attention tensors out of the caches
    and got slower per row (bench/rank.py; docs/pairs.md), which is what made batching lose to llm-blender there."""
    import torch

    length = [int(r[1].sum() + r[3].sum() + r[5].sum()) for r in rows]
    order = sorted(range(len(rows)), key=length.__getitem__)
    heads = getattr(ranker.model.pretrained_model.config, "num_attention_heads", 1)
    budget = CPU_ATTENTION_BUDGET // heads if ranker.device == "cpu" else None
    logits = torch.empty(len(rows))
    for chunk in _chunks(length, order, batch_size, budget):
        logits[chunk] = _forward_rows(ranker, [rows[i] for i in chunk])
    return logits


def compare_all(ranker: Ranker, groups: list[tuple[str, list[str]]], batch_size: int = 32) -> list[dict]:
    """For each (source, K candidates): {"logits": K x K list (logits[i][j]: i beats j when shown first; diagonal
    0), "truncated": [bool] * K}. The ordered pairs of all groups run together, `batch_size` rows per pass."""
    import torch

    encoded = [_pair_rows(ranker, s, c) for s, c in groups]
    rows = [r for rs, _ in encoded for r in rs]
    logits = _forward_by_length(ranker, rows, batch_size)
    out, at = [], 0
    for (_, cands), (rs, truncated) in zip(groups, encoded):
        k = len(cands)
        matrix = torch.zeros(k, k)
        ii, jj = zip(*[(i, j) for i in range(k) for j in range(k) if i != j])
        matrix[list(ii), list(jj)] = logits[at:at + len(rs)]
        at += len(rs)
        out.append({"logits": matrix.tolist(), "truncated": truncated})
    return out


def scores_and_ranks(logits: list[list[float]]) -> tuple[list[float], list[int]]:
    """llm-blender's aggregation: score_i = sum_{j != i} (logits[i][j] - logits[j][i]) / K (its "mean" runs over
    the K x K matrix whose diagonal is 0, so it divides by K, not K-1); rank 1 = highest score."""
    import numpy as np

    blender_module()  # importing any llm_blender submodule runs its package __init__, which needs the shims
    from llm_blender.gpt_eval.utils import get_ranks_from_scores, get_scores_from_cmps

    scores = get_scores_from_cmps(np.asarray([logits], dtype=np.float32))
    return scores[0].tolist(), get_ranks_from_scores(scores)[0].tolist()


def pairrm_fields(ranker: Ranker, groups: list[tuple[str, list[str]]], batch_size: int = 32) -> list[dict]:
    """For each (source, K candidates) the PairRM fields of its rankings record (format in the module docstring)."""
    src_max, cand_max = ranker.limits
    out = []
    for result in compare_all(ranker, groups, batch_size):
        scores, ranks = scores_and_ranks(result["logits"])
        out.append({"scores": scores, "ranks": ranks, "logits": result["logits"], "quantize": ranker.quantize,
                    "source_max_length": src_max, "candidate_max_length": cand_max, "truncated": result["truncated"]})
    return out


# ---- the kinds of ranker --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankerKind:
    label: str  # in the app, the docs and the pairs statistics
    pointwise: bool  # True: scores each response alone (K passes); False: every ordered pair (K*(K-1) passes)
    tiny: str  # the spec of its offline random model (noise)
    tiny_path: Callable[[], str]
    recognise: Callable[[dict], bool]  # a checkpoint's config.json -> whether it is this kind
    load: Callable[..., Any]  # (spec, folder, device, torch dtype, quantize) -> a loaded ranker
    fields: Callable[..., list[dict]]  # (loaded, [(prompt, responses)], batch size) -> each record's own fields
    rows: Callable[[int], int]  # model rows for K responses


REWARD_EXAMPLE = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"
RANKERS: dict[str, RankerKind] = {
    "pairrm": RankerKind("PairRM", False, "tiny-random", tiny_random_path, lambda c: "ranker_type" in c,
                         _load_pairrm, pairrm_fields, lambda k: k * (k - 1)),
    "reward": RankerKind("Reward model", True, reward.TINY, reward.tiny_path, reward.is_reward_config, reward.load,
                         reward.rank_fields, lambda k: k),
}


# ---- the stage ----------------------------------------------------------------------------------------------------
def _batches(groups: list[Group], rows_per_batch: int, rows_of: Callable[[int], int]) -> list[list[Group]]:
    """Consecutive instructions whose model rows fit in one batch (at least one instruction each)."""
    out: list[list[Group]] = []
    rows = 0
    for g in groups:
        n = rows_of(len(g.indices))
        if not out or rows + n > rows_per_batch:
            out.append([])
            rows = 0
        out[-1].append(g)
        rows += n
    return out


def run(run: Run, cfg, progress: Progress | None = None) -> dict:
    """Rank every instruction's responses with the ranker (PairRM or a reward model) and append rankings.jsonl.
    Resumes: an instruction whose last record of that ranker has the same responses is skipped. Returns a summary
    for the CLI / app. Holds the run's "rank" lock: a second ranking of the run is refused."""
    cfg.validate()
    with run.lock("rank"), efficiency.measure(run, "rank"):
        return _rank_locked(run, cfg, progress)


def _rank_locked(run: Run, cfg, progress: Progress | None) -> dict:
    progress = progress or Progress("ranking", quiet=True)
    found = groups(run)
    single = [g.instruction_id for g in found if len(g.indices) < 2]
    done = latest_rankings(run, ranker=cfg.ranker)
    todo = [g for g in found if len(g.indices) >= 2 and not _is_done(done.get(g.instruction_id), g, cfg)]
    summary = {"run": run.name, "ranker": cfg.ranker, "instructions": len(found), "ranked": 0,
               "already_ranked": len(found) - len(single) - len(todo), "single_response": single}
    if not todo and not summary["already_ranked"]:
        raise LabError(f"Nothing to rank in run '{run.name}': every instruction has a single response. A ranker "
                       "compares responses, so sample with --k 2 or more.", ui=f"Nothing to rank in run "
                       f"'{run.name}': every instruction has a single response. A ranker compares responses: sample "
                       "again with Responses each (K) 2 or more.")
    if not todo:
        return {**summary, "message": "Every instruction is already ranked with this ranker; nothing to do."}
    progress.loading(f"ranker {cfg.ranker}")
    ranker = load_ranker(cfg.ranker, cfg.device, cfg.dtype, cfg.quantize)
    kind = RANKERS[ranker.kind]
    started = once(lambda: run.record_stage("rank", cfg.to_dict()))  # with the first rankings, not before
    start = time.time()
    for batch in _batches(todo, cfg.batch_size, kind.rows):
        progress.check_stop()
        results = kind.fields(ranker, [(g.prompt, g.texts) for g in batch], cfg.batch_size)
        started()
        summary["ranked"] += run.append("rankings", [ranking_record(g, r, ranker) for g, r in zip(batch, results)])
        progress.update(summary["ranked"], len(todo), f"ranking with {kind.label}")
    progress.close()
    seconds = time.time() - start
    return {**summary, "kind": ranker.kind, "seconds": round(seconds, 3),
            "seconds_per_instruction": round(seconds / len(todo), 4), "file": str(run.file("rankings"))}


def _is_done(record: dict | None, group: Group, cfg) -> bool:
    return (bool(record) and record["ranker"] == cfg.ranker and record.get("quantize", "none") == cfg.quantize
            and record["sample_indices"] == group.indices)

