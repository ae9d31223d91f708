"""Extractive QA (SQuAD) end to end on a tiny random Llama and a byte-level BPE tokenizer built in memory (no
downloads): fine-tuning learns a small fixture, save -> load gives the same answers (full, LoRA, LoRA merged),
the output files have the official formats, and zero-shot generation runs (v1 and v2)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SQUAD, zeroshot_options
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tunelab import runs
from tunelab.data.squad import SquadExample
from tunelab.errors import UsageError
from tunelab.models import load_task_model, load_tokenizer
from tunelab.models.loading import body
from tunelab.tasks.extractive_qa.generation import QAPrompt, clean_answer, load_prompt
from tunelab.tasks.extractive_qa.metrics import question_type, squad_v1
from tunelab.tasks.extractive_qa.spans import doc_stride, predict_spans
from tunelab.training import TrainConfig

CONTEXTS = [
    (
        "Alice lives in Paris and works as a baker. Bob lives in Rome and works as a pilot. "
        "Carol lives in Oslo and works as a doctor."
    ),
    "The red box holds seven apples. The blue box holds three pears. The green box holds nine plums.",
    (
        "Maria was born in 1990 in Lima. Her brother Juan was born in 1994 in Quito. "
        "They moved to Madrid in 2010."
    ),
]
QUESTIONS = [  # (context, question, answer)
    (0, "Where does Alice live?", "Paris"),
    (0, "What is Bob's job?", "pilot"),
    (0, "Where does Carol live?", "Oslo"),
    (0, "What is Alice's job?", "baker"),
    (1, "How many apples are in the red box?", "seven"),
    (1, "Which fruit is in the blue box?", "pears"),
    (1, "What does the green box hold?", "nine plums"),
    (1, "How many pears are in the blue box?", "three"),
    (2, "When was Maria born?", "1990"),
    (2, "Where was Juan born?", "Quito"),
    (2, "Where did they move?", "Madrid"),
    (2, "When did they move to Madrid?", "2010"),
]
IMPOSSIBLE = [(0, "Where does Dave live?"), (1, "How many grapes are in the box?")]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def fixture(version_2: bool = False) -> list[SquadExample]:
    out = []
    for i, (c, q, a) in enumerate(QUESTIONS):
        ctx = CONTEXTS[c]
        out.append(SquadExample(f"q{i}", f"Article_{c}", ctx, q, [{"text": a, "answer_start": ctx.index(a)}]))
    if version_2:
        for i, (c, q) in enumerate(IMPOSSIBLE):
            out.append(SquadExample(f"x{i}", f"Article_{c}", CONTEXTS[c], q, [], True))
    return out


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    corpus = (
        CONTEXTS
        + [q for _, q, _ in QUESTIONS]
        + [q for _, q in IMPOSSIBLE]
        + [
            "Title: Background: Question: Answer: The answer is unanswerable "
            "user assistant system passage span",
        ]
    )
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus * 3, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [  # as Llama 3: BOS added, offsets not trimmed
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)]),
        ]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A from_pretrained folder holding a tiny random Llama causal LM and its tokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def train_cfg(**kw) -> TrainConfig:
    values = {
        "method": "full",
        "learning_rate": 3e-3,
        "epochs": 25,
        "batch_size": 4,
        "max_length": 96,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "log_every": 5,
        "bf16": False,
        "seed": 0,
    }
    values.update(kw)
    return TrainConfig(**values)


def read_json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def full_run(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    metrics = runs.finetune(SQUAD, base, fixture(), fixture(), "fixture", out, train_cfg())
    return out, metrics


def test_task_model_body_is_the_pretrained_causal_lm(base):
    lm = LlamaForCausalLM.from_pretrained(base)
    qa = load_task_model(base, "span")
    for name in (
        "embed_tokens.weight",
        "layers.0.self_attn.q_proj.weight",
        "layers.1.mlp.down_proj.weight",
        "norm.weight",
    ):
        assert torch.equal(body(qa).state_dict()[name], body(lm).state_dict()[name]), name


def test_finetune_learns_the_fixture(base, full_run):
    out, metrics = full_run
    cfg = train_cfg()
    tok = load_tokenizer(base)
    untrained = runs.prepare_model(base, SQUAD, cfg, tok)
    preds, _, _ = predict_spans(
        untrained.eval(), tok, fixture(), cfg.max_length, doc_stride(cfg.max_length), progress=False
    )
    before = squad_v1(preds, {ex.id: [a["text"] for a in ex.answers] for ex in fixture()})["f1"]
    assert metrics["f1"] > 60 and metrics["f1"] > before + 30, (before, metrics["f1"])
    assert metrics["mode"] == "finetuned" and metrics["task"] == "squad" and metrics["n"] == len(fixture())
    assert (out / "loss.png").is_file() and not (out / "checkpoints").exists()
    assert read_json(out / "tunelab.json")["stride"] == doc_stride(96) == 32


def test_outputs_have_the_official_formats(full_run):
    out, _ = full_run
    ev = out / "eval"
    m = read_json(ev / "metrics.json")
    for key in (
        "task",
        "model",
        "mode",
        "data",
        "n",
        "exact_match",
        "f1",
        "f1_ci95",
        "train_seconds",
        "saved",
    ):
        assert key in m, key
    lo, hi = m["f1_ci95"]
    assert 0 <= lo <= m["f1"] <= hi <= 100
    preds = read_json(ev / "predictions.json")
    assert set(preds) == {ex.id for ex in fixture()} and all(isinstance(v, str) for v in preds.values())
    rows = [json.loads(line) for line in (ev / "per_example.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex.id for ex in fixture()]
    keys = {"id", "em", "f1", "prediction", "gold", "question", "question_type", "answer_words"}
    assert keys <= set(rows[0])
    assert rows[6]["answer_words"] == 2 and rows[0]["question_type"] == "where"
    assert sum(r["f1"] for r in rows) * 100 / len(rows) == pytest.approx(m["f1"])
    nbest = read_json(ev / "nbest_predictions.json")
    assert nbest["q0"][0]["text"] == preds["q0"]
    assert not (ev / "na_probs.json").exists()


def _same_after_reload(out, tmp_path, examples):
    again = runs.evaluate(str(out), examples, "fixture", tmp_path / "reloaded")
    before = read_json(out / "eval" / "metrics.json")
    reloaded = read_json(tmp_path / "reloaded" / "predictions.json")
    assert reloaded == read_json(out / "eval" / "predictions.json")
    for key in ("exact_match", "f1"):
        assert again[key] == pytest.approx(before[key])
    return again, before


def test_save_load_full_gives_the_same_answers(full_run, tmp_path):
    out, _ = full_run
    _same_after_reload(out, tmp_path, fixture())


def test_save_load_lora_v2(base, tmp_path):
    out = tmp_path / "lora"
    cfg = train_cfg(method="lora", epochs=4, lora_r=4, lora_alpha=8)
    runs.finetune(
        SQUAD, base, fixture(True), fixture(True), "fixture", out, cfg
    )  # unanswerable: scored as v2.0
    assert (out / "adapter_config.json").is_file()
    again, before = _same_after_reload(out, tmp_path, fixture(True))
    assert before["task"] == again["task"] == "squad_v2"
    for key in ("exact", "HasAns_f1", "NoAns_f1", "NoAns_total", "best_f1", "best_f1_thresh", "best_exact"):
        assert key in again, key
    na_before = read_json(out / "eval" / "na_probs.json")
    na_again = read_json(tmp_path / "reloaded" / "na_probs.json")
    assert na_before.keys() == na_again.keys()
    assert all(na_again[k] == pytest.approx(v, abs=1e-4) for k, v in na_before.items())


def test_save_load_lora_merged(base, tmp_path):
    out = tmp_path / "merged"
    cfg = train_cfg(method="lora", epochs=4, lora_r=4, lora_alpha=8, merge_lora=True)
    runs.finetune(SQUAD, base, fixture(), fixture(), "fixture", out, cfg)
    assert not (out / "adapter_config.json").exists() and read_json(out / "tunelab.json")["saved"] == "merged"
    _same_after_reload(out, tmp_path, fixture())


@pytest.mark.parametrize("prompt", ["chat", "plain"])
def test_zeroshot_runs_and_writes_files(base, tmp_path, prompt):
    m = runs.zeroshot(
        SQUAD,
        base,
        fixture(),
        "fixture",
        tmp_path / "zs",
        zeroshot_options(SQUAD, prompt=prompt, batch_size=5, max_new_tokens=4),
    )
    assert m["mode"] == "zeroshot" and m["task"] == "squad" and 0 <= m["f1"] <= 100
    preds = read_json(tmp_path / "zs" / "predictions.json")
    assert set(preds) == {ex.id for ex in fixture()}
    assert (tmp_path / "zs" / "per_example.jsonl").is_file()


def test_zeroshot_v2_gives_na_probs(base, tmp_path):
    m = runs.zeroshot(
        SQUAD,
        base,
        fixture(True),
        "fixture",
        tmp_path / "zs2",
        zeroshot_options(SQUAD, batch_size=4, max_new_tokens=3),
    )
    assert m["task"] == "squad_v2" and "best_f1" in m and "NoAns_f1" in m
    na = read_json(tmp_path / "zs2" / "na_probs.json")
    preds = read_json(tmp_path / "zs2" / "predictions.json")
    assert set(na) == set(preds) == {ex.id for ex in fixture(True)}
    assert all(0.0 <= p <= 1.0 for p in na.values())
    assert all(preds[k] == "" for k, p in na.items() if p > 0.5)


@pytest.mark.parametrize("version_2", [False, True])
def test_zeroshot_extractive_decoding_answers_only_with_passage_spans(base, tmp_path, version_2):
    """decoding: extractive makes every answer a non-empty span of its passage (or, v2, the no-answer word),
    and so does grounded, the default; the choice is recorded in metrics.json."""
    examples = fixture(version_2)
    outs = {}
    for decoding in ("free", "extractive", "grounded"):
        options = zeroshot_options(
            SQUAD, batch_size=5, max_new_tokens=6, decoding=decoding, question_words="keep"
        )
        m = runs.zeroshot(SQUAD, base, examples, "fixture", tmp_path / decoding, options)
        assert m["decoding"] == decoding
        outs[decoding] = read_json(tmp_path / decoding / "nbest_predictions.json")
    by_id = {ex.id: ex for ex in examples}
    raw = {d: {q: n[0]["generated"] for q, n in outs[d].items()} for d in outs}
    for qid, text in raw["extractive"].items():
        answer = text.split('"')[0].split("\n")[0]
        assert answer and (answer in by_id[qid].context or answer.lower().startswith("unanswerable"))
    # this random model closes the quote at once when free; the constraint allows a stop only after an answer
    assert all(text.startswith('"') for text in raw["free"].values())
    # grounded: its empty free answers are answered again, extractive (v2: an empty answer is the no-answer)
    for qid, n in outs["grounded"].items():
        assert n[0]["text"] in by_id[qid].context and (
            version_2 or n[0]["generated"] == raw["extractive"][qid]
        )
    assert SQUAD.zeroshot_options()["decoding"] == "grounded"


def test_zero_shot_with_focus_prompts_with_the_focused_sentences_and_records_it(base, tmp_path, monkeypatch):
    """The prompts hold only the focused sentence; predictions, metrics and the written files keep the
    whole passage's question ids; metrics.json records `focus`."""
    seen = []
    from tunelab.tasks.extractive_qa import generation

    real = generation.generate_answers

    def spy(model, tokenizer, examples, *args, **kwargs):
        seen.extend(ex.context for ex in examples)
        return real(model, tokenizer, examples, *args, **kwargs)

    monkeypatch.setattr("tunelab.tasks.extractive_qa.task.generate_answers", spy)
    examples = fixture()
    options = zeroshot_options(SQUAD, batch_size=4, max_new_tokens=3, focus=1)
    m = runs.zeroshot(SQUAD, base, examples, "fixture", tmp_path / "zs", options)
    assert m["focus"] == 1
    assert seen[0] == "Alice lives in Paris and works as a baker."  # "Where does Alice live?"
    assert seen[1] == "Bob lives in Rome and works as a pilot."  # "What is Bob's job?"
    assert all(s in CONTEXTS[0] + CONTEXTS[1] + CONTEXTS[2] and s not in CONTEXTS for s in seen)
    preds = json.loads((tmp_path / "zs" / "predictions.json").read_text())
    assert set(preds) == {ex.id for ex in examples}
    # grounded answers are spans of the focused sentence
    assert all(preds[ex.id] in seen[i] for i, ex in enumerate(examples))


def test_k_shot_examples_are_focused_around_their_answers(base, monkeypatch):
    """With focus, the solved examples read focused passages too, each holding the answer it is shown with."""
    from tunelab.tasks.extractive_qa import generation

    got = {}
    real = generation.generate_answers

    def spy(model, tokenizer, examples, *args, shots=(), **kwargs):
        got["shots"] = list(shots)
        return real(model, tokenizer, examples, *args, shots=shots, **kwargs)

    monkeypatch.setattr("tunelab.tasks.extractive_qa.task.generate_answers", spy)
    tok = load_tokenizer(base, padding_side="left")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    # the question shares words with Alice's and Carol's sentences; its answer is in Bob's
    at = CONTEXTS[0].index("pilot")
    odd = SquadExample(
        "odd", "t", CONTEXTS[0], "Not Alice, not Carol: who?", [{"text": "pilot", "answer_start": at}]
    )
    shots = [fixture()[4], odd]
    options = zeroshot_options(SQUAD, batch_size=4, max_new_tokens=2, focus=1)
    SQUAD.zero_shot(model, tok, fixture()[:2], options, shots=shots)
    assert [s.context for s in got["shots"]] == [
        "The red box holds seven apples.",
        "Bob lives in Rome and works as a pilot.",
    ]
    assert all(s.answers[0]["text"] in s.context for s in got["shots"])


def test_zeroshot_of_v2_questions_takes_squad_v2s_defaults(base, tmp_path):
    """`--task squad` given a file with unanswerable questions is scored as squad_v2, with squad_v2's
    defaults: the whole passage (v1.1 focuses to 2 sentences; on v2.0 focus gained no significant F1)."""
    from helpers import squad_json

    from tunelab.cli import main

    data = squad_json(fixture(True), tmp_path / "v2.json")
    args = ["zeroshot", base, "--task", "squad", "--data-file", str(data), "--max-new-tokens", "3"]
    assert main([*args, "--out", str(tmp_path / "zs")]) == 0
    m = read_json(tmp_path / "zs" / "metrics.json")
    assert m["task"] == "squad_v2" and m["focus"] == 0
    assert main([*args, "--focus", "1", "--out", str(tmp_path / "zs1")]) == 0  # given: kept
    assert read_json(tmp_path / "zs1" / "metrics.json")["focus"] == 1


@pytest.mark.parametrize("version_2", [False, True])
def test_a_static_kv_cache_generates_the_same_answers(base, tmp_path, version_2):
    examples = fixture(version_2)
    got = {}
    for cache in ("dynamic", "static"):
        options = zeroshot_options(SQUAD, batch_size=3, max_new_tokens=5, kv_cache=cache)
        m = runs.zeroshot(SQUAD, base, examples, "fixture", tmp_path / cache, options)
        assert m["kv_cache"] == cache
        nbest = read_json(tmp_path / cache / "nbest_predictions.json")
        na = read_json(tmp_path / cache / "na_probs.json") if version_2 else {}
        got[cache] = ({q: n[0]["generated"] for q, n in nbest.items()}, na)
    assert got["static"][0] == got["dynamic"][0]
    for qid, p in got["dynamic"][1].items():
        assert got["static"][1][qid] == pytest.approx(p, abs=1e-5)
    assert SQUAD.zeroshot_options()["kv_cache"] == "dynamic"


def test_prompts_render_and_validate(tmp_path):
    tok = tiny_tokenizer()
    ex = fixture()[0]
    plain = load_prompt("plain").render(tok, ex)
    assert plain.startswith("Title: Article 0\n\nBackground: Alice")
    assert plain.endswith("Question: Where does Alice live?\n\nAnswer:")
    assert 'answer "unanswerable"' in load_prompt("plain").render(tok, ex, version_2=True)
    chat = load_prompt(None).render(tok, ex, version_2=True)
    assert chat.startswith("<s>user\n") and "unanswerable" in chat and ex.context in chat
    f = tmp_path / "p.yaml"
    f.write_text("text: 'Q: {question} C: {context}'\nanswer_prefix: ' A:'\n")
    assert load_prompt(str(f)).render(tok, ex) == f"Q: {ex.question} C: {ex.context} A:"
    with pytest.raises(UsageError):
        QAPrompt.from_mapping({"text": "no placeholders"})
    with pytest.raises(UsageError):
        load_prompt("nope")


def test_clean_answer():
    ctx = "Super Bowl 50 was played at Levi's Stadium in Santa Clara, California."
    assert clean_answer(' "levi\'s stadium".\nmore', ctx) == "Levi's Stadium"
    assert clean_answer("Santa Clara.", ctx) == "Santa Clara"
    assert clean_answer('Santa Clara" is where', ctx, ["\n", '"']) == "Santa Clara"
    assert clean_answer("somewhere else", ctx) == "somewhere else"
    assert question_type("In which year, and how?") == "which"
    assert question_type("Name the team.") == "other"
    assert question_type("What's the name?") == "what"


def test_span_loss_leaves_padding_out(tiny_model_dir):
    """Without padding the span loss is transformers' own; padding a batch further changes transformers' loss
    (pad positions enter its softmax) but not tunelab's, so a batch's split across processes cannot move
    it."""
    from tunelab.tasks.extractive_qa.windows import span_loss

    torch.manual_seed(0)
    model = load_task_model(tiny_model_dir, "span").eval()
    ids = torch.randint(5, 300, (3, 10))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "start_positions": torch.tensor([2, 9, 4]),
        "end_positions": torch.tensor([3, 9, 7]),
    }
    with torch.no_grad():
        assert span_loss(model, batch).item() == pytest.approx(model(**batch).loss.item(), rel=1e-6)
        padded = dict(
            batch,
            input_ids=torch.cat([ids, torch.zeros(3, 6, dtype=ids.dtype)], 1),
            attention_mask=torch.cat([batch["attention_mask"], torch.zeros(3, 6, dtype=ids.dtype)], 1),
        )
        assert span_loss(model, padded).item() == pytest.approx(span_loss(model, batch).item(), rel=1e-5)
        assert model(**padded).loss.item() != pytest.approx(model(**batch).loss.item(), rel=1e-5)


def _squad_file(path, examples) -> str:
    articles: dict[str, dict] = {}
    for ex in examples:
        art = articles.setdefault(
            ex.title, {"title": ex.title, "paragraphs": [{"context": ex.context, "qas": []}]}
        )
        qa = {"id": ex.id, "question": ex.question, "answers": ex.answers, "is_impossible": ex.is_impossible}
        art["paragraphs"][0]["qas"].append(qa)
    version = "v2.0" if any(ex.is_impossible for ex in examples) else "1.1"
    path.write_text(json.dumps({"version": version, "data": list(articles.values())}))
    return str(path)


def test_evaluate_version_without_task_reads_the_folders_task_at_that_version(full_run, tmp_path, capsys):
    """`evaluate DIR --version 2.0` with no --task: the folder's task (squad) at v2.0 reads squad_v2's dev
    file (unanswerable questions included) and scores it as v2.0; before, --version was ignored."""
    from tunelab.cli import main

    out, _ = full_run
    (tmp_path / "data" / "squad").mkdir(parents=True)
    _squad_file(tmp_path / "data" / "squad" / "v1.1-dev.json", fixture())
    _squad_file(tmp_path / "data" / "squad" / "v2.0-dev.json", fixture(True))
    for version in ("1.1", "2.0"):
        args = ["evaluate", str(out), "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / version)]
        assert main([*args, "--version", version]) == 0, capsys.readouterr().err
    v1, v2 = (read_json(tmp_path / v / "metrics.json") for v in ("1.1", "2.0"))
    assert v1["n"] == len(fixture()) and "HasAns_f1" not in v1
    assert v2["n"] == len(fixture(True)) and "HasAns_f1" in v2 and v2["task"] == "squad_v2"
