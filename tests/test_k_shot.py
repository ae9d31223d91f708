"""k-shot prompting (`shots: K`) for both kinds of task: K solved training examples, drawn with a fixed seed
and never from the evaluated examples, are shown before each input; the metrics record which."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from helpers import PLAIN_SPEC, SQUAD, SST2, sst2_examples, zeroshot_options
from test_runs_qa import base, fixture, tiny_tokenizer  # noqa: F401  (the tiny QA model fixture)

from tunelab import runs
from tunelab.data.squad import SquadExample
from tunelab.data.table import TextExample
from tunelab.errors import UsageError


def qa_pool(n: int = 6) -> list[SquadExample]:
    ctx = "Zed keeps bees in Bergen. Yan keeps goats in Turku."
    return [
        SquadExample(
            f"t{i}",
            "Train",
            ctx + f" Note {i}.",
            "Where does Zed keep bees?",
            [{"text": "Bergen", "answer_start": ctx.index("Bergen")}],
        )
        for i in range(n)
    ]


def test_draw_is_seeded_and_never_takes_an_evaluated_input():
    dev = sst2_examples(20, seed=1)
    pool = sst2_examples(40, seed=2) + [replace(ex, line=1000 + ex.line) for ex in dev]  # dev copied in
    a = SST2.draw_shots(pool, 5, 7, dev)
    assert a == SST2.draw_shots(pool, 5, 7, dev)  # fixed seed, same draw
    assert a != SST2.draw_shots(pool, 5, 8, dev) or len({ex.line for ex in a}) == 5
    evaluated = {(ex.text, ex.text_pair) for ex in dev}
    for seed in range(20):
        assert not {(ex.text, ex.text_pair) for ex in SST2.draw_shots(pool, 5, seed, dev)} & evaluated
    # QA: no shot from an evaluated passage, even under another id
    qa_dev = fixture()
    qa_pool_ = qa_pool() + [replace(ex, id="copy-" + ex.id) for ex in qa_dev]
    for seed in range(20):
        shots = SQUAD.draw_shots(qa_pool_, 3, seed, qa_dev)
        assert not {ex.context for ex in shots} & {ex.context for ex in qa_dev}
    with pytest.raises(UsageError, match="only 6 examples"):
        SQUAD.draw_shots(qa_pool_, 7, 0, qa_dev)


def test_prompts_show_the_shots_solved_before_the_input():
    tok = tiny_tokenizer()
    prompt = SQUAD.prompt("chat")
    shots = qa_pool(2)
    text = prompt.render(tok, fixture()[0], False, shots)
    assert text.count("<s>user\n") == 3 and text.count("<s>assistant\n") == 3  # 2 solved turns + the question
    assert text.count('The answer is "Bergen"</s>') == 2 and text.endswith('<s>assistant\nThe answer is "')
    assert text.rindex(fixture()[0].context) > text.rindex("Bergen")
    plain = SQUAD.prompt("plain").render(tok, fixture()[0], False, shots)
    assert plain.count("Answer: Bergen\n\n") == 2 and plain.endswith("Answer:")
    cls = SST2.prompt(PLAIN_SPEC)
    demo = [TextExample("so great", 1, 2), TextExample("so awful", 0, 3)]
    out = cls.render(None, "a film", None, demo)
    words = [w[0] for w in cls.verbalizers.values()]
    assert out == cls.render(None, "so great") + words[1] + "\n\n" + cls.render(None, "so awful") + words[
        0
    ] + "\n\n" + cls.render(None, "a film")


def test_k_shot_classification_run_records_its_shots(tiny_model_dir, tmp_path):
    dev, pool = sst2_examples(8, seed=1), sst2_examples(30, seed=2)
    zs = runs.zeroshot(SST2, tiny_model_dir, dev, "d", tmp_path / "zs", zeroshot_options(prompt=PLAIN_SPEC))
    k = runs.zeroshot(
        SST2,
        tiny_model_dir,
        dev,
        "d",
        tmp_path / "k",
        zeroshot_options(prompt=PLAIN_SPEC, shots=3),
        shot_pool=pool,
    )
    assert zs["shots"] == 0 and "shot_examples" not in zs
    assert "SST-2 zero-shot: accuracy" in SST2.summary_line(zs)
    assert "SST-2 3-shot: accuracy" in SST2.summary_line(k)  # never called zero-shot
    assert k["shots"] == 3 and k["shot_seed"] == 1234 and len(k["shot_examples"]) == 3
    lines = {ex.line for ex in SST2.draw_shots(pool, 3, 1234, dev)}
    assert {s["line"] for s in k["shot_examples"]} == lines
    scores = [
        json.loads(x)["scores"] for x in (tmp_path / "k" / "predictions.jsonl").read_text().splitlines()
    ]
    scores0 = [
        json.loads(x)["scores"] for x in (tmp_path / "zs" / "predictions.jsonl").read_text().splitlines()
    ]
    assert scores != scores0  # the prompts really changed
    with pytest.raises(UsageError, match="needs the task's training split"):
        runs.zeroshot(
            SST2, tiny_model_dir, dev, "d", tmp_path / "x", zeroshot_options(prompt=PLAIN_SPEC, shots=3)
        )


@pytest.mark.parametrize("decoding", ["free", "extractive"])
def test_k_shot_qa_run_records_its_shots(base, tmp_path, decoding):  # noqa: F811
    dev = fixture()
    options = zeroshot_options(SQUAD, shots=2, batch_size=6, max_new_tokens=4, decoding=decoding)
    m = runs.zeroshot(SQUAD, base, dev, "fixture", tmp_path / "k", options, shot_pool=qa_pool() + dev)
    assert m["shots"] == 2 and m["decoding"] == decoding
    lo, hi = m["f1_ci95"]
    assert " 2-shot: EM " in SQUAD.summary_line(
        m
    ) and f"(95% CI {lo:.1f}-{hi:.1f}), n=" in SQUAD.summary_line(m)
    ids = {s["id"] for s in m["shot_examples"]}
    assert len(ids) == 2 and ids <= {ex.id for ex in qa_pool()}  # never an evaluated question
    preds = json.loads((tmp_path / "k" / "predictions.json").read_text())
    assert set(preds) == {ex.id for ex in dev}


@pytest.mark.parametrize("decoding,version_2", [("free", False), ("extractive", False), ("free", True)])
def test_answers_from_the_shared_prefix_cache_equal_whole_prompts(
    tiny_model_dir, monkeypatch, decoding, version_2
):
    """The shots (and the chat template's system turn) every prompt starts with run once; each batch then
    generates from a copy of their cache, past its rows' padding, as if each prompt had run whole."""
    from helpers import qa_examples

    from tunelab.models import load_causal_lm, load_tokenizer
    from tunelab.tasks.extractive_qa import generation

    tok, model = load_tokenizer(tiny_model_dir, padding_side="left"), load_causal_lm(tiny_model_dir).eval()
    model.config.max_position_embeddings = 1024  # (RoPE) two shots and a passage pass the tiny model's 512
    examples = qa_examples(7)  # three passage lengths: batches pad between the prefix and each prompt's rest
    prefixes = []
    real = generation.prefix_cache
    monkeypatch.setattr(
        generation,
        "prefix_cache",
        lambda dec, ids, rows: prefixes.append(ids.shape[1]) or real(dec, ids, rows),
    )
    prompt = SQUAD.prompt("chat")

    def answers(reuse):
        return generation.generate_answers(
            model,
            tok,
            examples,
            prompt,
            version_2=version_2,
            batch_size=3,
            max_new_tokens=5,
            progress=False,
            decoding=decoding,
            shots=qa_pool(2),
            reuse_prefix=reuse,
        )

    whole, cached = answers(False), answers(True)
    assert prefixes and prefixes[0] >= generation.MIN_GENERATION_PREFIX  # the solved questions are cached
    assert cached[0] == whole[0] and cached[1] == whole[1]
    if version_2:
        np.testing.assert_allclose(list(cached[2].values()), list(whole[2].values()), atol=1e-5)
    prefixes.clear()  # zero-shot: the shared chat-template turn is too short to pay for its copies
    generation.generate_answers(model, tok, examples[:2], prompt, max_new_tokens=2, progress=False)
    assert not prefixes


def test_k_shot_prompts_longer_than_the_model_reads_are_refused_not_cut(tiny_model_dir, tmp_path):
    # the tiny model reads 512 tokens: 64 shots make longer prompts, which used to lose their start silently
    dev, pool = sst2_examples(4, seed=1), sst2_examples(100, seed=2)
    options = zeroshot_options(prompt=PLAIN_SPEC, shots=64)
    with pytest.raises(UsageError, match=r"longer than the 512 tokens this model reads .*use fewer shots"):
        runs.zeroshot(SST2, tiny_model_dir, dev, "d", tmp_path / "k", options, shot_pool=pool)


def test_a_k_shot_prompt_is_scored_whole_up_to_the_models_context(tiny_model_dir):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models import load_tokenizer
    from tunelab.tasks.classification import Calibration, verbalizer_ids, zero_shot

    tok = load_tokenizer(tiny_model_dir)
    cfg = LlamaConfig.from_pretrained(tiny_model_dir)
    cfg.max_position_embeddings = 2048  # reads more than the 512 tokens label_logprobs used to keep
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    prompt = SST2.prompt(PLAIN_SPEC)
    shots = sst2_examples(64, seed=2)
    texts = [prompt.render(tok, ex.text, None, shots) for ex in sst2_examples(3, seed=1)]
    assert all(512 < len(tok(t).input_ids) <= 2048 for t in texts)
    ids = verbalizer_ids(tok, prompt)
    read: list = []  # the rows of token ids the model embeds
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: read.extend(args[0].tolist()))
    norm, _ = zero_shot(model, tok, texts, prompt, Calibration("none"), batch_size=2, progress=False)
    start = tok(texts[0]).input_ids[:16]  # the shots' start, which a cut to the last 512 tokens lost
    assert any(row[:16] == start for row in read)
    for i, t in enumerate(texts):
        with torch.no_grad():
            logp = torch.log_softmax(model(**tok(t, return_tensors="pt")).logits[0, -1].double(), -1)
        raw = torch.stack([torch.logsumexp(logp[c], 0) for c in ids])
        np.testing.assert_allclose(norm[i], (raw - torch.logsumexp(raw, 0)).numpy(), rtol=0, atol=1e-5)


def test_a_zero_shot_prompt_longer_than_the_model_reads_keeps_its_end(tiny_model_dir, capsys):
    """Without shots an over-long prompt keeps its last tokens (the label word is scored at its end), as
    fine-tuning's inputs do, with a warning; the same prompts with shots are refused (above)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models import load_tokenizer
    from tunelab.tasks.classification import Calibration, zero_shot

    tok = load_tokenizer(tiny_model_dir)
    cfg = LlamaConfig.from_pretrained(tiny_model_dir)
    cfg.max_position_embeddings = 24
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    prompt = SST2.prompt(PLAIN_SPEC)
    texts = [
        prompt.render(tok, "a long and winding review " * 6, None, ()),
        prompt.render(tok, "ok", None, ()),
    ]
    read: list = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: read.extend(args[0].tolist()))
    zero_shot(model, tok, texts, prompt, Calibration("none"), batch_size=2, progress=False)
    assert "1 of 2 prompts are longer than the 24 tokens this model reads" in capsys.readouterr().err
    assert tok(texts[0]).input_ids[-24:] in [row[:24] for row in read]
    with pytest.raises(UsageError, match="use fewer shots"):
        zero_shot(model, tok, texts, prompt, Calibration("none"), batch_size=2, progress=False, shots=1)


def test_qa_prompts_longer_than_the_model_reads(tiny_model_dir, capsys):
    """Generation never cuts a prompt: past the model's context a k-shot prompt is refused (use fewer shots)
    and a zero-shot one is answered with a warning."""
    from helpers import qa_examples

    from tunelab.models import load_causal_lm, load_tokenizer
    from tunelab.tasks.extractive_qa import generation

    tok, model = load_tokenizer(tiny_model_dir, padding_side="left"), load_causal_lm(tiny_model_dir).eval()
    model.config.max_position_embeddings = 64
    examples, prompt = qa_examples(2), SQUAD.prompt("plain")
    with pytest.raises(UsageError, match=r"longer than the 64 tokens this model reads .*use fewer shots"):
        generation.generate_answers(
            model, tok, examples, prompt, max_new_tokens=2, progress=False, shots=qa_pool(2)
        )
    _, answers, _ = generation.generate_answers(
        model, tok, examples, prompt, max_new_tokens=2, progress=False
    )
    assert (
        len(answers) == 2
        and "2 of 2 prompts, with their answer, are longer than the 64" in capsys.readouterr().err
    )
