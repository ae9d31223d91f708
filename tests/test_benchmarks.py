"""benchmarks/speed.py (tunelab vs the Hugging Face Trainer baseline) runs end to end in --tiny mode on a CPU
and writes the JSON the GPU run will: every case with case, baseline_s, tunelab_s, ratio and positive
times."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("TUNELAB_DATA_DIR")


def long_context(tiny_model_dir: str, tmp_path: Path) -> Path:
    """The tiny model with a context that holds k-shot SQuAD prompts (RoPE: only its config says 512; a
    longer k-shot prompt is refused)."""
    model = tmp_path / "long-context-model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    return model


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_speed_bench_tiny_writes_the_report(tmp_path):
    env = dict(
        os.environ,
        TUNELAB_DATA_DIR=DATA,
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
        # the SmolLM2 tokenizer: the shared user cache (conftest points TUNELAB_CACHE at an empty
        # folder)
        TUNELAB_CACHE=os.environ.get("TUNELAB_REAL_CACHE", str(Path.home() / ".cache" / "tunelab")),
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out_dir = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "speed.py"),
            "--tiny",
            "--cases",
            "sst2-smollm2,squad-smollm2",
            "--variants",
            "default,packing",
            "--out",
            str(out_dir) + "/",
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out_dir.glob("speed-*-tiny.json"))
    assert len(files) == 1, (files, proc.stdout[-2000:])
    report = json.loads(files[0].read_text())

    for key in ("machine", "date", "command", "settings", "tokenizer", "mfu_definition", "quality", "cases"):
        assert key in report, key
    assert {"gpu", "torch", "transformers", "host"} <= set(report["machine"])
    assert report["settings"]["steps_timed"] == 3 and report["settings"]["tiny"] is True
    cuda = report["machine"]["gpu"] is not None
    assert [c["case"] for c in report["cases"]] == ["sst2-smollm2", "squad-smollm2"]
    for case in report["cases"]:
        assert case["status"] == "ok", case
        for key in (
            "case",
            "model",
            "task",
            "gpu",
            "baseline_s",
            "tunelab_s",
            "ratio",
            "real_tokens_per_s",
            "padded_tokens_per_s",
            "mfu",
            "peak_memory_gib",
            "steps_timed",
            "batch_size",
            "epoch_examples",
            "extrapolation_factor",
        ):
            assert key in case, (case["case"], key)
        assert case["baseline_s"] > 0 and case["tunelab_s"] > 0
        assert case["ratio"] == pytest.approx(case["baseline_s"] / case["tunelab_s"])
        assert case["gpu"] == report["machine"]["gpu"] or (not cuda and case["gpu"] == "cpu")
        assert case["steps_timed"] == 3 and case["epoch_examples"] == 64
        for who in ("baseline", "tunelab"):
            run = case[who]
            assert run["timed_s"] > 0 and run["timed_examples"] == 3 * case["batch_size"][who]
            assert 0 < run["padded_tokens"] and 0 < run["real_tokens"]
            # a shared prefix computed once per batch can make fewer computed than real tokens
            assert run["real_tokens"] <= run["padded_tokens"] or run.get("shared_prefix")
            assert case["real_tokens_per_s"][who] > 0
            assert case["extrapolation_factor"][who] == pytest.approx(64 / run["timed_examples"])
            assert (case["mfu"][who] is None) == (not cuda)
            assert (case["peak_memory_gib"][who] is None) == (not cuda)
        # the baseline pads to max_length (run_glue/run_qa); tunelab pads each batch to its longest
        width = report["settings"]["baseline"][case["task"]]["max_length"]
        assert case["baseline"]["padded_tokens"] == case["baseline"]["timed_examples"] * width
        assert case["tunelab"]["padded_tokens"] <= case["baseline"]["padded_tokens"]
        # one tunelab row per (inputs, variant), each against the same baseline, labelled which is which
        inputs = ["bare", "prompt"] if case["task"] == "sst2" else ["windows"]
        rows = case["tunelab_rows"]
        assert [(r["inputs"], r["variant"]) for r in rows] == [
            (i, v) for i in inputs for v in ("default", "packing")
        ]
        assert case["headline_row"] == rows[0]["label"] == f"tunelab default, {inputs[0]}"
        for row in rows:
            assert row["status"] == "ok", row
            assert row["ratio"] == pytest.approx(case["baseline_s"] / row["epoch_s"])
            assert 0 < row["real_tokens"] and 0 < row["padded_tokens"] and row["inputs_note"]
            assert row["real_tokens"] <= row["padded_tokens"] or row["shared_prefix"]
            assert row["settings"]["speed_options"]["packing"] == (row["variant"] == "packing")
        by = {(r["inputs"], r["variant"]): r for r in rows}
        for i in inputs:  # the same examples, however they are batched
            assert by[(i, "packing")]["real_tokens"] == by[(i, "default")]["real_tokens"]
        if case["task"] == "sst2":  # the same sentences: in the prompt they are longer
            assert by[("prompt", "default")]["real_tokens"] > by[("bare", "default")]["real_tokens"]
            if not cuda:  # share_prefix auto, on a CPU: the prompt's shared start computed once per batch
                prompt = by[("prompt", "default")]
                assert prompt["shared_prefix"] and prompt["padded_tokens"] < prompt["real_tokens"]


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_squad_windows_bench_tiny_writes_the_report(tmp_path):
    """benchmarks/squad_windows.py on the first 200 training questions: the three stages timed, the cached
    windows as many as the cold ones, the machine named."""
    env = dict(
        os.environ,
        TUNELAB_DATA_DIR=DATA,
        TOKENIZERS_PARALLELISM="false",
        TUNELAB_CACHE=os.environ.get("TUNELAB_REAL_CACHE", str(Path.home() / ".cache" / "tunelab")),
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "w.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "squad_windows.py"), "--limit", "200", "--repeats", "2"]
        + ["--out", str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["questions"] == 200 and report["windows"] >= 200 and report["limit"] == 200
    assert {"cpu", "cores", "host", "transformers", "tokenizers"} <= set(report["machine"])
    assert set(report["seconds_median"]) == {"read", "windows_cold", "windows_cached"}
    for stage, runs in report["seconds_runs"].items():
        assert len(runs) == 2 and all(t > 0 for t in runs), stage
    assert report["tokenizer"] == "smollm2-135m" and report["max_length"] == 384


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_eval_batching_bench_tiny_writes_the_report(tiny_model_dir, tmp_path):
    """benchmarks/eval_batching.py with the tiny model on a few real SST-2 and SQuAD dev examples: every path
    and setting timed, auto and the static cache giving the fixed size's predictions."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "eb.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "eval_batching.py"), "--model", tiny_model_dir]
    cmd += ["--sst2-n", "12", "--squad-n", "4", "--spans-n", "4", "--settings", "4,auto:256,auto"]
    cmd += ["--kv-caches", "dynamic,static", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["machine"]["device"] in ("cpu", "cuda") and report["model"] == tiny_model_dir
    assert set(report["paths"]) == {
        "zero-shot sst2",
        "zero-shot squad (dynamic kv cache)",
        "zero-shot squad (static kv cache)",
        "span head (untrained), timing",
    }
    for name, path in report["paths"].items():
        assert [r["setting"] for r in path["rows"]] == ["4", "auto:256", "auto"], name
        for row in path["rows"]:
            assert row["seconds"] > 0 and row["differ_from_first"] == 0, (name, row)
    assert (
        report["paths"]["zero-shot sst2"]["n"] == 12
        and "accuracy" in report["paths"]["zero-shot sst2"]["rows"][0]
    )


# One experiment of each kind: between them every option the others use (decoding, shots, method,
# bidirectional, squad_v2 with v1.1 train added); the rest differ from these only in values.
SQUAD_EXPERIMENTS_RUN = ["zs-extractive", "zs-3shot-free", "full-lr3e-5-2ep-bidir", "lora-lr3e-4-2ep"]
SQUAD_EXPERIMENTS_RUN += ["v2-plus-v11-train"]


@pytest.mark.slow  # five tunelab runs: about a minute on 2 cores
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_squad_experiments_tiny_runs_each_kind_of_experiment(tiny_model_dir, tmp_path):
    """benchmarks/squad_experiments.py --tiny: an experiment is a tunelab run on the real SQuAD files with the
    tiny model; summary.json holds each one's command, status and metrics; a rerun skips them. Every
    experiment's command is one that tunelab's command line accepts."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from squad_experiments import EXPERIMENTS, command

    from tunelab.cli import build_parser

    for name in EXPERIMENTS:
        args = build_parser().parse_args(command(name, tiny_model_dir, tmp_path / name, True, None))
        assert args.task == EXPERIMENTS[name][1], name
    assert {EXPERIMENTS[n][1] for n in SQUAD_EXPERIMENTS_RUN} == {"squad", "squad_v2"}

    model = long_context(tiny_model_dir, tmp_path)
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "squad_experiments.py"), "--tiny", "--model"]
    cmd += [str(model), "--out", str(tmp_path / "x"), "--only", ",".join(SQUAD_EXPERIMENTS_RUN)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert list(summary["experiments"]) == SQUAD_EXPERIMENTS_RUN and summary["tiny"] is True
    for name, entry in summary["experiments"].items():
        assert entry["status"] == "ok", (name, entry)
        assert 0 <= entry["metrics"]["f1"] <= 100 and entry["command"].startswith("tunelab ")
    e = summary["experiments"]
    assert e["zs-extractive"]["decoding"] == "extractive" and e["zs-3shot-free"]["shots"] == 3
    assert e["zs-3shot-free"]["decoding"] == "free"
    assert e["full-lr3e-5-2ep-bidir"]["bidirectional"] is True and e["lora-lr3e-4-2ep"]["method"] == "lora"
    v2 = e["v2-plus-v11-train"]
    assert "v1.1-train.json" in v2["train_data"] and "best_f1" in v2["metrics"]
    again = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert again.stdout.count("done before, skipped") == len(SQUAD_EXPERIMENTS_RUN)


CHAT_SST2 = {  # SST-2's default template written out: it must score exactly as its name does
    "text": "Is the sentiment of this movie review positive or negative? Answer with one word.\n\n"
    "Review: {sentence}",
    "chat": True,
    "answer_prefix": "The sentiment of this review is",
}


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_zeroshot_prompts_bench_chooses_on_train_and_checks_on_dev(tiny_model_dir, tmp_path):
    """benchmarks/zeroshot_prompts.py with the tiny model: every candidate is scored on the training sample,
    a candidate that only ties the default (the same prompt written out) never replaces it, and the choice is
    scored beside the default on dev. A `default` that is not the task's default is refused."""
    import yaml

    candidates = tmp_path / "candidates.yaml"
    candidates.write_text(
        yaml.safe_dump(
            {
                "sst2": {"default": "chat-sentiment-is", "same": CHAT_SST2, "plain": "plain"},
                "squad": {"default": "chat", "plain": "plain"},
            },
            sort_keys=False,
        )
    )
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "zp.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "zeroshot_prompts.py"), "--model", tiny_model_dir]
    cmd += ["--candidates", str(candidates), "--select", "12", "--dev-limit", "6", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["trial"] and report["machine"]["device"] in ("cpu", "cuda")
    sst2, squad = report["tasks"]["sst2"], report["tasks"]["squad"]
    assert list(sst2["selection"]) == ["default", "same", "plain"] and list(squad["selection"]) == [
        "default",
        "plain",
    ]
    assert sst2["selection"]["same"]["score"] == sst2["selection"]["default"]["score"]
    assert "12 sentences" in sst2["selection_sample"] and "every 500th" in squad["selection_sample"]
    for task in (sst2, squad):
        scores = {k: v["score"] for k, v in task["selection"].items()}
        assert all(0 <= s <= 100 for s in scores.values())
        best = max(scores.values())
        assert task["chosen"] == "default" if scores["default"] == best else scores[task["chosen"]] == best
        assert set(task["dev"]) == {"default", task["chosen"]}
        assert ("dev_chosen_minus_default" in task) == (task["chosen"] != "default")

    candidates.write_text(yaml.safe_dump({"sst2": {"default": "chat"}}))
    cmd[-1] = str(tmp_path / "refused.json")
    proc = subprocess.run(
        cmd + ["--tasks", "sst2"], check=False, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2
    assert "sst2.default must be the task's default prompt 'chat-sentiment-is'" in proc.stderr
    assert not (tmp_path / "refused.json").exists()


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_zeroshot_detokenize_bench_chooses_on_train_and_checks_on_dev(tiny_model_dir, tmp_path):
    """benchmarks/zeroshot_detokenize.py with the tiny model: SST-2 and TREC each scored with inputs as read
    and detokenized through the task's own zero-shot path, on the training sample and then on dev, with
    paired tests; `chosen` is `on` only when it is strictly better on the training sample."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "zd.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "zeroshot_detokenize.py"), "--model", tiny_model_dir]
    cmd += ["--select", "12", "--dev-limit", "8", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["trial"] and list(report["tasks"]) == ["sst2", "trec"]
    sst2, trec = report["tasks"]["sst2"], report["tasks"]["trec"]
    assert sst2["task_default"] is True and trec["task_default"] is False
    assert "12 of the training split (>= 10 words" in sst2["selection_sample"]
    assert sst2["example"][0]["detokenized"][0].isupper() and " 's" not in sst2["example"][0]["detokenized"]
    for task in (sst2, trec):
        sel = {k: v["accuracy"] for k, v in task["selection"].items()}
        assert set(sel) == set(task["dev"]) == {"off", "on"}
        assert task["chosen"] == ("on" if sel["on"] > sel["off"] else "off")
        assert task["dev_on_minus_off"]["difference"] == pytest.approx(
            task["dev"]["on"]["accuracy"] - task["dev"]["off"]["accuracy"]
        )
        assert 100 * task["dev_mcnemar"]["difference"] == pytest.approx(
            task["dev_on_minus_off"]["difference"]
        )


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_cpu_bf16_bench_compares_the_two_precisions(tiny_model_dir, tmp_path):
    """benchmarks/cpu_bf16.py --tiny: each case's command runs in float32 and in bfloat16; the report pairs
    the two runs' timings, scores and per-example predictions."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "bf16.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_bf16.py"), "--tiny", "--model", tiny_model_dir]
    cmd += ["--cases", "sst2-zeroshot,squad-finetune", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["trial"] and report["machine"]["device"] == "cpu"
    zs, ft = report["cases"]["sst2-zeroshot"], report["cases"]["squad-finetune"]
    assert [(r["dtype"], "train_dtype" in r) for r in zs["runs"].values()] == [
        ("float32", False),
        ("bfloat16", False),
    ]
    assert {k: (r["train_dtype"], r["dtype"]) for k, r in ft["runs"].items() if "train_dtype" in r} == {
        "float32": ("float32", "float32"),
        "bfloat16": ("bfloat16", "bfloat16"),
    }
    # each fine-tuned model evaluated again in the other precision (tunelab evaluate: no training)
    assert ft["runs"]["float32-trained, bfloat16 evaluation"]["dtype"] == "bfloat16"
    assert ft["runs"]["bfloat16-trained, float32 evaluation"]["dtype"] == "float32"
    assert list(ft["comparisons"]) == [
        "bfloat16 vs float32",
        "evaluation only: float32-trained model, bfloat16 vs float32 evaluation",
        "training only: bfloat16- vs float32-trained model, both evaluated in float32",
    ]
    zs_c = zs["comparisons"]["bfloat16 vs float32"]
    assert zs_c["n"] == 16 and 0 <= zs_c["predictions_changed"] <= 16 and "p_value" in zs_c["mcnemar"]
    assert all(c["n"] == 4 and "ci95" in c["f1_difference"] for c in ft["comparisons"].values())
    assert set(ft["speedup"]) == {"wall_seconds", "train_seconds", "eval_seconds"}
    assert all(v > 0 for case in (zs, ft) for v in case["speedup"].values())
    assert "accuracy" in zs["runs"]["bfloat16"]["scores"] and "f1" in ft["runs"]["float32"]["scores"]
    pool = [sys.executable, str(ROOT / "benchmarks" / "cpu_bf16.py"), "--pool", f"{out},{out}"]
    proc = subprocess.run(
        [*pool, "--out", str(tmp_path / "pooled.json")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pooled = json.loads((tmp_path / "pooled.json").read_text())["cases"]["sst2-zeroshot"]
    m = zs_c["mcnemar"]
    assert pooled["runs"] == 2 and pooled["float32_only_correct"] == 2 * m["only_a_correct"]
    assert pooled["bfloat16_only_correct"] == 2 * m["only_b_correct"] and 0 <= pooled["mcnemar_p"] <= 1


@pytest.mark.slow  # nine tunelab commands: about a minute on 2 cores
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_kshot_bench_compares_each_k_with_zero_shot(tiny_model_dir, tmp_path):
    """benchmarks/kshot.py --tiny: `tunelab zeroshot --shots K` per task, K and seed, each K > 0 paired with
    zero-shot on the same examples; then 3-shot answers with and without the shared-prefix cache."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "kshot.json"
    model = str(long_context(tiny_model_dir, tmp_path))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kshot.py"), "--tiny", "--model", model]
    cmd += ["--sst2-shots", "0,2", "--squad-shots", "0,1", "--seeds", "0,1", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["trial"] and report["machine"]["device"] == "cpu" and report["squad"]["questions"] == 6
    for task, key in (("sst2", "accuracy"), ("squad", "f1")):
        runs = report[task]["runs"]
        assert [(r["shots"], r["shot_seed"]) for r in runs] == [
            (0, None),
            (2 if task == "sst2" else 1, 0),
            (2 if task == "sst2" else 1, 1),
        ]
        assert all(0 <= r[key] <= 100 and r["seconds"] > 0 for r in runs)
        assert "against_zero_shot" not in runs[0] and all("against_zero_shot" in r for r in runs[1:])
    sst2 = report["sst2"]["runs"][1]["against_zero_shot"]
    assert sst2["zero_shot_only_correct"] + sst2["k_shot_only_correct"] <= 6 and 0 <= sst2["mcnemar_p"] <= 1
    assert "ci95" in report["squad"]["runs"][1]["against_zero_shot"]["k_shot_minus_zero_shot_f1"]
    assert all(r["decoding"] == "grounded" for r in report["squad"]["runs"])  # the task's default
    cache = report["prefix_cache"]
    assert cache["questions"] == 4 and cache["shots"] == 3 and 0 <= cache["answers_changed"] <= 4
    assert cache["ratio"] > 0 and {"seconds", "f1"} <= set(cache["prefix_cache"])


@pytest.mark.slow  # three decodings of six questions with the tiny model: seconds
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_squad_decoding_bench_answers_each_way(tiny_model_dir, tmp_path):
    """benchmarks/squad_zeroshot_decoding.py: free, extractive and grounded answers of the same questions
    (every 20th from --offset), each scored, compared pairwise and timed. The tiny random model closes the
    quote at once when free, so every grounded answer comes from its extractive pass, which answers those
    questions in the same batch as extractive does: the same answers."""
    from tunelab.data.squad import read_squad

    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "decoding.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "squad_zeroshot_decoding.py"), "--model", tiny_model_dir]
    cmd += ["--offset", "1", "--limit", "6", "--max-new-tokens", "4", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    expected = [ex.id for ex in read_squad(str(Path(DATA) / "squad" / "v1.1-dev.json"))[1::20][:6]]
    assert [q["id"] for q in report["questions"]] == expected and report["n"] == 6
    for mode in ("free", "extractive", "grounded"):
        assert 0 <= report[mode]["f1"] <= 100 and report[mode]["seconds"] > 0, mode
    # (the token limit may cut a character's bytes, so in_passage need not be 1 at 4 tokens)
    assert report["extractive"]["in_passage"] == report["grounded"]["in_passage"] > 0
    assert all(q["free"] == "" for q in report["questions"])
    assert report["grounded_extractive_answers"] == 6
    assert all(q["grounded"] == q["extractive"] for q in report["questions"])
    assert {"difference", "ci95", "p_value"} <= set(report["grounded_minus_free_f1"])

    cmd[cmd.index("--out") + 1] = str(tmp_path / "v2.json")
    cmd += ["--version", "2.0", "--modes", "grounded,free"]  # run (and compared) in their fixed order
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v2 = json.loads((tmp_path / "v2.json").read_text())
    assert v2["version"] == "2.0" and v2["data"].endswith("v2.0-dev.json") and v2["n"] == 6
    assert all({"exact_match", "f1", "HasAns_f1"} <= set(v2[m]) for m in ("free", "grounded"))
    assert "extractive" not in v2 and "grounded_minus_free_f1" in v2
    # v2: an empty free answer is the no-answer, so grounded keeps it and answers nothing again
    assert v2["grounded_extractive_answers"] == 0 and v2["answers_changed"] == {"grounded": 0}


@pytest.mark.slow  # zero-shot answers of a few questions with the tiny model, four times: seconds
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_squad_focus_bench_chooses_on_train_and_checks_on_dev(tiny_model_dir, tmp_path):
    """benchmarks/squad_zeroshot_focus.py: each K on the training sample, the chosen one beside K = 0 on
    the dev sample (paired); `--whole-dev K`: every dev question with focus K only."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "focus.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "squad_zeroshot_focus.py"), "--model", tiny_model_dir]
    base = [*cmd, "--dev-limit", "4", "--out", str(out)]
    proc = subprocess.run([*base, "--select", "4", "--ks", "2"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["trial"] and set(report["selection"]) == {"0", "2"}
    chosen = report["chosen"]
    assert chosen in (0, 2) and set(report["dev"]) == {"0", str(chosen)}
    assert report["selection"][str(chosen)]["f1"] == max(r["f1"] for r in report["selection"].values())
    assert ("dev_chosen_minus_whole_f1" in report) == (chosen == 2)
    assert report["dev_sample"].endswith("every 20th") and report["decoding"] == "grounded"

    proc = subprocess.run([*base, "--whole-dev", "2"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    whole = json.loads(out.read_text())
    assert "selection" not in whole and set(whole["dev"]) == {"2"} and whole["dev_sample"].startswith("4 ")
    assert whole["dev_sample"].endswith("(every one)") and 0 <= whole["dev"]["2"]["f1"] <= 100

    # SQuAD v2.0: its own files and samples, scored as v2.0
    proc = subprocess.run(
        [*base, "--task", "squad_v2", "--select", "3", "--ks", "2"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v2 = json.loads(out.read_text())
    assert (
        v2["task"] == "squad_v2"
        and v2["complete"]
        and "v2.0-train.json: every 50th" in v2["selection_sample"]
    )
    assert v2["dev_sample"].endswith("v2.0-dev.json: every 10th")


@pytest.mark.slow  # zero-shot answers of a few questions with the tiny model, three configurations: seconds
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_squad_question_words_bench_chooses_on_train_and_checks_on_dev(tiny_model_dir, tmp_path):
    """benchmarks/squad_zeroshot_question_words.py: the answer-in-focus rates of both weightings (no model),
    the three configurations on the training sample, then on the dev sample, each paired with count-keep;
    `--whole-dev`: today's defaults only; squad_v2 (focus 0): keep and avoid only."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "words.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "squad_zeroshot_question_words.py")]
    base = [*cmd, "--model", tiny_model_dir, "--dev-limit", "4", "--out", str(out)]
    proc = subprocess.run([*base, "--select", "4"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    configs = ["count-keep", "idf-keep", "idf-avoid"]
    assert report["complete"] and report["trial"] and list(report["selection"]) == configs
    assert report["chosen"] in configs and list(report["dev"]) == configs
    assert report["selection"][report["chosen"]]["f1"] == max(r["f1"] for r in report["selection"].values())
    assert set(report["dev_minus_count_keep"]) == {"idf-keep", "idf-avoid"}
    rates = report["answer_in_focus"]
    assert set(rates) == {"sample", "count", "idf"} and "every 50th" in rates["sample"]
    for weigh in ("count", "idf"):  # more sentences keep the answer more often
        assert 0 < rates[weigh]["1"] <= rates[weigh]["2"] <= rates[weigh]["3"] <= 100
    assert report["dev"]["idf-avoid"]["echo_answers"] <= report["dev"]["idf-keep"]["echo_answers"]

    proc = subprocess.run([*base, "--whole-dev"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    whole = json.loads(out.read_text())
    assert "selection" not in whole and list(whole["dev"]) == ["idf-avoid"]
    assert whole["dev_sample"].startswith("4 ") and whole["dev_sample"].endswith("(every one)")

    proc = subprocess.run(
        [*base, "--task", "squad_v2", "--select", "3"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v2 = json.loads(out.read_text())
    assert v2["task"] == "squad_v2" and v2["focus"] == 0 and list(v2["dev"]) == ["count-keep", "idf-avoid"]
    assert "answer_in_focus" not in v2


FAKE_HARNESS = """
import json, pathlib, sys
args = sys.argv[1:]
opt = {k: v for k, v in zip(args, args[1:]) if k.startswith("--")}
task = pathlib.Path(opt["--include_path"]) / "sst2_local.yaml"
assert "dataset_path: csv" in task.read_text(), task
out = pathlib.Path(opt["--output_path"]) / "model"
out.mkdir(parents=True)
n = int(opt["--limit"])
doc = {"results": {"sst2_local": {"acc,none": 0.5}}, "n-samples": {"sst2_local": {"effective": n}}}
size = opt["--batch_size"]
doc["config"] = {"batch_size": size, "batch_sizes": [64 if size == "auto" else int(size)]}
(out / "results_1.json").write_text(json.dumps(doc))
with open(pathlib.Path(__file__).parent.parent / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
"""


@pytest.mark.slow  # the real SmolLM2 scores 4 sentences five times
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_harness_bench_runs_the_harness_as_an_importable_module(tmp_path):
    """benchmarks/harness_sst2.py runs lm-eval as `python -m lm_eval` (on the GPU machine it is installed with
    `pip install --target`, which writes no script beside the interpreter) and reports both tools' runs.
    The harness here is a stand-in module that records its arguments and writes a results file."""
    fake = tmp_path / "site" / "lm_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(FAKE_HARNESS)
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["TUNELAB_CACHE"] = os.environ.get("TUNELAB_REAL_CACHE", str(Path.home() / ".cache" / "tunelab"))
    paths = [str(ROOT / "src"), str(tmp_path / "site"), os.environ.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    out = tmp_path / "harness.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "harness_sst2.py"), "--dtypes", "float32"]
    cmd += ["--limit", "4", "--repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = [json.loads(line) for line in (tmp_path / "site" / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 1 and calls[0][:2] == ["--model", "hf"]
    assert "dtype=float32" in calls[0][3] and calls[0][calls[0].index("--limit") + 1] == "4"
    row = json.loads(out.read_text())["by_dtype"]["float32"]
    assert row["n"] == 4 and row["harness_n"] == 4 and row["tunelab_dtype"] == "float32"
    assert row["accuracy"]["harness"] == 0.5 and 0 <= row["accuracy"]["tunelab"] <= 1
    assert len(row["wall_seconds"]["harness"]) == len(row["wall_seconds"]["tunelab"]) == 1
    assert row["ratio_of_medians"] > 0 and row["compute"]["ratio_bound"] > 1

    # --batch-sizes: each size in turn (auto: each tool's own), then each tool's fastest against the other's
    refused = subprocess.run(
        [*cmd, "--batch-sizes", "16,016"], check=False, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "names a batch size twice" in refused.stderr
    cmd[cmd.index("--out") + 1] = str(tmp_path / "batches.json")
    proc = subprocess.run(
        [*cmd, "--batch-sizes", "2,auto"], check=False, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = [json.loads(line) for line in (tmp_path / "site" / "calls.jsonl").read_text().splitlines()]
    assert [c[c.index("--batch_size") + 1] for c in calls[1:]] == ["2", "auto"]
    rows = json.loads((tmp_path / "batches.json").read_text())["by_dtype"]["float32"]
    assert list(rows["by_batch"]) == ["2", "auto"]
    assert [r["harness_batch_sizes"] for r in rows["by_batch"].values()] == [[2], [64]]  # what auto chose
    fastest = rows["fastest"]
    for tool in ("harness", "tunelab"):
        walls = {b: r["wall_seconds"][tool][0] for b, r in rows["by_batch"].items()}
        assert fastest[tool]["batch_size"] == min(walls, key=walls.get)
        assert fastest[tool]["median_seconds"] == min(walls.values())
    assert fastest["ratio"] == pytest.approx(
        fastest["harness"]["median_seconds"] / fastest["tunelab"]["median_seconds"]
    )


def test_on_device_packs_what_the_command_wrote_so_that_it_comes_back(tmp_path):
    """benchmarks/on_device.sh: the lent GPU machine returns at most 8 files from $OUT, two folders down: the
    command works in WORK (with OUT=WORK), and its small files (no weights or checkpoints) come back packed in
    $OUT/results.tgz with its output in $OUT/run.log; its exit status is the command's."""
    import tarfile

    out, work = tmp_path / "out", tmp_path / "work"
    name = '"$OUT/sq/name'
    script = "; ".join(
        [
            f'mkdir -p {name}/eval" {name}/checkpoints/step-2"',
            f'echo "{{}}" > {name}/eval/metrics.json"',
            f'head -c 4096 /dev/zero > {name}/model.safetensors"',
            f'echo 1 > {name}/checkpoints/step-2/x"',
            'echo "working in $OUT"',
            "exit 3",
        ]
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "on_device.sh"), str(work), "bash", "-c", script],
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3 and "Terminated" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["results.tgz", "run.log"]
    assert f"working in {work}" in (out / "run.log").read_text()
    with tarfile.open(out / "results.tgz") as tar:
        names = sorted(n.removeprefix("./") for n in tar.getnames() if tar.getmember(n).isfile())
    assert names == ["run.log", "sq/name/eval/metrics.json"]  # the whole output, and the small results


def test_on_device_stops_at_once_when_a_dependency_was_not_staged(tmp_path):
    """Without nltk (a tunelab dependency the device image lacks) on_device.sh runs nothing and says how to
    stage it, in $OUT/run.log too."""
    out, work, python = tmp_path / "out", tmp_path / "work", tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 1\n")  # an interpreter where no import works
    python.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "on_device.sh"), str(work), "bash", "-c", "touch $OUT/ran"],
        env={**os.environ, "OUT": str(out), "PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3 and not (work / "ran").exists()
    assert (
        "device-stage nltk==3.10.4" in proc.stderr and "nltk does not import" in (out / "run.log").read_text()
    )
    env = {**os.environ, "OUT": str(out), "PYTHON": str(python), "CHECK_NLTK": "0"}  # a command without SST-2
    cmd = ["bash", str(ROOT / "benchmarks" / "on_device.sh"), str(work), "bash", "-c", "touch $OUT/ran"]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=60).returncode == 0
    assert (work / "ran").exists()


def test_squad_experiments_stop_an_experiment_at_the_budget(tmp_path, monkeypatch):
    """An experiment still running when --budget ends is stopped (SIGTERM) and recorded as such; summary.json
    says which experiment runs before it starts, so a call cut short still tells."""
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import squad_experiments

    monkeypatch.setattr(squad_experiments, "CLI", "import time; time.sleep(60)")
    monkeypatch.setattr(squad_experiments, "MIN_LEFT", 0)
    args = argparse.Namespace(
        out=str(tmp_path), model="m", only="zs-free,zs-grounded", budget=1.0, train_limit=None, tiny=True
    )
    assert squad_experiments.run(args) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())["experiments"]
    assert summary["zs-free"]["status"].startswith("timeout: stopped at the budget")
    assert summary["zs-grounded"] == {"status": "skipped: budget"}


@pytest.mark.parametrize("name", ["zeroshot_prompts.yaml", "zeroshot_verbalizers.yaml"])
def test_committed_prompt_candidates_are_valid(name, monkeypatch):
    """Every candidate file the prompt search reads holds valid prompts of each task it names, with the
    task's own default as `default` (a stale one would make a rerun stop at its start)."""
    import yaml

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from zeroshot_prompts import check_candidates

    candidates = yaml.safe_load((ROOT / "benchmarks" / name).read_text())
    assert check_candidates(candidates, list(candidates)) is None


@pytest.mark.slow  # four `tunelab finetune` runs of the tiny model: ~30 s on 2 cores
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_finetune_detokenize_bench_pairs_each_seeds_runs(tiny_model_dir, tmp_path):
    """benchmarks/finetune_detokenize.py with the tiny model: per seed one `tunelab finetune` with inputs as
    read and one detokenized (their tunelab.json say so), both on the same training sample, compared
    sentence by sentence on dev, and all seeds pooled."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "fd.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "finetune_detokenize.py"), "--model", tiny_model_dir]
    cmd += ["--seeds", "1,2", "--train-limit", "16", "--dev-limit", "8", "--out", str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (report["method"], report["learning_rate"], report["batch_size"]) == ("head", 1e-3, 32)
    assert list(report["seeds"]) == ["1", "2"]
    for seed in report["seeds"].values():
        assert {k: r["detokenize"] for k, r in seed["runs"].items()} == {"off": False, "on": True}
        acc = seed["accuracy"]
        assert seed["on_minus_off"]["difference"] == pytest.approx(acc["on"] - acc["off"])
    pooled = report["pooled"]["accuracy"]
    for k in ("off", "on"):
        assert pooled[k] == pytest.approx(np.mean([s["accuracy"][k] for s in report["seeds"].values()]))


@pytest.mark.slow  # zero-shot answers of a few questions with the tiny model, seven prompts: seconds
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_squad_prompts_bench_chooses_on_train_and_checks_on_dev(tiny_model_dir, tmp_path):
    """benchmarks/squad_zeroshot_prompts.py: every prompt on the training sample through the task's own
    zero-shot path, the best (the default unless strictly better) and the default on the dev sample,
    paired when they differ."""
    env = dict(os.environ, TUNELAB_DATA_DIR=DATA, TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "prompts.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "squad_zeroshot_prompts.py"), "--model", tiny_model_dir]
    cmd += ["--select", "4", "--dev-limit", "4", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["trial"] and list(report["selection"])[0] == "default"
    assert set(report["selection"]) == set(report["prompts"]) and len(report["prompts"]) == 7
    best = max(r["f1"] for r in report["selection"].values())
    chosen = report["chosen"]
    assert report["selection"][chosen]["f1"] == best
    assert chosen != "default" or report["selection"]["default"]["f1"] == best
    assert list(report["dev"]) == list(dict.fromkeys(["default", chosen]))
    assert ("dev_chosen_minus_default" in report) is (chosen != "default")
    assert report["options"]["decoding"] == "grounded" and report["selection_sample"].startswith(
        "4 questions"
    )
