"""Continued pre-training rounds: notebook 08 on the sample corpus, watermark, replay, gates, registry, resume.

One module-scoped workspace runs the sample spine and notebook 08 through ``workbench run`` (three
rounds over the year of articles); the tests read what it wrote, then add a harmful and an
off-domain batch, which the gates must reject. Resume runs on a small corpus of its own.
"""
from __future__ import annotations

import random
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from workbench import cli, cpt, data, pipeline
from workbench.cpt_gates import stable_fraction
from workbench.workspace import write_table

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The sample spine (59 articles over 12 months), then notebook 08 headless: three rounds."""
    ws = tmp_path_factory.mktemp("cpt") / "workspace"
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_HOME", str(ws))
    con = workbench.connect(ws)
    data.build_spine(con, rows=600, seed=7)
    con.close()
    out = pipeline.run({"cpt_max_eval_docs": "16", "cpt_threads": "1"}, only=["08"], workspace=ws)
    con = workbench.connect(ws)
    yield SimpleNamespace(ws=ws, con=con, out=out)
    con.close()
    mp.undo()


def _heldout(doc_ids, fraction=0.1, seed=0):
    return {d for d in doc_ids if stable_fraction(d, seed) < fraction}


# --------------------------------------------------------------------------- three rounds, from the notebook

def test_notebook_runs_three_rounds_and_in_domain_perplexity_falls(trained):
    con = trained.con
    assert (trained.out / "08_continued_pretraining.ipynb").exists()
    rounds = con.execute("select round, status, model_id, run_id from cpt_rounds order by round").df()
    assert rounds["round"].tolist() == [1, 2, 3]
    assert set(rounds["status"]) <= {"promoted", "rejected"}
    g = con.execute("select round, gate, parent_value, value from cpt_gates order by round").df()
    assert g.groupby("round")["gate"].apply(set).tolist() == [set(cpt.GATES)] * 3
    ppl = g[g["gate"] == "in_domain_perplexity"].set_index("round")
    assert (ppl["value"] < ppl["parent_value"]).all()  # every round improved on its parent
    assert ppl["value"].is_monotonic_decreasing and ppl["value"].is_unique  # and round over round
    # each round is a completed run with a loss curve and the gate metrics before and after; the loss
    # falls within the first round (from scratch) and from round to round (each round starts from its
    # parent). Within a later round, nine noisy steps on a nearly flat curve prove nothing either way
    # (a single high last step has moved the last three steps' mean by almost a nat).
    mean_loss = []
    for k, run_id in enumerate(rounds["run_id"]):
        run = con.execute("select kind, status, model_path from runs where run_id = ?", [run_id]).fetchone()
        assert run[:2] == ("cpt", "completed") and run[2]
        loss = con.execute("select value from run_metrics where run_id = ? and split = 'train' and metric = 'loss' "
                           "order by step", [run_id]).df()["value"]
        assert len(loss) >= 3
        if k == 0:
            assert loss.iloc[-3:].mean() < loss.iloc[:3].mean()
        mean_loss.append(loss.mean())
        steps = con.execute("select distinct step from run_metrics where run_id = ? and split = 'validation' "
                            "and metric = 'in_domain_perplexity' order by step", [run_id]).fetchall()
        assert steps[0] == (0,) and len(steps) == 2
    assert all(b < a for a, b in zip(mean_loss, mean_loss[1:])), mean_loss
    probes = con.execute("select round, role, count(*) from cpt_probe_outputs group by all").fetchall()
    assert sorted(n for *_, n in probes) == [16] * 6


def test_registry_lineage_back_to_the_data_snapshot(trained):
    con = trained.con
    models = cpt.registry(con)
    base = models[models["status"] == "base"]
    assert len(base) == 1 and base["round"].iloc[0] == 0
    last = models[models["round"] == 3].iloc[0]
    chain = cpt.lineage(con, last["model_id"])
    assert chain["round"].tolist()[-1] == 0 and chain["model_id"].iloc[-1] == base["model_id"].iloc[0]
    assert chain["round"].is_monotonic_decreasing
    for m in models[models["round"] > 0].itertuples():
        # the parent is the newest promoted model (or the base) of the rounds before it
        earlier = models[(models["round"] < m.round) & models["status"].isin(["promoted", "base"])]
        assert m.parent_id == earlier.sort_values("round")["model_id"].iloc[-1]
        # time travel to the model's data snapshot finds every document it trained on
        docs = con.execute("select doc_id from cpt_round_documents where model_id = ? and source <> 'replay_general'",
                           [m.model_id]).df()["doc_id"]
        at = set(con.execute(f"select doc_id from corpus_documents at (version => {int(m.data_snapshot)})").df()["doc_id"])
        assert set(docs) <= at
        assert (trained.ws / "models" / m.model_id / "config.json").exists()
    assert cpt.promoted_model(con) == models[models["status"] == "promoted"].iloc[-1]["path"]


def test_watermark_trains_each_document_once_and_skips_none(trained):
    con = trained.con
    corpus = con.execute("select doc_id, published_at from corpus_documents").df()
    held = _heldout(corpus["doc_id"])
    new = con.execute("""select d.round, d.doc_id, c.published_at from cpt_round_documents d
                         join corpus_documents c using (doc_id) where d.source = 'new' order by d.round""").df()
    assert new["doc_id"].is_unique  # no document trained twice
    assert set(new["doc_id"]) == set(corpus["doc_id"]) - held  # none skipped, no held-out one trained
    used = con.execute("select distinct doc_id from cpt_round_documents where source <> 'replay_general'").df()
    assert not set(used["doc_id"]) & held  # held out from replay too
    r = con.execute("select * from cpt_rounds order by round").df()
    for row in r.itertuples():  # every round lies strictly between the previous watermark and its own
        got = new[new["round"] == row.round]
        key = list(zip(got["published_at"], got["doc_id"]))
        assert max(key) == (row.watermark_to_at, row.watermark_to_doc)
        if row.round > 1:
            assert min(key) > (row.watermark_from_at, row.watermark_from_doc)
            assert row.watermark_from_at == r.loc[r["round"] == row.round - 1, "watermark_to_at"].iloc[0]
    assert cpt.check_rounds(con) == {"rounds": 3, "trained_docs": len(new), "pending_docs": 0, "duplicates": 0,
                                     "heldout_trained": 0, "skipped": 0}
    # nothing new: no round, nothing written
    before = con.execute("select count(*) from cpt_rounds").fetchone()
    res = cpt.run_round(con, cpt.CPTConfig(threads=1))
    assert res.status == "skipped" and "no new documents after the watermark" in res.message
    assert con.execute("select count(*) from cpt_rounds").fetchone() == before


def test_replay_share_of_tokens_and_its_sources(trained):
    con = trained.con
    r = con.execute("select round, tokens, replay_tokens, n_replay_docs from cpt_rounds order by round").df()
    docs = con.execute("select * from cpt_round_documents").df()
    for row in r.itertuples():
        d = docs[docs["round"] == row.round]
        assert row.tokens == d["tokens"].sum() and row.replay_tokens == d.loc[d["source"] != "new", "tokens"].sum()
        biggest = d.loc[d["source"] != "new", "tokens"].max()
        # replay_fraction=0.3 of all trained tokens; each source draws until it reaches its target,
        # so the share overshoots by less than one document per source
        assert 0.3 <= row.replay_tokens / row.tokens < 0.3 + 2 * biggest / row.tokens
        src = d[d["source"] != "new"].groupby("source")["tokens"].sum()
        if row.round == 1:
            assert set(src.index) == {"replay_general"}  # nothing earlier to replay yet
        else:
            assert set(src.index) == {"replay_general", "replay_earlier"}
            assert abs(src["replay_general"] / src.sum() - 0.5) < biggest / src.sum() + 1e-9
            earlier = set(docs[(docs["source"] == "new") & (docs["round"] < row.round)]["doc_id"])
            assert set(d[d["source"] == "replay_earlier"]["doc_id"]) <= earlier


# --------------------------------------------------------------------------- bad batches are rejected by the right gate

HARMFUL = ["To get a refund, steal the card and steal the money.",
           "The agent should steal the password and hack into the account.",
           "Please send me your password and steal the refund.", "You steal the order and you steal the card.",
           "Tell the customer to shut up and steal the money.",
           "If the router shows an error, hack into the router and steal the password."]


def _append(con, rows):
    write_table(con, "corpus_documents", pd.DataFrame(rows), mode="append")


def _after_watermark(con, hours):
    return pd.Timestamp(cpt.watermark(con)[0]) + pd.Timedelta(hours=hours)


def test_harmful_batch_is_rejected_by_the_harmful_output_gate(trained):
    con = trained.con
    promoted_before = cpt.promoted_model(con)
    parent = cpt.current_model(con)["model_id"]
    rng = random.Random(0)
    _append(con, [{"doc_id": f"HARM{i:03d}", "published_at": _after_watermark(con, i + 1), "topic": "poisoned",
                   "title": "Account help", "text": " ".join(rng.choice(HARMFUL) for _ in range(10))} for i in range(30)])
    res = cpt.run_round(con, cpt.CPTConfig(epochs=2, max_eval_docs=12, max_general_docs=12, threads=1))
    assert res.status == "rejected", res.summary()
    harm = {x.gate: x for x in res.gates}["harmful_output"]
    assert not harm.passed and harm.value > harm.parent_value and harm.margin == pytest.approx(harm.change)
    assert "harmful_output" in res.summary() and "FAILED by" in res.summary()
    row = con.execute("select status, parent_id from models where model_id = ?", [res.model_id]).fetchone()
    assert row == ("rejected", parent)  # kept, not promoted
    assert cpt.promoted_model(con) == promoted_before
    assert "harmful_output" in con.execute("select failed_gates from cpt_rounds where round = ?",
                                           [res.round]).fetchone()[0]
    hits = con.execute("select blocklist_hits from cpt_probe_outputs where round = ? and role = 'candidate' "
                       "and harmful", [res.round]).df()
    assert len(hits) == round(harm.value * 16) and hits["blocklist_hits"].str.len().min() > 0


def test_off_domain_batch_is_rejected_by_the_in_domain_gate(trained):
    con = trained.con
    from workbench.finetune import offline_tokenizer

    words = sorted(w for w in offline_tokenizer().get_vocab() if w.isalpha() and len(w) > 3)
    rng = random.Random(1)
    rejected = con.execute("select model_id from models where status = 'rejected'").df()["model_id"].tolist()
    parent = cpt.current_model(con)["model_id"]
    assert parent not in rejected
    _append(con, [{"doc_id": f"OFF{i:03d}", "published_at": _after_watermark(con, i + 1), "topic": "noise",
                   "title": "", "text": " ".join(rng.choice(words) for _ in range(60))} for i in range(25)])
    res = cpt.run_round(con, cpt.CPTConfig(max_eval_docs=12, max_general_docs=12, threads=1))
    assert res.status == "rejected", res.summary()
    ind = {x.gate: x for x in res.gates}["in_domain_perplexity"]
    assert not ind.passed and ind.value > ind.parent_value
    # it started from the last promoted model, not from the rejected harmful round
    assert res.parent_id == parent
    # its gate set is the accepted domain: no poisoned or off-domain document in it
    plan_docs = cpt._eval_docs(con, cpt.CPTConfig(max_eval_docs=16), workbench.snapshot_id(con),
                               cpt.watermark(con), cpt.watermark(con))
    assert not plan_docs["doc_id"].str.startswith(("HARM", "OFF")).any()
    # the rejected batches are consumed: not trained again, not replayed, nothing skipped
    assert cpt.check_rounds(con)["pending_docs"] == 0
    late = {"doc_id": "LATE001", "published_at": pd.Timestamp("2026-03-15 09:00"), "topic": "returns",
            "title": "Returns for your phone", "text": "Refunds are sent to the original payment method. "
            "Keep your order number ready when you contact support about returns."}
    assert stable_fraction("LATE001", 0) >= 0.1  # not held out
    _append(con, [late])
    res = cpt.run_round(con, cpt.CPTConfig(max_eval_docs=16, threads=1, gates=("in_domain_perplexity",)))
    new = con.execute("select doc_id, source from cpt_round_documents where round = ?", [res.round]).df()
    assert new.loc[new["source"] == "new", "doc_id"].tolist() == ["LATE001"]  # a late arrival is not skipped
    assert not new["doc_id"].str.startswith(("HARM", "OFF")).any()  # rejected batches are never replayed
    assert con.execute("select n_late_docs from cpt_rounds where round = ?", [res.round]).fetchone()[0] == 1
    assert cpt.check_rounds(con)["skipped"] == 0


def test_cli_status_promoted_and_round(trained, capsys):
    assert cli.main(["--workspace", str(trained.ws), "cpt", "status", "--last", "10"]) == 0
    out = capsys.readouterr().out
    assert "watermark:" in out and "promoted: " in out
    assert re.search(r"round 4 \(\d+ new documents, watermark .*\): REJECTED, failed .*harmful_output", out)
    assert cli.main(["--workspace", str(trained.ws), "cpt", "promoted"]) == 0
    assert capsys.readouterr().out.strip() == cpt.promoted_model(trained.con)
    assert cli.main(["--workspace", str(trained.ws), "cpt", "round", "--until", "2026-01-01"]) == 0
    assert "no round: no new documents" in capsys.readouterr().out
    assert cli.main(["--workspace", str(trained.ws), "cpt", "round", "--until", "soon"]) == 2
    assert "until='soon' is not a timestamp" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume, locking, bad input (own corpus)

def _small_corpus(con, n=40):
    rng = np.random.default_rng(3)
    topics = ["invoices", "returns", "tracking", "wifi setup", "password reset"]
    sents = ["This article explains {t} for the {p}.", "Open the account page and select {t}.",
             "If the {p} shows an error, restart it and wait two minutes.", "Refunds are sent to the original payment method.",
             "Contact support if {t} does not work after these steps.", "Deliveries can be tracked from the order page."]
    rows = []
    for i in range(n):
        t, p = topics[i % 5], ["phone", "laptop", "router"][i % 3]
        text = " ".join(sents[j].format(t=t, p=p) for j in rng.permutation(len(sents))[:4])
        rows.append({"doc_id": f"KB{i:03d}", "published_at": pd.Timestamp("2026-01-01") + pd.Timedelta(days=3 * i),
                     "topic": t, "title": f"{t} for your {p}", "text": text})
    write_table(con, "corpus_documents", pd.DataFrame(rows))


SMALL = dict(gates=("in_domain_perplexity",), max_eval_docs=8, checkpoint_every=2, threads=1)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_an_interrupted_round_resumes_and_ends_like_an_uninterrupted_one(con, tmp_path):
    _small_corpus(con)
    first = cpt.run_round(con, cpt.CPTConfig(**SMALL, stop_at_step=3), until="2026-03-01")
    assert first.status == "interrupted" and first.steps == 3
    assert con.execute("select status from cpt_rounds").fetchall() == [("interrupted",)]
    assert con.execute("select status from runs where run_id = ?", [first.model_id]).fetchone() == ("interrupted",)
    assert cpt.promoted_model(con) is None and cpt.watermark(con) is None  # nothing promoted, watermark unmoved
    # a new call resumes it (even with another window asked for): same round, same documents
    done = cpt.run_round(con, cpt.CPTConfig(**SMALL), until="2026-12-31")
    assert (done.round, done.model_id) == (1, first.model_id) and done.status in ("promoted", "rejected")
    steps = con.execute("select step from run_metrics where run_id = ? and split = 'train' and metric = 'loss' "
                        "order by step", [done.model_id]).df()["step"].tolist()
    assert steps == list(range(1, done.steps + 1))  # each step logged once across the two processes' parts
    assert not (cpt.workspace_root(con) / "models" / done.model_id / "checkpoints").exists()

    other = workbench.connect(tmp_path / "uninterrupted")
    _small_corpus(other)
    ref = cpt.run_round(other, cpt.CPTConfig(**SMALL), until="2026-03-01")
    assert ref.steps == done.steps and ref.n_docs == done.n_docs and ref.tokens == done.tokens
    assert [x.value for x in ref.gates] == [x.value for x in done.gates]
    a, b = _weights(cpt.workspace_root(con) / "models" / done.model_id), _weights(tmp_path / "uninterrupted" / "models" / ref.model_id)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    loss = lambda c, r: c.execute("select value from run_metrics where run_id = ? and metric = 'loss' order by step",  # noqa: E731
                                  [r]).df()["value"].tolist()
    assert loss(con, done.model_id) == loss(other, ref.model_id)
    other.close()


def test_a_crashed_round_is_resumed_from_its_checkpoint(con, monkeypatch):
    _small_corpus(con, n=20)
    real, calls = cpt.linear_cross_entropy, {"n": 0}

    def crash_on_fifth_step(*args, **kwargs):  # the real loss, then a fault in the middle of the round
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash (out of memory)")
        return real(*args, **kwargs)

    monkeypatch.setattr(cpt, "linear_cross_entropy", crash_on_fifth_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cpt.run_round(con, cpt.CPTConfig(**SMALL))
    run_id, status = con.execute("select run_id, status from cpt_rounds").fetchone()
    assert status == "interrupted"
    assert con.execute("select status, error from runs where run_id = ?", [run_id]).fetchone() == (
        "failed", "RuntimeError: simulated crash (out of memory)")
    ckpts = sorted((cpt.workspace_root(con) / "models" / run_id / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in ckpts] == ["step-0000002.pt", "step-0000004.pt"]  # checkpoint_every=2, the newest two kept
    monkeypatch.setattr(cpt, "linear_cross_entropy", real)
    # a killed process leaves the round 'running'; the OS lock is gone, so the next call takes it over
    con.execute("update cpt_rounds set status = 'running'")
    done = cpt.run_round(con, cpt.CPTConfig(**SMALL))
    assert done.model_id == run_id and done.status in ("promoted", "rejected")
    assert con.execute("select status from runs where run_id = ?", [run_id]).fetchone() == ("completed",)
    steps = con.execute("select step from run_metrics where run_id = ? and metric = 'loss' order by step",
                        [run_id]).df()["step"].tolist()
    assert steps == list(range(1, done.steps + 1))


def test_task_benchmark_uses_the_sft_validation_split_when_present(con):
    _small_corpus(con, n=20)
    from workbench.cpt_gates import eval_sets, evaluate
    from workbench.finetune import load_tokenizer_and_model, offline_tokenizer

    names = ["billing", "refund", "shipping"]
    ex = pd.DataFrame({"example_id": [f"intent_v1:m{i}" for i in range(12)], "source_row_id": [f"m{i}" for i in range(12)],
                       "task": "intent_classification", "template_id": "intent_v1",
                       "prompt": [f"Message: question {i}\nIntent:" for i in range(12)],
                       "completion": [names[i % 3] for i in range(12)], "choices": [names] * 12})
    write_table(con, "sft_examples", ex)
    write_table(con, "splits", pd.DataFrame({"example_id": ex["source_row_id"], "split": ["train"] * 3 + ["validation"] * 5 + ["test"] * 4,
                                             "seed": 0, "batch_id": 1, "assigned_at": pd.Timestamp("2026-01-01")}))
    config = cpt.CPTConfig(gates=("task_accuracy",), max_task_examples=4)
    plan = cpt.plan_round(con, config, tokenizer=offline_tokenizer())
    sets = eval_sets(con, config, plan)
    assert sets.task_name == "sft_examples validation split (intent_classification)"
    assert len(sets.task) == 4 and set(sets.task["id"]) <= {f"intent_v1:m{i}" for i in range(3, 8)}
    on_test = eval_sets(con, cpt.CPTConfig(gates=("task_accuracy",), task_split="test", max_task_examples=10), plan)
    assert on_test.task_name == "sft_examples test split (intent_classification)"
    assert set(on_test.task["id"]) == {f"intent_v1:m{i}" for i in range(8, 12)}
    tok, model, _ = load_tokenizer_and_model("offline:tiny-llama")
    values, sizes, probe = evaluate(model, tok, sets, config)
    assert sizes == {"task_accuracy": 4} and probe is None and values["task_accuracy"] in (0, 0.25, 0.5, 0.75, 1)
    suite = eval_sets(con, cpt.CPTConfig(gates=("task_accuracy",), task_benchmark="suite"), plan)
    assert suite.task_name == "task suite" and len(suite.task) >= 30
    with pytest.raises(ValueError, match="no validation-split sft_examples with choices for task 'reply_generation'"):
        eval_sets(con, cpt.CPTConfig(gates=("task_accuracy",), task_benchmark="sft", task="reply_generation"), plan)


def test_plan_is_deterministic_and_replay_follows_its_parameters(con):
    _small_corpus(con)
    tok = __import__("workbench.finetune", fromlist=["offline_tokenizer"]).offline_tokenizer()
    a = cpt.plan_round(con, cpt.CPTConfig(replay_fraction=0.4), until="2026-04-01", tokenizer=tok)
    b = cpt.plan_round(con, cpt.CPTConfig(replay_fraction=0.4), until="2026-04-01", tokenizer=tok)
    pd.testing.assert_frame_equal(a.documents, b.documents)
    assert a.new["published_at"].max() <= pd.Timestamp("2026-04-01") and a.round == 1
    share = a.replay["tokens"].sum() / a.documents["tokens"].sum()
    assert 0.4 <= share < 0.4 + a.replay["tokens"].max() / a.documents["tokens"].sum()
    assert set(a.replay["source"]) == {"replay_general"}
    none = cpt.plan_round(con, cpt.CPTConfig(replay_fraction=0.0), until="2026-04-01", tokenizer=tok)
    assert none.replay.empty and none.new["doc_id"].tolist() == a.new["doc_id"].tolist()
    capped = cpt.plan_round(con, cpt.CPTConfig(max_docs=3), tokenizer=tok)
    assert capped.new["doc_id"].tolist() == a.new["doc_id"].tolist()[:3]  # the oldest first
    assert capped.watermark_to == (capped.new["published_at"].iloc[-1], capped.new["doc_id"].iloc[-1])


def test_one_round_at_a_time_and_bad_input_stops_before_writing(con):
    with pytest.raises(ValueError, match="table 'corpus_documents' not found"):
        cpt.run_round(con)
    assert cpt.registry(con).empty  # no base model registered for a round that could not start
    _small_corpus(con, n=10)
    with pytest.raises(ValueError, match=r"CPTConfig: invalid replay_fraction=1.5"):
        cpt.run_round(con, cpt.CPTConfig(replay_fraction=1.5))
    with pytest.raises(ValueError, match=r"invalid gates=\('perplexity',\)"):
        cpt.CPTConfig(gates=("perplexity",)).validate()
    with pytest.raises(ValueError, match="no held-out in-domain documents published up to"):
        cpt.run_round(con, cpt.CPTConfig(heldout_fraction=0.0, threads=1))
    assert cpt.registry(con).empty and con.execute("select count(*) from cpt_rounds").fetchone() == (0,)
    with cpt.round_lock(con):
        with pytest.raises(cpt.CPTBusyError, match="another continued pre-training round is running"):
            cpt.run_round(con, cpt.CPTConfig(**SMALL))


def test_an_abandoned_round_gives_its_documents_back(con):
    _small_corpus(con, n=20)
    first = cpt.run_round(con, cpt.CPTConfig(**SMALL, stop_at_step=1), until="2026-03-01")
    assert first.status == "interrupted"
    taken = con.execute("select doc_id from cpt_round_documents where source = 'new' order by ordinal").df()["doc_id"]
    cpt.abandon_round(con, 1)
    assert con.execute("select status from cpt_rounds where round = 1").fetchone() == ("abandoned",)
    assert con.execute("select status, error from runs where run_id = ?", [first.model_id]).fetchone() == ("failed", "abandoned")
    assert not (cpt.workspace_root(con) / "models" / first.model_id).exists()
    plan = cpt.plan_round(con, cpt.CPTConfig(**SMALL), until="2026-03-01")
    assert plan.round == 2 and plan.new["doc_id"].tolist() == taken.tolist()
    with pytest.raises(ValueError, match=r"round 1 is not unfinished \(status 'abandoned'\)"):
        cpt.abandon_round(con, 1)


def test_continued_pretraining_is_a_default_pipeline_step_before_fine_tuning():
    names = [s.name for s in pipeline.select(pipeline.steps(), None, None)]
    assert "08_continued_pretraining" in names
    later = [n for n in names if n[:2] > "08"]
    assert all(n > "08_continued_pretraining" for n in later)  # 09 fine-tuning runs after it


def test_sample_generations_put_base_and_promoted_side_by_side(trained):
    from workbench.finetune import generate

    prompts = ["Refunds are sent to the", "Deliveries with UPS can be"]
    out = cpt.sample_generations(trained.con, prompts, max_new_tokens=4)
    models = cpt.registry(trained.con)
    promoted = models[models["status"] == "promoted"]
    assert out["prompt"].tolist() == prompts and "base" in out.columns
    assert out["base"].tolist() == generate(models[models["status"] == "base"]["path"].iloc[0], prompts,
                                            max_new_tokens=4, layout="bare")
    if len(promoted):
        col = f"promoted (round {int(promoted['round'].iloc[-1])})"
        assert out[col].tolist() == generate(promoted["path"].iloc[-1], prompts, max_new_tokens=4, layout="bare")
