"""The study's final table names how the prompted model ran: zero-shot, or K-shot (never called zero-shot)."""

from tunelab.study.summary import markdown_table, print_summary


def _row(task: str, prompting: str) -> dict:
    return {
        "task": task,
        "variant": None,
        "method": "full",
        "metric": "Accuracy",
        "key": "accuracy",
        "zeroshot": 61.5,
        "prompting": prompting,
        "finetuned": 90.25,
        "finetuned_sd": None,
        "seeds": 1,
        "params_base": 134_515_008,
        "params_finetuned": 134_516_160,
    }


def test_the_prompted_column_says_zero_shot_or_k_shot(tmp_path, capsys):
    assert "| task | model | metric | zero-shot | fine-tuned |" in markdown_table([_row("sst2", "zero-shot")])
    table = markdown_table([_row("sst2", "3-shot")])
    assert "| 3-shot | fine-tuned |" in table and "zero-shot" not in table
    mixed = [_row("sst2", "3-shot"), _row("trec", "zero-shot")]
    table = markdown_table(mixed)  # tasks prompted differently: each cell says how
    assert "| prompted | fine-tuned |" in table
    assert "| 61.50 (3-shot) |" in table and "| 61.50 (zero-shot) |" in table
    print_summary([_row("sst2", "3-shot")], tmp_path / "report.html")
    out = capsys.readouterr().out
    assert "3-shot vs fine-tuned" in out and "zero-shot" not in out
