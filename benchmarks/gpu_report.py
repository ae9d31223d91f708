"""Build a study report (report.md / report.html) from a `gpu_study.py` result folder.

gpu_study.py returns metrics, predictions and training logs but not weights, so the fine-tuned parameter
counts here come from the config (tunelab.models.param_report), not from loading the saved model.

    .venv/bin/python benchmarks/gpu_report.py benchmarks/results/h200-smollm2-study
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# study task name -> (gpu_study zero-shot stage, fine-tune stage)
TASKS = {
    "sst2": ("sst2-zeroshot", "sst2-full"),
    "squad": ("squad11-zeroshot", "squad11-full"),
    "squad_v2": ("squad20-zeroshot", "squad20-full"),
}


def main(results: str) -> int:
    from tunelab.models import load_config, param_report
    from tunelab.report import build_report
    from tunelab.tasks import get_task

    src = Path(results)
    run = src / "report"
    shutil.rmtree(run, ignore_errors=True)
    summary = json.loads((src / "summary.json").read_text())
    config = load_config("smollm2-135m")
    for task, (zs, ft) in TASKS.items():
        labels = get_task(task).head_options().get("labels")
        if not (src / zs).is_dir() and not (src / ft).is_dir():
            continue
        for stage, sub in ((zs, "zeroshot"), (ft, "finetune")):
            if (src / stage).is_dir():
                shutil.copytree(src / stage, run / task / sub)
        method = (
            json.loads((src / ft / "tunelab.json").read_text())["method"] if (src / ft).is_dir() else "full"
        )
        (run / "params").mkdir(parents=True, exist_ok=True)
        (run / "params" / f"{task}.json").write_text(
            json.dumps(
                {
                    "task": task,
                    "model": "smollm2-135m",
                    "method": method,
                    "hidden_size": config.hidden_size,
                    "tie_word_embeddings": bool(config.tie_word_embeddings),
                    "num_labels": len(labels) if labels else None,
                    "base": param_report("smollm2-135m", config, None).to_dict(),
                    "task_model": param_report("smollm2-135m", config, get_task(task).head, method).to_dict(),
                },
                indent=2,
            )
        )
    machine = summary["machine"]
    (run / "environment.json").write_text(
        json.dumps(
            {
                "device": {"type": "cuda", "name": machine.get("gpu")},
                "packages": {"torch": machine.get("torch"), "transformers": machine.get("transformers")},
                "python": machine.get("python"),
                "seed": 42,  # gpu_study.py runs tunelab's default seed
                "source": "benchmarks/gpu_study.py",
                "started": summary.get("started"),
            },
            indent=2,
        )
    )
    md, html = build_report(run)
    for task in TASKS:  # the stage outputs stay in the result folder; the report keeps its own files only
        shutil.rmtree(run / task, ignore_errors=True)
    print(f"wrote {md} and {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
