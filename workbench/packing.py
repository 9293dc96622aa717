"""Padding-free packing for causal-LM training: examples share rows, never attention.

    python -m pytest tests/test_packing.py -q

Variable-length examples are packed into rows of at most ``token_budget`` tokens. Each token
attends only to earlier tokens of its own example: on CPU through a 4D block-diagonal causal mask
(boolean for SDPA, additive for eager attention), on CUDA through a flex-attention ``BlockMask``
built from document ids. Position ids restart at each example. Restarting position ids alone do
NOT isolate examples in transformers 5.x (measured: logits of the second example change by up to
4.7 on a 0.5B model; ``tests/test_packing.py`` checks the trap still exists here), so the mask is
never optional.

Targets are shifted inside each example before packing (``targets[t]`` is the token after ``t`` in
the same example, -100 where no loss is wanted), so the loss never asks the last token of one
example to predict the first token of the next.

The loss (``linear_cross_entropy``) takes hidden states, not logits: it gathers the loss-bearing
positions and runs ``lm_head`` + cross-entropy on them in chunks, computing the gradients chunk by
chunk, so full-vocabulary logits exist neither for masked positions nor all at once.
"""
from __future__ import annotations

import collections
import contextlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .template_tokens import tokenize_example as _tokenize

IGNORE = -100  # label of tokens that carry no loss (prompt, padding)


# --------------------------------------------------------------------------- tokenization

def special_ids(tokenizer) -> tuple[int | None, int]:
    """(bos id or None, eos id) of a tokenizer; a missing EOS is an error (``ensure_special_tokens``)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no EOS token: call workbench.finetune.ensure_special_tokens first")
    return tokenizer.bos_token_id, tokenizer.eos_token_id


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (prompt and completion are encoded apart)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(tokenizer, prompt: str, completion: str, *, max_length: int,
                     add_eos: bool = True, layout: str = "bare", system: str | None = None) -> dict[str, list[int]]:
    """``{input_ids, labels}`` of one SFT example; labels are -100 on the prompt (and BOS).

    Layout ``"bare"`` (default): ``[BOS] prompt completion [EOS]`` (``system``, when given, is put in
    front of the prompt followed by a blank line); ``"chat"`` renders the system/user/assistant
    messages with the tokenizer's chat template (the prompt part, generation header included, is
    masked; the answer and the end-of-turn tokens the template writes after it are trained);
    ``"auto"``/``"plain"``: see ``template_tokens.tokenize_example``. The completion and EOS carry the
    loss, so the model learns the answer and when to stop. Prompt and completion are tokenized separately, the same
    way generation sees them (the prompt is the model's input, the completion its output).
    Over ``max_length`` the prompt loses tokens from its start (the end, next to the answer, is
    kept); a completion that alone exceeds ``max_length`` is cut at its end (EOS lost).
    One implementation with the template library's: ``template_tokens.tokenize_example`` with
    ``keep_prompt="end"``.
    """
    if add_eos:
        special_ids(tokenizer)  # a missing EOS: say how to fix it
    return _tokenize(tokenizer, prompt, completion, max_length=max_length, add_eos=add_eos, layout=layout,
                     keep_prompt="end", system=system)


def shift_targets(labels: Sequence[int]) -> list[int]:
    """Next-token targets inside one example: ``labels[1:]`` and -100 at the last position."""
    return list(labels[1:]) + [IGNORE]


# --------------------------------------------------------------------------- planning (lengths only)

def pack_rows(lengths: Sequence[int], token_budget: int, *, open_rows: int = 8) -> list[list[int]]:
    """Pack example indices (taken in the given order) into rows of at most ``token_budget`` tokens.

    First fit over the last ``open_rows`` rows still open: fuller rows than plain greedy, while the
    row order still follows the (shuffled) input order. Deterministic in its input.
    """
    rows: list[list[int]] = []
    fill: list[int] = []
    open_idx: list[int] = []
    for i, n in enumerate(lengths):
        n = int(n)
        if n > token_budget:
            raise ValueError(f"example {i} has {n} tokens, more than token_budget={token_budget}")
        for r in open_idx:
            if fill[r] + n <= token_budget:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
            open_idx.append(len(rows) - 1)
            if len(open_idx) > open_rows:
                open_idx.pop(0)
        open_idx = [r for r in open_idx if fill[r] < token_budget]
    return rows


def plan_epoch(lengths: Sequence[int], *, token_budget: int, micro_batch_size: int, seed: int,
               epoch: int) -> list[list[list[int]]]:
    """The micro-batches of one epoch: lists of rows, each a list of example indices.

    A pure function of (lengths, budget, micro-batch size, seed, epoch): a resumed run recomputes
    it and jumps to any position without reading the batches before it.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    rows = [[int(order[j]) for j in row] for row in pack_rows([lengths[i] for i in order], token_budget)]
    return [rows[i:i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]


# --------------------------------------------------------------------------- collation

@dataclass
class PackedBatch:
    """One micro-batch of packed rows (all tensors ``[rows, length]``)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor  # restart at 0 for each example
    targets: torch.Tensor       # next token within the same example, -100 = no loss
    doc_ids: torch.Tensor       # example index within its row; padding gets its own id
    trained_index: torch.Tensor  # flat positions (row * length + t) that carry a loss, known on the host
    example_index: list[list[int]]  # per row, the caller's example indices in order
    n_real: int                 # non-pad tokens
    n_pad: int                  # pad tokens (rows padded to a common length)
    n_trained: int              # loss-bearing tokens

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        mv = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return PackedBatch(mv(self.input_ids), mv(self.position_ids), mv(self.targets), mv(self.doc_ids),
                           mv(self.trained_index), self.example_index, self.n_real, self.n_pad, self.n_trained)


def collate_packed(examples: Sequence[dict], rows: Sequence[Sequence[int]], *, pad_id: int,
                   pad_to: int | None = None, pin_memory: bool = False, rows_to: int | None = None) -> PackedBatch:
    """Build a packed micro-batch from tokenized examples (``{input_ids, labels}``) and a row plan.

    Rows are padded to the longest row (or to ``pad_to``, for static shapes under torch.compile);
    ``rows_to`` adds empty (all-padding, no-loss) rows up to that many, so that a short last
    micro-batch keeps the compiled graph's shape instead of compiling another one.
    """
    rows = list(rows) + [[] for _ in range(max(0, (rows_to or 0) - len(rows)))]
    lens = [sum(len(examples[i]["input_ids"]) for i in row) for row in rows]
    width = max(max(lens), pad_to or 0, 1)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    pos = np.zeros((len(rows), width), dtype=np.int64)
    tgt = np.full((len(rows), width), IGNORE, dtype=np.int64)
    doc = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        t = 0
        for d, i in enumerate(row):
            x, y = examples[i]["input_ids"], shift_targets(examples[i]["labels"])
            n = len(x)
            ids[r, t:t + n] = x
            pos[r, t:t + n] = np.arange(n)
            tgt[r, t:t + n] = y
            doc[r, t:t + n] = d
            t += n
        doc[r, t:] = len(row)  # padding: one more "document", attends only to itself
        pos[r, t:] = np.arange(width - t)
    # positions with a loss, computed here so the device never has to sync on a boolean mask
    trained = np.flatnonzero(tgt.reshape(-1) != IGNORE)
    n_trained = len(trained)
    tensors = [torch.from_numpy(a) for a in (ids, pos, tgt, doc, trained)]
    if pin_memory:
        tensors = [t.pin_memory() for t in tensors]
    return PackedBatch(*tensors, example_index=[list(r) for r in rows], n_real=sum(lens),
                       n_pad=len(rows) * width - sum(lens), n_trained=n_trained)


class Prefetcher:
    """Builds the batches of upcoming keys (e.g. optimizer steps) in a background thread.

    ``make(key)`` runs ``ahead`` keys in advance (collation and pinning are numpy/torch work that
    releases the GIL for the most part), so the training loop only launches device work; ``get``
    must be called with the keys in order. ``ahead=0`` builds each batch when asked.
    """

    def __init__(self, make: Callable[[Any], Any], keys: Iterable[Any], ahead: int = 2):
        self._make, self._keys, self._ahead = make, iter(keys), max(0, int(ahead))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="wb-prefetch") if self._ahead else None
        self._queue: collections.deque = collections.deque()
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and len(self._queue) < self._ahead:
            key = next(self._keys, self._queue)  # the deque itself marks the end
            if key is self._queue:
                return
            self._queue.append((key, self._pool.submit(self._make, key)))

    def get(self, key):
        if self._pool is None:
            return self._make(key)
        if not self._queue or self._queue[0][0] != key:
            raise KeyError(f"Prefetcher.get({key!r}): expected {self._queue[0][0] if self._queue else 'no more'}")
        _, fut = self._queue.popleft()
        self._fill()
        return fut.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- document masks

def document_mask(doc_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype = torch.float32):
    """The per-document causal mask for ``attention_mask=`` (transformers passes 4D masks through).

    ``flex_attention``: a block-sparse ``BlockMask`` (cost grows with the examples' own lengths);
    ``sdpa``: boolean ``[rows, 1, T, T]`` (True = may attend); ``eager``: the additive float form.
    """
    rows, T = doc_ids.shape
    if attn_implementation == "flex_attention":
        return flex_document_mask(doc_ids)
    idx = torch.arange(T, device=doc_ids.device)
    mask = (doc_ids[:, :, None] == doc_ids[:, None, :]) & (idx[:, None] >= idx[None, :])
    mask = mask[:, None]
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    raise ValueError(f"no document mask for attn_implementation={attn_implementation!r} "
                     "(use 'sdpa', 'eager' or 'flex_attention')")


FLEX_BLOCK = 128  # flex attention's sparse block size (torch's default)


def flex_document_mask(doc_ids: torch.Tensor, *, builder: str = "blocks", block_size: int = FLEX_BLOCK):
    """Per-document causal flex-attention ``BlockMask`` of ``doc_ids`` ``[rows, T]``.

    ``builder="blocks"`` derives the block tables from each ``block_size``-token block's smallest and
    largest document id, ``O(rows * (T/block)^2)`` work in a few device ops, no host sync; a block pair is
    *full* (no mask evaluation in the kernel) when both blocks lie in one document and the key
    block is strictly before the query block. ``"create_block_mask"`` evaluates the mask function
    on every ``T x T`` position (torch's generic way; same mask, more work and memory per step).
    Both are tested equal on CPU. Smaller blocks (64) compute fewer masked-out scores on short
    documents; torch's default backward tiles need 128 (``SFTConfig.flex_block_size``).
    """
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    rows, T = doc_ids.shape
    B = block_size

    def same_doc_causal(b, h, q, k):
        return (doc_ids[b, q] == doc_ids[b, k]) & (q >= k)

    if builder == "create_block_mask":
        return create_block_mask(same_doc_causal, rows, None, T, T, device=doc_ids.device, BLOCK_SIZE=B)
    if builder != "blocks":
        raise ValueError(f"flex_document_mask: builder must be 'blocks' or 'create_block_mask', not {builder!r}")
    nb = -(-T // B)
    d = F.pad(doc_ids[:, None].float(), (0, nb * B - T), mode="replicate")[:, 0] if nb * B > T \
        else doc_ids
    d = d.view(rows, nb, B)
    lo, hi = d.amin(-1), d.amax(-1)  # [rows, nb]
    blk = torch.arange(nb, device=doc_ids.device)
    below = blk[None, :, None] > blk[None, None, :]  # key block strictly before query block
    causal = blk[None, :, None] >= blk[None, None, :]
    overlap = (lo[:, None, :] <= hi[:, :, None]) & (lo[:, :, None] <= hi[:, None, :])
    single = lo == hi
    full = below & single[:, :, None] & single[:, None, :] & (lo[:, :, None] == lo[:, None, :])
    if nb * B > T:  # the last, partial query block is never full
        full[:, -1, :] = False
    partial = causal & overlap & ~full

    def tables(m):  # [rows, nb, nb] bool -> (counts [rows, 1, nb], ordered indices [rows, 1, nb, nb])
        num = m.sum(-1, dtype=torch.int32)[:, None]
        idx = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
        return num, idx

    (kv_num, kv_idx), (full_num, full_idx) = tables(partial), tables(full)
    try:
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=B,
                                        mask_mod=same_doc_causal, seq_lengths=(T, T))
    except TypeError:  # a torch whose from_kv_blocks lacks these arguments: torch's generic builder
        return create_block_mask(same_doc_causal, rows, None, T, T, device=doc_ids.device, BLOCK_SIZE=B)


# Flex attention's Triton tiles for head dim 64 in bf16 on Hopper (sm90: H100, H200), measured on one H100
# on 2026-11-26 with benchmarks/flex_configs.py on packed rows of short documents (docs/benchmarks.md):
# 64 x 64 tiles waste less work on the many partial blocks of a document mask than torch's defaults
# (forward 128 x 128, backward 64/128): attention 1.63 -> 1.28 ms per layer call, the whole step 227 -> 222 ms.
FLEX_KERNEL_OPTIONS_SM90_D64 = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_stages": 3, "fwd_num_warps": 4,
                                "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
                                "bwd_num_stages": 3, "bwd_num_warps": 4}


AUTO_TILES_MAX_MEAN_LENGTH = 1024  # the tiles were measured on examples of mean length 334 in 4,096-token rows


def flex_kernel_options(setting, *, device, head_dim: int, half_precision: bool,
                        mean_length: float | None = None) -> dict | None:
    """The ``kernel_options`` flex attention gets: ``setting`` is a dict (used as given), ``None`` (torch's
    defaults) or ``"auto"``: the measured tiles above on an sm90 GPU with head dim 64 and bf16/fp16
    attention for short examples (mean length up to ``AUTO_TILES_MAX_MEAN_LENGTH``, or unknown), torch's
    defaults everywhere else (unmeasured there: a tile choice is per card and shape, and long documents
    fill large tiles)."""
    if setting is None or isinstance(setting, dict):
        return dict(setting) if setting else None
    if setting != "auto":
        raise ValueError(f"flex_kernel_options must be 'auto', None or a dict, not {setting!r}")
    device = torch.device(device)
    if device.type != "cuda" or not half_precision or head_dim != 64:
        return None
    if mean_length is not None and mean_length > AUTO_TILES_MAX_MEAN_LENGTH:
        return None
    return dict(FLEX_KERNEL_OPTIONS_SM90_D64) if torch.cuda.get_device_capability(device) == (9, 0) else None


@contextlib.contextmanager
def flex_reference_backward():
    """Let flex attention TRAIN on CPU, through the math reference of the same operator.

    torch has no CPU backward kernel for flex attention (it refuses ``requires_grad`` inputs on
    CPU, and transformers' own ``torch.compile`` of it fails to lower the backward there). Inside
    this context the refusal is lifted on CPU and transformers calls flex attention uncompiled, so
    the higher-order op runs its reference (dense math) forward and backward with the same
    ``BlockMask``. Under ``torch.compile(backend="aot_eager")`` the decoder is traced as on CUDA.
    For tests and ``benchmarks/train_throughput.py --gpu-config-smoke``; slow, never for real runs.
    """
    import torch.nn.attention.flex_attention as fa
    import transformers.integrations.flex_attention as tfa

    saved = fa._validate_device, tfa.compile_friendly_flex_attention

    def validate(query, key, value):
        if query.device.type != "cpu":
            saved[0](query, key, value)

    def uncompiled(query, key, value, training=False, **kwargs):
        return fa.flex_attention(query, key, value, **kwargs)

    fa._validate_device, tfa.compile_friendly_flex_attention = validate, uncompiled
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")
            yield
    finally:
        fa._validate_device, tfa.compile_friendly_flex_attention = saved


def hidden_states(model, batch: PackedBatch) -> torch.Tensor:
    """Last hidden states ``[rows, T, d]`` of a packed batch, each example isolated by the mask.

    Runs the decoder only (``get_decoder()``; LoRA layers injected by peft live inside it), so no
    logits are computed here. ``model._wb_flex_kernel_options`` (a dict, e.g. from
    ``SFTConfig.flex_kernel_options``) reaches flex attention's kernels as ``kernel_options``.
    """
    impl = model.config._attn_implementation
    decoder = model.get_decoder()
    kw = {}
    if impl == "flex_attention":
        mask = flex_document_mask(batch.doc_ids, builder=getattr(model, "_wb_mask_builder", "blocks"),
                                  block_size=getattr(model, "_wb_flex_block", FLEX_BLOCK))
        if getattr(model, "_wb_flex_kernel_options", None):  # Triton tiles of flex's kernels (fwd_*/bwd_* keys)
            kw["kernel_options"] = dict(model._wb_flex_kernel_options)
    else:
        mask = document_mask(batch.doc_ids, impl, dtype=next(model.parameters()).dtype)
    out = decoder(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                  use_cache=False, **kw)
    return out.last_hidden_state


# --------------------------------------------------------------------------- loss

def _xent_grad(logits: torch.Tensor, y: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, d loss / d logits = softmax - one-hot) of one chunk of logits.

    Written for ``torch.compile``: inductor fuses it into one reduction pass (log-sum-exp) and one
    pointwise pass (the gradient, written in ``out_dtype``), where eager runs 5 fp32 passes.
    """
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    loss = (lse - x.gather(1, y[:, None]).squeeze(1)).sum()
    onehot = torch.arange(x.shape[1], device=x.device)[None, :] == y[:, None]
    return loss, (torch.exp(x - lse[:, None]) - onehot.to(x.dtype)).to(out_dtype)


_COMPILED_XENT: dict = {}


def _compiled_xent(logits: torch.Tensor, y: torch.Tensor, out_dtype: torch.dtype):
    """``_xent_grad`` compiled once: the chunk length is symbolic (the last chunk's changes every step),
    the vocabulary static (a reduction of known size)."""
    if "fn" not in _COMPILED_XENT:
        _COMPILED_XENT["fn"] = torch.compile(_xent_grad, dynamic=False)
    torch._dynamo.maybe_mark_dynamic(logits, 0)
    torch._dynamo.maybe_mark_dynamic(y, 0)
    return _COMPILED_XENT["fn"](logits, y, out_dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of token cross-entropies of ``hidden @ weight.T`` against ``targets``, in chunks.

    The gradients are computed in the forward pass chunk by chunk (as Liger's fused linear
    cross-entropy does), so at most ``chunk`` rows of logits are alive at once and the backward
    pass only scales the stored gradients. Same FLOPs as lm_head + cross-entropy, no recompute.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, need_h, need_w, compiled=False):
        ctx.weight_dtype = weight.dtype
        weight = weight.to(hidden.dtype)  # bf16 activations with fp32 master weights: one bf16 copy
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        for s in range(0, hidden.shape[0], chunk):
            h, y = hidden[s:s + chunk], targets[s:s + chunk]
            if compiled:  # fused: one reduction + one pointwise pass over the chunk's logits
                loss, g = _compiled_xent(h @ weight.T, y, hidden.dtype)
                total += loss
            else:
                logits = (h @ weight.T).float()
                picked = logits.gather(1, y[:, None]).squeeze(1)
                top = logits.amax(dim=-1, keepdim=True)
                e = logits.sub_(top).exp_()  # in place: one chunk of logits alive, 5 passes over it in all
                z = e.sum(dim=-1, keepdim=True)
                total += (top.squeeze(1) + z.log().squeeze(1) - picked).sum()
                g = e.div_(z)  # softmax
                g[torch.arange(len(y), device=g.device), y] -= 1.0
                g = g.to(hidden.dtype)
            if need_h:
                grad_h[s:s + chunk] = g @ weight
            if need_w:
                if grad_w is None:
                    grad_w = (g.T @ h).float()
                elif g.dtype == torch.float32:
                    grad_w.addmm_(g.T, h)
                else:
                    grad_w += (g.T @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, *,
                         chunk: int = 4096, index: torch.Tensor | None = None, compiled: bool = False) -> torch.Tensor:
    """Summed cross-entropy of the loss-bearing positions (``targets != -100``), chunked.

    ``hidden`` is ``[..., d]`` and ``targets`` the matching ``[...]``; returns a float32 scalar
    (divide by the number of trained tokens of the whole accumulated batch yourself).
    ``index`` (flat loss-bearing positions, e.g. ``PackedBatch.trained_index``) avoids the host
    sync that boolean indexing costs on CUDA. ``compiled=True`` runs each chunk's softmax and
    gradient as one ``torch.compile``-d function (about 7x less memory traffic than the eager passes;
    the matmuls stay cuBLAS calls).
    """
    if index is None:
        keep = targets != IGNORE
        h, y = hidden[keep], targets[keep]
    else:
        h, y = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index), targets.reshape(-1).index_select(0, index)
    weight = lm_head.weight
    if getattr(lm_head, "bias", None) is not None:
        raise ValueError("linear_cross_entropy supports lm_head without bias (Llama, Qwen, Mistral, ...)")
    if h.shape[0] == 0:
        return hidden.sum() * 0.0
    grad = torch.is_grad_enabled()
    need_h, need_w = grad and h.requires_grad, grad and weight.requires_grad
    if not (need_h or need_w):
        with torch.no_grad():
            w = weight.to(h.dtype)
            return sum(F.cross_entropy((h[s:s + chunk] @ w.T).float(), y[s:s + chunk], reduction="sum")
                       for s in range(0, h.shape[0], chunk))
    return _LinearCrossEntropy.apply(h, weight, y, chunk, need_h, need_w, compiled)


def document_logprobs(hidden: torch.Tensor, lm_head: torch.nn.Module, batch: PackedBatch, *,
                      chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example of a packed batch: (sum of target log-probs, number of target tokens).

    Both are ``[rows, max examples per row]`` float tensors (unused slots 0). Used for validation
    loss per example, choice scoring and the packing-equivalence tests. No gradients.
    """
    keep = batch.targets != IGNORE
    h, y = hidden[keep], batch.targets[keep]
    rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
    docs = batch.doc_ids[keep]
    width = int(batch.doc_ids.max()) + 1
    lp = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
    with torch.no_grad():
        for s in range(0, h.shape[0], chunk):
            logits = (h[s:s + chunk] @ lm_head.weight.to(h.dtype).T).float()
            lp[s:s + chunk] = logits.log_softmax(-1).gather(1, y[s:s + chunk, None]).squeeze(1)
    flat = rows * width + docs
    n = keep.shape[0] * width
    total = torch.zeros(n, dtype=torch.float32, device=h.device).index_add_(0, flat, lp)
    count = torch.zeros(n, dtype=torch.float32, device=h.device).index_add_(0, flat, torch.ones_like(lp))
    return total.view(keep.shape[0], width), count.view(keep.shape[0], width)
