"""Judge backends: who answers a judge prompt. lab.judge decides what to ask and what the answers mean.

- ApiBackend("groq" | "openai"): one chat-completions request per prompt through the provider's own SDK (groq, or
  openai with any base URL: OpenAI, Together, Fireworks, vLLM, Ollama). JSON mode on; SDK retries off, because the
  retries here share the client-side rate limiter (a retry is a request too) and honour Retry-After for every worker.
- LocalBackend: a transformers chat model through lab.models. The lab opens its reply with `{"reasoning": "`; the
  model writes its reasoning (greedy; its closing quote and end of turn are held back for the first
  min_reasoning_tokens, so a 135M model does not stop at "A"); then the lab appends `", "verdict": "` and reads the
  verdict from the next-token probabilities of the labels A / B / tie: a 135M model garbles free-text verdicts, but
  the label probabilities always give a verdict and a confidence. What is recorded as the reasoning and the raw
  text is only what the model wrote; the lab's own scaffolding is never passed off as the model's.

API keys are kept only on the client object: never in a record, a log line or an error message (messages are
scrubbed of the key and of any URL userinfo). Where a key may go (resolve_key), so that an owner's key never reaches a
server someone else chose (a visitor of a public Space typing a Base URL):
  - a key given explicitly may go to any base URL: passed in memory (the app's check before a job), named by
    `--api-key-env NAME` (the owner's own choice on the command line), or in $LAB_API_KEY_<BACKEND>
    (TYPED_KEY_ENV: the key a visitor typed into the app, which reaches that one job and that one backend);
  - a key from the provider's default variable (GROQ_API_KEY / OPENAI_API_KEY: the owner's) goes only to the owner's
    URL ($GROQ_BASE_URL / $OPENAI_BASE_URL when set, else the provider's default); any other base URL is refused.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from lab import efficiency, models
from lab.errors import LabError
from lab.engine_lab import prefill
from lab.kvcache import cache_kwarg
from lab.ratelimit import RateLimiter, backoff_s, retry_after_s
from lab.store import redact_userinfo

def _groq_client(key: str, url: str, timeout_s: float):
    import groq

    return groq.Groq(api_key=key, base_url=url, max_retries=0, timeout=timeout_s)  # posts to URL/openai/v1/...


def _openai_client(key: str, url: str, timeout_s: float):
    import openai

    return openai.OpenAI(api_key=key, base_url=url, max_retries=0, timeout=timeout_s)  # posts to URL/chat/...


@dataclass(frozen=True)
class Backend:
    """One judge backend: everything the settings, the app, the cost estimate and the secret scan need to know.
    To add an OpenAI-compatible provider with its own key variable, add an entry here (and a line in docs/judge.md):
    the settings' choices, the app's menus and the pre-upload secret scan follow."""

    label: str  # in the app
    kind: str  # "api" | "local"
    default_model: str
    key_env: str = ""  # api: the variable with the owner's key
    url_env: str = ""  # api: the variable with the owner's base URL (the only URL that key goes to)
    default_url: str = ""  # api: where the provider's SDK posts by default
    client: Callable | None = None  # api: (key, url, timeout_s) -> an SDK client with chat.completions
    custom_url: bool = False  # api: speaks a wire format many servers serve, so the app offers a Base URL box (the
    #                           command line's --base-url takes any api backend's URL)


BACKENDS: dict[str, Backend] = {
    "local": Backend("Local model (offline; the bundled 135M judge is weak)", "local", "bundled"),
    "groq": Backend("Groq", "api", "llama-3.3-70b-versatile", "GROQ_API_KEY", "GROQ_BASE_URL",
                    "https://api.groq.com", _groq_client),
    "openai": Backend("OpenAI-compatible endpoint", "api", "gpt-4o-mini", "OPENAI_API_KEY", "OPENAI_BASE_URL",
                      "https://api.openai.com/v1", _openai_client, custom_url=True),
}
API_BACKENDS = tuple(name for name, b in BACKENDS.items() if b.kind == "api")
# derived views, for the code that needs one fact of every backend
DEFAULT_MODELS = {name: b.default_model for name, b in BACKENDS.items()}
KEY_ENV = {name: BACKENDS[name].key_env for name in API_BACKENDS}
DEFAULT_URL = {name: BACKENDS[name].default_url for name in API_BACKENDS}
BASE_URL_ENV = {name: BACKENDS[name].url_env for name in API_BACKENDS}  # the owner's URL for the KEY_ENV key
MAX_RETRY_AFTER_S = 300.0  # longest Retry-After pause accepted by default (JudgeConfig.max_retry_after_s)
# a key typed into the app, for one job and one backend: explicit, never the provider's variable, never another
# backend's (a visitor's Groq key is not sent to an OpenAI-compatible server)
TYPED_KEY_ENV = {name: f"LAB_API_KEY_{name.upper()}" for name in API_BACKENDS}
# USD per million tokens (input, output), as listed by the providers in 2025; None elsewhere: cost is not guessed.
PRICES = {
    "llama-3.3-70b-versatile": (0.59, 0.79), "llama-3.1-8b-instant": (0.05, 0.08),
    "openai/gpt-oss-120b": (0.15, 0.75), "openai/gpt-oss-20b": (0.10, 0.50),
    "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1": (2.00, 8.00),
}
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REJECTED_STATUS = {400, 413, 422}  # this request refused (too long, bad input): recorded invalid, the run goes on


def price_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    p = PRICES.get(model)
    return None if p is None else round((prompt_tokens * p[0] + completion_tokens * p[1]) / 1e6, 8)


def owner_url(kind: str) -> str:
    """The only URL a key from KEY_ENV[kind] may go to: $<KIND>_BASE_URL when set, else the provider's default."""
    return os.environ.get(BASE_URL_ENV[kind]) or DEFAULT_URL[kind]


def _same_url(a: str, b: str) -> bool:
    """Equal up to the case of scheme and host and a trailing slash."""
    x, y = urlsplit(a.strip()), urlsplit(b.strip())
    return (x.scheme.lower(), x.netloc.lower(), x.path.rstrip("/")) == (y.scheme.lower(), y.netloc.lower(),
                                                                         y.path.rstrip("/"))


def resolve_key(kind: str, base_url: str = "", api_key: str | None = None, key_env: str = "",
                local: str = "--backend local") -> tuple[str, str, str]:
    """(key, URL, where the key came from, in words) for an API judge, under the rule in the module docstring.

    Order: api_key (in memory) > $key_env (named by the caller) > $LAB_API_KEY_<KIND> (typed in the app) > the
    provider's default variable, which may only go to owner_url(kind). Raises LabError (naming no key) when there is
    no key or when the default variable's key would go to another URL."""
    url = base_url or owner_url(kind)
    if api_key:
        return api_key, url, "the API key given"
    if key_env:
        return _env_key(key_env, kind, local), url, f"${key_env}"
    if os.environ.get(TYPED_KEY_ENV[kind]):
        return os.environ[TYPED_KEY_ENV[kind]], url, "the API key typed in the app"
    key = _env_key(KEY_ENV[kind], kind, local)
    if base_url and not _same_url(base_url, owner_url(kind)):
        raise LabError(f"The base URL {redact_userinfo(base_url)} is not the {kind} URL this machine's "
                       f"{KEY_ENV[kind]} is set for, so that key is not sent there: give your own key for that "
                       "server (--api-key-env NAME of the variable that holds it), or leave the base URL empty.",
                       ui=f"The base URL {redact_userinfo(base_url)} is not the {kind} URL this app's "
                       f"{KEY_ENV[kind]} is set for, so that key is not sent there: type your own key for that "
                       "server in the API key box, or leave the base URL empty.")
    return key, url, f"${KEY_ENV[kind]}"


def _env_key(name: str, kind: str, local: str) -> str:
    """The key in $name; else a LabError naming the stage's offline choice (`local`: "--backend local" for the judge
    stage, "--judge self" for self-scoring, "--judge local" for compare)."""
    key = os.environ.get(name) or ""
    if not key:
        raise LabError(f"{name} is not set: export {name}=<your key> (or pass --api-key-env NAME of the variable "
                       f"that holds it; in the app, type your key in the API key box), or use a local judge "
                       f"({local}: offline, weak) instead of {kind}.")
    return key


@dataclass
class Reply:
    """One answered request. `parsed_http` is False when the HTTP body itself was not JSON (garbage); `rejected`
    holds the provider's message when it refused this one request (400 / 413 / 422: too long, bad input): the
    request would fail the same way again, and the other calls may still succeed."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    parsed_http: bool = True
    rejected: str = ""
    extra: dict = field(default_factory=dict)


class ApiBackend:
    """Chat completions over HTTP with rate limiting and retries. `complete(prompt)` is safe to call from threads."""

    def __init__(self, kind: str, model: str, limiter: RateLimiter, base_url: str = "", api_key: str | None = None,
                 key_env: str = "", timeout_s: float = 60.0, max_retries: int = 5, backoff: float = 1.0,
                 temperature: float = 0.0, max_tokens: int = 512, json_mode: bool = True,
                 max_retry_after_s: float = MAX_RETRY_AFTER_S, local: str = "--backend local"):
        self.kind, self.model, self.limiter = kind, model, limiter
        self.max_retry_after_s = max_retry_after_s
        self.api_key, self.url, self.key_source = resolve_key(kind, base_url, api_key, key_env, local)
        self.timeout_s, self.max_retries, self.backoff = timeout_s, max_retries, backoff
        self.params = {"temperature": temperature, "max_tokens": max_tokens,
                       **({"response_format": {"type": "json_object"}} if json_mode else {})}
        self.client = self._client()

    def _client(self):
        return BACKENDS[self.kind].client(self.api_key, self.url, self.timeout_s)

    def complete(self, prompt: str) -> Reply:
        """Send one user message; retry 429 / 5xx / timeouts / dropped connections with backoff.

        Raises LabError for what retrying cannot fix (401, 403, 404, 400, unreachable host) or when the retries
        run out; lab.ratelimit.Cancelled when the run is stopping."""
        last: Exception | None = None
        for attempt in range(1, self.max_retries + 2):
            self.limiter.acquire()
            efficiency.add(api_calls=1)  # every request counts, retries included
            try:
                reply = self._request(prompt)
                reply.attempts = attempt
                return reply
            except Exception as e:  # sorted below: the model's own bad JSON, fatal, or worth another try
                failed = _failed_generation(e)
                if failed is not None:  # Groq's JSON mode refused the model's output: it is a reply, not an outage
                    return Reply(text=failed, attempts=attempt)
                if getattr(e, "status_code", None) in REJECTED_STATUS:
                    msg = self._scrub(f"HTTP {e.status_code}: {getattr(e, 'message', e)}")[:1000]
                    return Reply(text=msg, attempts=attempt, parsed_http=False, rejected=msg)
                try:
                    delay = self._retry_delay(e, attempt)
                except LabError:
                    self.limiter.abort.set()  # the other workers stop too: their calls would fail the same way
                    raise
                last = e
            if attempt <= self.max_retries:
                self.limiter.sleep(delay)
        self.limiter.abort.set()
        raise self._gave_up(last)

    def _request(self, prompt: str) -> Reply:
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], **self.params)
        try:
            resp = raw.parse()
        except ValueError:  # HTTP 200 whose body is not JSON: a proxy page, a broken server
            return Reply(text=raw.http_response.text[:4000], parsed_http=False)
        usage = getattr(resp, "usage", None)
        text = resp.choices[0].message.content if resp.choices else None
        p_tok, c_tok = getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0
        efficiency.add(tokens_in=p_tok, tokens_out=c_tok, cost_usd=price_usd(self.model, p_tok, c_tok))
        return Reply(text=text or "", prompt_tokens=p_tok, completion_tokens=c_tok)

    def _retry_delay(self, err: Exception, attempt: int) -> float:
        """Seconds to wait before retrying `err`; raises LabError at once for errors a retry cannot fix."""
        status = getattr(err, "status_code", None)
        name = type(err).__name__
        if status is None and name not in ("APITimeoutError", "APIConnectionError"):
            raise err
        if status is not None and status not in RETRY_STATUS:
            raise self._fatal(status, err)
        if name == "APIConnectionError" and attempt >= 3 and "timed out" not in str(err).lower():
            raise self._fatal(None, err)  # refused three times: the host is wrong, not busy
        response = getattr(err, "response", None)
        wait = retry_after_s(response.headers if response is not None else None)
        if wait is not None and wait > self.max_retry_after_s:
            raise self._asked_to_wait(wait)
        if status == 429:
            self.limiter.pause(wait if wait is not None else backoff_s(attempt, self.backoff, None))
        return backoff_s(attempt, self.backoff, wait)

    def _fatal(self, status: int | None, err: Exception) -> LabError:
        where = f"{self.kind} at {redact_userinfo(self.url)}"
        if status in (401, 403):
            return LabError(f"{where} rejected the API key (HTTP {status}): check {self.key_source} "
                            "(a fresh key, the right provider, access to this model).")
        if status == 404:
            return LabError(f"{where} answered 404 for model {self.model!r}: check --model, and --base-url "
                            "(an OpenAI-compatible root usually ends in /v1; groq's has no /v1).")
        if status is None:
            return LabError(f"Could not connect to {where}: check --base-url and that the server is running. "
                            f"({self._scrub(str(err))})")
        return LabError(f"{where} refused the request (HTTP {status}): {self._scrub(str(err))[:300]}")

    def _asked_to_wait(self, seconds: float) -> LabError:
        """A Retry-After beyond the cap: a spent daily quota, not a busy minute. Pausing every worker for hours
        without a word looks like a hang, so the run stops and says when to come back."""
        until = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(time.time() + seconds))
        span = f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{seconds / 60:.0f} minutes"
        asked = (f"{self.kind} at {self.url} asked to wait {seconds:.0f} s before the next request "
                 f"(Retry-After: {span}, until about {until}), more than the {self.max_retry_after_s:.0f} s this run "
                 "waits")
        return LabError(f"{asked} (lab judge --max-retry-after-s). Everything judged so far is saved: rerun the same "
                        "command after that time to go on from there.",
                        ui=f"{asked}. Everything judged so far is saved: start it again after that time to go on "
                        "from there.")

    def _gave_up(self, err: Exception | None) -> LabError:
        status = getattr(err, "status_code", None)
        what = {429: "kept answering 429 (rate limited)", None: "gave no answer in time"}.get(
            status, f"kept failing (HTTP {status})")
        hint = "lower --rpm or --concurrency, or wait" if status == 429 else "try again later or raise --timeout-s"
        ui = "lower the requests per minute or concurrent requests, or wait" if status == 429 else "try again later"
        head = f"{self.kind} at {redact_userinfo(self.url)} {what} after {self.max_retries + 1} tries"
        return LabError(f"{head}: {hint}. Every judgment finished so far is saved; rerun the same command to resume.",
                        ui=f"{head}: {ui}. Every judgment finished so far is saved; start it again to resume.")

    def _scrub(self, text: str) -> str:
        return redact_userinfo(text.replace(self.api_key, "***") if self.api_key else text)


@dataclass
class LocalVerdict:
    reasoning: str
    probs: dict[str, float]  # {"A", "B", "tie"}: normalised over the three labels
    raw: str
    prompt_tokens: int
    completion_tokens: int


class LocalBackend:
    """A transformers chat model as judge; see the module docstring for how the verdict is read."""

    LABELS = ("A", "B", "tie")

    def __init__(self, spec: str, device: str = "auto", dtype: str = "auto", reasoning_tokens: int = 96,
                 batch_size: int = 8, min_reasoning_tokens: int = 0):
        self.cm = models.load(spec, device, dtype)
        self.cache_arg = cache_kwarg(self.cm.model)  # the KV cache's keyword, read once (not every decode step)
        self.reasoning_tokens, self.batch_size = reasoning_tokens, batch_size
        self.min_reasoning_tokens = min(min_reasoning_tokens, reasoning_tokens)
        self.label_ids = self._label_ids()
        self._texts: dict[int, str] = {}  # token id -> its text, to spot the closing quote while decoding
        self._closers = None  # ids of every token that would end the reasoning (a quote in it, end of turn)

    def _label_ids(self) -> list[int]:
        tok = self.cm.tokenizer
        ids = [tok.encode(lab, add_special_tokens=False)[0] for lab in self.LABELS]
        if len(set(ids)) != len(ids):
            raise LabError(f"{self.cm.spec}'s tokenizer starts the labels A / B / tie with the same token: "
                           "choose another local judge model.")
        return ids

    def judge(self, prompts: list[str], on_step: Callable[[float], None] | None = None) -> list[LocalVerdict]:
        """Judge prompts in batches of batch_size; returns one LocalVerdict per prompt, in order.
        on_step(prompts' worth of work done so far, a float): after every decode step, so a caller's progress
        moves within a batch (a small CPU judge spends minutes on one)."""
        out: list[LocalVerdict] = []
        for i in range(0, len(prompts), self.batch_size):
            batch = prompts[i:i + self.batch_size]
            step = None if on_step is None else (lambda share, i=i, n=len(batch): on_step(i + share * n))
            out.extend(self._judge_batch(batch, step))
        return out

    def _judge_batch(self, prompts: list[str], on_step: Callable[[float], None] | None = None
                     ) -> list[LocalVerdict]:
        """Pre-fill the prompts once (the judge's instructions, the same start in every prompt, once for the batch:
        lab.engine_lab.prefill); generate the reasoning on that KV cache; then cut the cache back to the prompt and
        feed only reasoning + `", "verdict": "` to read the labels (the prompt is never run twice)."""
        import torch

        heads = [self.cm.render([{"role": "user", "content": p}]) + '{"reasoning": "' for p in prompts]
        ids = [self.cm.tokenizer(h, add_special_tokens=False)["input_ids"] for h in heads]
        with torch.inference_mode():
            logits, cache, state = prefill(self.cm, ids, reserve=self.reasoning_tokens + 32)  # decode writes in place
            mask, last_pos = state.mask, state.last
            gen = self._greedy(logits, cache, mask, last_pos, on_step)
            cache.crop(-(cache.get_seq_length() - mask.shape[1]))  # back to the pre-filled prompt
            raws = [self.cm.tokenizer.decode(g, skip_special_tokens=True) for g in gen]
            reasons = [_json_string_prefix(t) for t in raws]
            tails = [json.dumps(r)[1:-1] + '", "verdict": "' for r in reasons]
            probs = self._label_probs(tails, cache, mask, last_pos)
        efficiency.add(tokens_in=int(mask.sum()), tokens_out=sum(map(len, gen)))
        return [LocalVerdict(r, p, raw, int(n), len(g))
                for r, raw, p, n, g in zip(reasons, raws, probs, mask.sum(-1).tolist(), gen)]

    def _greedy(self, logits, cache, mask, last_pos, on_step: Callable[[float], None] | None = None
                ) -> list[list[int]]:
        """Greedy reasoning tokens per row ([B, V] logits of the first step), each row ending with the token that
        closes the JSON string (or at reasoning_tokens / end of turn). Rows that are done keep decoding, unused."""
        import torch

        rows = [[] for _ in range(logits.shape[0])]
        done = [False] * len(rows)
        for step in range(self.reasoning_tokens):
            if step < self.min_reasoning_tokens:  # the model's own next-best token, not a closing one yet
                logits = logits.index_fill(-1, self._closing_ids(), float("-inf"))
            nxt = logits.argmax(-1)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    done[i] = t in self.cm.eos_ids or '"' in self._text(t)
                    rows[i] += [] if t in self.cm.eos_ids else [t]
            if all(done) or step == self.reasoning_tokens - 1:
                break
            if on_step is not None:  # the batch's share done: rows finished, the rest by steps of their budget
                on_step(sum(1.0 if d else (step + 1) / self.reasoning_tokens for d in done) / len(done))
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last_pos = last_pos + 1
            logits = self.cm.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                                   use_cache=True, **{self.cache_arg: cache}).logits[:, -1]
        return rows

    def _closing_ids(self):
        """Token ids that would end the reasoning: any token whose text holds a quote, and end of turn."""
        import torch

        if self._closers is None:
            texts = self.cm.tokenizer.batch_decode([[i] for i in range(len(self.cm.tokenizer))])
            ids = [i for i, t in enumerate(texts) if '"' in t] + list(self.cm.eos_ids)
            self._closers = torch.tensor(sorted(set(ids)), device=self.cm.device)
        return self._closers

    def _text(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = self.cm.tokenizer.decode([token_id])
        return self._texts[token_id]

    def _label_probs(self, tails: list[str], cache, mask, last_pos) -> list[dict[str, float]]:
        """Next-token probabilities of A / B / tie after prompt + tail, renormalised over the three.

        The tails (different lengths) are right-padded after the cached, left-padded prompts; each row's label
        logits are read at its own last real token. tails: [B] -> [B] dicts."""
        import torch

        ids = [self.cm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in tails]
        width = max(len(i) for i in ids)
        pad = self.cm.tokenizer.pad_token_id
        x = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=self.cm.device)
        tail_mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=self.cm.device)
        positions = last_pos[:, None] + 1 + torch.arange(width, device=self.cm.device)[None]
        logits = self.cm.model(input_ids=x, attention_mask=torch.cat([mask, tail_mask], dim=1), position_ids=positions,
                               use_cache=True, **{self.cache_arg: cache}).logits
        last = logits[torch.arange(len(ids)), torch.tensor([len(i) - 1 for i in ids])].float()
        p = last.softmax(-1)[:, self.label_ids]
        p = (p / p.sum(-1, keepdim=True)).tolist()
        return [dict(zip(self.LABELS, row)) for row in p]


def _failed_generation(err: Exception) -> str | None:
    """What the model wrote, when the provider rejected it for invalid JSON (Groq: HTTP 400 json_validate_failed);
    None for any other error. The groq SDK keeps the whole error body, the openai SDK its inner "error" object."""
    body = getattr(err, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(inner, dict) and inner.get("code") == "json_validate_failed":
        return str(inner.get("failed_generation") or "")
    return None


def _json_string_prefix(text: str) -> str:
    """The content of a JSON string whose opening quote came before `text`: up to the first unescaped quote."""
    end = re.search(r'(?<!\\)"', text)
    body = text[:end.start()] if end else text
    try:
        return json.loads('"' + body + '"').strip()
    except json.JSONDecodeError:  # a raw newline or a stray backslash: show the text as it came
        return body.strip()
