"""The data side of SFT: ``sft_examples`` + ``splits`` read, checked and tokenized in the run's layout.

    python -c "import workbench; from workbench.sft_data import load_sft_frame as f; print(f(workbench.connect(), 'intent_classification'))"

Everything here runs before a run row is written: a bad table, split, label or length stops the run
with ``SFTDataError`` naming the examples. ``sft_layout`` says which token layout a model gets
(``"auto"``: its chat template when it has one, else ``[BOS] prompt completion EOS``);
``tokenize_split`` and ``audit_training_masks`` produce and check exactly what training sees.
``workbench.finetune`` re-exports every public name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .evaluate import normalize_answer
from .packing import tokenize_example
from .template_tokens import resolve_layout
from .workspace import table_exists

if TYPE_CHECKING:
    from .finetune import SFTConfig


class SFTDataError(ValueError):
    """The training data cannot train this task as configured (raised before anything is written)."""


def load_sft_frame(con, task: str, snapshot: int | None = None, template_id: str = "") -> pd.DataFrame:
    """``sft_examples`` of ``task`` (and ``template_id`` when given) joined to their split
    (``splits.example_id = source_row_id``)."""
    for t in ("sft_examples", "splits"):
        if not table_exists(con, t):
            raise SFTDataError(f"table {t!r} not found in the workspace: run the templates (05) and split (06) steps first")
    at = "" if snapshot is None else f" at (version => {int(snapshot)})"
    cols = {r[0] for r in con.execute(f"select * from sft_examples{at} limit 0").description}
    system = "e.system" if "system" in cols else "null"
    df = con.execute(f"""
        select e.example_id, e.source_row_id, e.prompt, e.completion, e.choices, {system} as system, s.split
        from sft_examples as e{at}
        join splits as s{at} on s.example_id = e.source_row_id
        where e.task = ? and (? = '' or e.template_id = ?)
        order by e.example_id""", [task, template_id, template_id]).df()
    if df.empty and template_id:
        ids = [r[0] for r in con.execute(f"select distinct template_id from sft_examples{at} where task = ? order by 1",
                                         [task]).fetchall()]
        raise SFTDataError(f"template_id {template_id!r}: no sft_examples of task {task!r} joined to splits "
                           f"(its templates present: {ids})")
    if df.empty:
        tasks = [r[0] for r in con.execute(f"select distinct task from sft_examples{at} order by 1").fetchall()]
        raise SFTDataError(f"no sft_examples joined to splits for task {task!r} (tasks present: {tasks})")
    df["example_id"] = df["example_id"].astype(str)
    # the system message: a chat message in the chat layout, in front of the prompt (and a blank line) otherwise
    has_sys = df["system"].notna() & (df["system"].astype(str).str.len() > 0)
    df["system"] = df["system"].astype(object).where(has_sys, None)
    return df


def sft_layout(tokenizer, config: SFTConfig) -> str:
    """The layout ``config.layout`` means for this tokenizer: ``"auto"`` is ``"chat"`` when it has a chat
    template, else ``"bare"``; ``"chat"`` without a chat template is an error naming the model."""
    return resolve_layout(tokenizer, config.layout, fallback="bare", what=f"SFTConfig.model={config.model!r}")


def _systems(frame: pd.DataFrame) -> list[str | None]:
    if "system" not in frame:
        return [None] * len(frame)
    return [s if isinstance(s, str) and s else None for s in frame["system"]]


def shown_prompts(frame: pd.DataFrame) -> list[str]:
    """Prompts as a person reads them in ``predictions``: the system message, a blank line, the prompt."""
    return [f"{s}\n\n{p}" if s else p for s, p in zip(_systems(frame), frame["prompt"])]


def check_frame(df: pd.DataFrame, task: str) -> dict[str, pd.DataFrame]:
    """Split the frame and stop on bad input: empty splits, nulls, labels unseen in train."""
    parts = {s: df[df["split"] == s].reset_index(drop=True) for s in ("train", "validation", "test")}
    for s in ("train", "validation"):
        if parts[s].empty:
            raise SFTDataError(f"task {task!r}: the {s} split is empty (splits.split counts: "
                               f"{df['split'].value_counts().to_dict()}); re-run the split step")
    nulls = df[df["prompt"].isna() | df["completion"].isna()]
    if len(nulls):
        raise SFTDataError(f"task {task!r}: {len(nulls)} sft_examples with a null prompt or completion, "
                           f"e.g. example_id {nulls['example_id'].iloc[0]!r}")
    if is_classification(df):
        seen = set(parts["train"]["completion"].map(normalize_answer))
        for s in ("validation", "test"):
            unseen = parts[s][~parts[s]["completion"].map(normalize_answer).isin(seen)]
            if len(unseen):
                counts = unseen["completion"].value_counts().to_dict()
                raise SFTDataError(f"task {task!r}: labels in {s} never appear in train: {counts} "
                                   f"(e.g. example_id {unseen['example_id'].iloc[0]!r}); the model cannot learn them")
        bad = df[[c not in list(ch) for c, ch in zip(df["completion"], df["choices"])]]
        if len(bad):
            raise SFTDataError(f"task {task!r}: {len(bad)} examples whose completion is not among their choices, "
                               f"e.g. example_id {bad['example_id'].iloc[0]!r}")
    return parts


def is_classification(df: pd.DataFrame) -> bool:
    """Classification-as-generation: every example lists its answer choices."""
    return "choices" in df and bool(df["choices"].notna().all()) and bool(len(df))


def tokenize_split(tokenizer, frame: pd.DataFrame, config: SFTConfig, split: str,
                   layout: str | None = None) -> tuple[list[dict], pd.DataFrame]:
    """Tokenize one split in ``layout`` (default: ``sft_layout``); completions over ``max_length``
    follow ``config.overlength``."""
    layout = layout or sft_layout(tokenizer, config)
    systems = _systems(frame)
    examples = None
    if layout == "bare":
        enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        extra = 1 + (tokenizer.bos_token_id is not None)  # EOS + BOS
        comp_len = np.array([len(enc(c)) + extra for c in frame["completion"]], dtype=np.int64)
    else:  # the answer's tokens as the template writes them (end-of-turn included) + the prompt scaffolding
        full = [tokenize_example(tokenizer, p, c, max_length=1 << 30, layout=layout, system=s)
                for p, c, s in zip(frame["prompt"], frame["completion"], systems)]
        examples = [e if len(e["input_ids"]) <= config.max_length else
                    tokenize_example(tokenizer, p, c, max_length=config.max_length, layout=layout, system=s)
                    for e, p, c, s in zip(full, frame["prompt"], frame["completion"], systems)]
        trained = lambda e: sum(x != -100 for x in e["labels"])  # noqa: E731
        comp_len = np.array([trained(f) for f in full], dtype=np.int64)
    # over: the answer (with its EOS / end-of-turn) does not fit max_length whole
    over = (comp_len > config.max_length if layout == "bare" else
            np.array([trained(e) < n for e, n in zip(examples, comp_len)], dtype=bool))
    if over.any() and config.overlength == "error":
        ids = frame.loc[over, "example_id"].head(3).tolist()
        raise SFTDataError(
            f"{int(over.sum())} of {len(frame)} {split} examples have a completion longer than max_length="
            f"{config.max_length} tokens (longest {int(comp_len.max())} incl. EOS), e.g. {ids}. They would be "
            "cut at max_length and lose their EOS, so the model would not learn where those answers end. "
            "Raise max_length, or set overlength='truncate' (train on the cut text) or 'drop' (skip them).")
    if over.any() and config.overlength == "drop":
        frame = frame[~over].reset_index(drop=True)
        if frame.empty:
            raise SFTDataError(f"overlength='drop' removed every {split} example (max_length={config.max_length})")
        if examples is not None:
            examples = [e for e, o in zip(examples, over) if not o]
            systems = _systems(frame)
    if examples is None:
        examples = [tokenize_example(tokenizer, p, c, max_length=config.max_length, layout=layout, system=s)
                    for p, c, s in zip(frame["prompt"], frame["completion"], systems)]
    return examples, frame


def audit_training_masks(tokenizer, examples: list[dict], frame: pd.DataFrame, config: SFTConfig,
                         sample: int | None = 256):
    """The mask audit (``template_tokens.mask_audit``) of exactly what training will see, before anything
    is written: a stable sample of the tokenized train examples; raises ``MaskAuditError`` on zero trained
    tokens, an untrained EOS, a doubled BOS, an unmasked prompt or misaligned labels. Completions cut by
    ``overlength="truncate"`` lose their EOS by choice (``tokenize_split`` reported them): not audited."""
    from .template_tokens import mask_audit

    rows = [{"example_id": i, "input_ids": e["input_ids"], "labels": e["labels"]}
            for i, e in zip(frame["example_id"], examples)
            if not (config.overlength == "truncate" and len(e["input_ids"]) >= config.max_length)]
    return mask_audit(rows, tokenizer, max_length=config.max_length, sample=sample, seed=config.seed,
                      raise_on_error=True) if rows else None


def validation_subset(frame: pd.DataFrame, config: SFTConfig) -> pd.DataFrame:
    """The validation examples scored at each evaluation: all, or a seeded random ``max_eval_examples``.

    Not the first rows: ``example_id`` starts with the template id, so the first rows would be one or
    two templates' examples only, and early stopping, keep-best and sweep pruning would choose on them.
    """
    n = config.max_eval_examples
    if n is None or len(frame) <= n:
        return frame
    return frame.sample(n=n, random_state=config.seed).sort_values("example_id").reset_index(drop=True)


def majority_baseline(train: pd.DataFrame, test: pd.DataFrame) -> float | None:
    if test.empty:
        return None
    top = train["completion"].map(normalize_answer).value_counts().idxmax()
    return float((test["completion"].map(normalize_answer) == top).mean())
