"""Output folders (tunelab.outputs): an --out that could destroy an input is refused by every command that
writes, with or without --overwrite; two runs never share an output folder (the lock); a partial folder that
holds a complete checkpoint is not thrown away by a rerun without --resume."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.errors import UsageError
from tunelab.outputs import atomic_output, check_apart


def run(capsys, *argv) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    return rc, cap.err


def digest(root: Path) -> dict[str, str]:
    """Every file under root with its content hash: a folder is intact when this is unchanged."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data" / "SST-2"
    d.mkdir(parents=True)
    rows = "sentence\tlabel\n" + "".join(
        f"{w} film number {i}\t{i % 2}\n" for i, w in enumerate(["awful", "great"] * 4)
    )
    (d / "train.tsv").write_text(rows)
    (d / "dev.tsv").write_text(rows)
    return d.parent


def finetune(model, data_dir, out, *extra):
    return [
        "finetune",
        model,
        "--task",
        "sst2",
        "--data-dir",
        data_dir,
        "--out",
        out,
        "--input-prompt",
        "none",
        "--max-steps",
        "1",
        "--max-length",
        "16",
        "--batch-size",
        "4",
        *extra,
    ]


# ---- --out apart from every input
# ---------------------------------------------------------------------------


def test_check_apart_equal_containing_inside_and_companions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "runs" / "model"
    model.mkdir(parents=True)
    data = tmp_path / "data.tsv"
    data.write_text("x")
    inputs = [("model folder", model), ("data file", data)]
    check_apart(tmp_path / "runs" / "other", inputs)  # beside an input: fine
    check_apart(tmp_path / "runs" / "model-2", inputs)
    for out, words in [
        (model, "is the model folder"),
        (tmp_path / "runs", "contains the model folder"),
        (model / "eval", "lies inside the model folder"),
        (data, "is the data file"),
        (tmp_path / "runs" / "model" / ".." / "model", "is the model folder"),
    ]:
        with pytest.raises(UsageError, match=words):
            check_apart(out, inputs)
    # OUT.partial (cleared by a new run) and OUT.old (deleted after --overwrite) are OUT's too
    partial = tmp_path / "x.partial"
    partial.mkdir()
    with pytest.raises(UsageError, match=r"work folder x\.partial is the model folder"):
        check_apart(tmp_path / "x", [("model folder", partial)])
    check_apart(tmp_path / "x", [("model folder", tmp_path / "missing")])  # nothing there to destroy


def test_check_apart_resolves_symlinks_and_refuses_the_current_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "SST-2").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(data)
    for out in (link, link / "SST-2", tmp_path / "link" / "SST-2" / "..", link / "SST-2" / "run"):
        with pytest.raises(UsageError, match=r"data folder .*data"):
            check_apart(out, [("data folder", data)])
    with pytest.raises(UsageError, match=r"\(= .*data\)"):  # the message shows where the link leads
        check_apart(link, [("data folder", data)])
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", "..", "", "./", str(tmp_path), "../sub", os.path.relpath("/", work)):
        with pytest.raises(UsageError, match=r"current folder|a folder above"):
            check_apart(out)
    check_apart("run")  # inside the current folder: fine


@pytest.fixture(scope="module")
def finetuned(tiny_model_dir, tmp_path_factory):
    """A fine-tuned folder (one step) and the data folder it was trained on."""
    root = tmp_path_factory.mktemp("finetuned")
    d = root / "data" / "SST-2"
    d.mkdir(parents=True)
    rows = "sentence\tlabel\n" + "".join(
        f"{w} film {i}\t{i % 2}\n" for i, w in enumerate(["awful", "great"] * 4)
    )
    (d / "train.tsv").write_text(rows)
    (d / "dev.tsv").write_text(rows)
    assert main([str(a) for a in finetune(tiny_model_dir, root / "data", root / "run")]) == 0
    return root / "run", root / "data"


def test_evaluate_into_its_own_model_folder_is_refused(finetuned, tmp_path, capsys):
    model, data = finetuned
    before = digest(model)
    for out in (model, model / "eval", model.parent):
        rc, err = run(capsys, "evaluate", model, "--data-dir", data, "--out", out, "--overwrite")
        assert rc == 2 and "fine-tuned model folder" in err and "input" in err, err
        assert digest(model) == before
    rc, err = run(capsys, "evaluate", model, "--data-dir", data, "--out", data / "SST-2", "--overwrite")
    assert rc == 2 and "data" in err and digest(model) == before
    rc, err = run(capsys, "evaluate", model, "--data-dir", data, "--out", tmp_path / "ev")
    assert rc == 0, err


def test_finetune_and_zeroshot_into_an_input_are_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    data_before, model_before = digest(data_dir), digest(Path(tiny_model_dir))
    config = tmp_path / "cfgs" / "train.yaml"
    config.parent.mkdir()
    config.write_text("learning_rate: 1e-3\n")
    train = data_dir / "SST-2" / "train.tsv"
    data = "data folder|training file|data file"  # whichever of them is found first
    cases = [
        (finetune(tiny_model_dir, data_dir, data_dir, "--overwrite"), data),
        (finetune(tiny_model_dir, data_dir, data_dir / "SST-2", "--overwrite"), data),
        (finetune(tiny_model_dir, data_dir, data_dir.parent, "--overwrite"), "current folder|contains"),
        (finetune(tiny_model_dir, data_dir, train, "--overwrite"), "training file"),
        (finetune(tiny_model_dir, data_dir, tiny_model_dir, "--overwrite"), "is the model folder"),
        (
            finetune(tiny_model_dir, data_dir, config.parent, "--overwrite", "--config", config),
            "options file",
        ),
        (
            [
                "zeroshot",
                tiny_model_dir,
                "--task",
                "sst2",
                "--data-dir",
                data_dir,
                "--out",
                data_dir,
                "--overwrite",
            ],
            data,
        ),
        (
            ["zeroshot", tiny_model_dir, "--task", "sst2", "--data-dir", data_dir, "--out", tiny_model_dir],
            "is the model folder",
        ),
    ]
    for argv, words in cases:
        rc, err = run(capsys, *argv)
        assert rc == 2, (argv, err)
        assert "input of this command" in err and re.search(words, err), (argv, err)
    assert digest(data_dir) == data_before and digest(Path(tiny_model_dir)) == model_before
    assert config.read_text() == "learning_rate: 1e-3\n"


def test_the_local_copy_of_a_model_named_by_alias_or_hub_id_is_an_input(
    data_dir, tmp_path, monkeypatch, capsys
):
    """An alias's converted folder in tunelab's cache and a Hub id's folder in the Hub cache are the model's
    files as much as a folder given by its path: an --out that is or contains them is refused before any
    model is loaded (the GGUF named here is no GGUF file, so a conversion would fail)."""
    import huggingface_hub.constants

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "never-read.gguf").write_text("not a GGUF file")
    monkeypatch.setenv("TUNELAB_GGUF", str(tmp_path / "never-read.gguf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    converted = tmp_path / "cache" / "models" / "smollm2-135m"
    hub_copy = tmp_path / "hub" / "models--owner--name"
    for folder in (converted, hub_copy):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    before = digest(tmp_path / "cache"), digest(tmp_path / "hub")
    cases = [
        ("smollm2-135m", converted, "is the converted model folder of smollm2-135m"),
        ("smollm2-135m", tmp_path / "cache", "contains the converted model folder of smollm2-135m"),
        ("owner/name", hub_copy, "is the Hub cache folder of owner/name"),
        ("owner/name", tmp_path / "hub", "contains the Hub cache folder of owner/name"),
    ]
    for model, out, words in cases:
        rc, err = run(
            capsys, "zeroshot", model, "--task", "sst2", "--data-dir", data_dir, "--out", out, "--overwrite"
        )
        assert rc == 2 and words in err and "input of this command" in err, (model, out, err)
        rc, err = run(capsys, *finetune(model, data_dir, out, "--overwrite"))
        assert rc == 2 and words in err, (model, out, err)
    assert (digest(tmp_path / "cache"), digest(tmp_path / "hub")) == before


def test_unusual_output_paths(tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    work = tmp_path / "here"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    for out in (".", "..", "./"):
        rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, "--overwrite"))
        assert rc == 2 and ("current folder" in err or "above the current" in err), (out, err)
    link = tmp_path / "to-data"
    link.symlink_to(data_dir)
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, link / "SST-2", "--overwrite"))
    assert rc == 2 and "input of this command" in err and "(= " in err  # where the link leads
    assert (work / "mine.txt").read_text() == "keep" and sorted(os.listdir(work)) == ["mine.txt"]
    assert (data_dir / "SST-2" / "train.tsv").is_file()


def test_study_into_the_data_folder_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    before = digest(data_dir)
    rc, err = run(
        capsys,
        "study",
        "--preset",
        "smoke",
        "--set",
        f"model={tiny_model_dir}",
        "--set",
        f"data_dir={data_dir}",
        "--set",
        "squad.enabled=false",
        "--out",
        data_dir,
    )
    assert rc == 2 and "data folder" in err and "input" in err, err
    assert digest(data_dir) == before


def test_export_into_its_model_folder_is_refused(finetuned, capsys):
    model, _ = finetuned
    before = digest(model)
    rc, err = run(capsys, "export", model, "--out", model / "hub", "--overwrite")
    assert rc == 2 and "fine-tuned model folder" in err and digest(model) == before


def test_atomic_output_refuses_inputs_even_with_overwrite(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    with (
        pytest.raises(UsageError, match="is the model folder"),
        atomic_output(src, overwrite=True, inputs=[("model folder", src)]),
    ):
        pass
    assert (src / "f").read_text() == "x"
    shutil.rmtree(src)


# ---- one run per output folder
# ------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from tunelab.outputs import atomic_output
with atomic_output(sys.argv[1]) as work:
    (work / "train_log.jsonl").write_text("the first run's\\n")
    print("ready", flush=True)
    time.sleep(120)
"""


def test_a_users_out_old_folder_is_never_touched(tmp_path):
    """`mv run run.old`, then a new run into `run`: the backup stays. An --overwrite that would need the name
    OUT.old to move OUT aside is refused before it starts, and changes nothing."""
    out, old = tmp_path / "run", tmp_path / "run.old"
    old.mkdir()
    (old / "notes.txt").write_text("backup")
    with atomic_output(out) as work:
        (work / "result.txt").write_text("first")
    assert (old / "notes.txt").read_text() == "backup" and (out / "result.txt").read_text() == "first"
    before = digest(tmp_path)
    with pytest.raises(UsageError, match=r"run\.old already exists: --overwrite moves run aside there"):
        with atomic_output(out, overwrite=True) as work:
            raise AssertionError("not reached")
    assert digest(tmp_path) == before and not (tmp_path / "run.partial").exists()
    shutil.rmtree(old)
    with atomic_output(out, overwrite=True) as work:
        (work / "result.txt").write_text("second")
    assert (out / "result.txt").read_text() == "second" and not old.exists()


def test_a_second_run_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(
    tiny_model_dir, data_dir, tmp_path, capsys
):
    import signal
    import subprocess
    import sys

    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert first.stdout.readline().strip() == "ready"
        for extra in ((), ("--overwrite",), ("--resume",)):
            rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out, *extra))
            assert rc == 2 and "being written by another tunelab run" in err, err
            assert f"pid {first.pid} on " in err and "started 20" in err and "o.lock" in err
        # the first run's work was left alone
        assert (tmp_path / "o.partial" / "train_log.jsonl").read_text() == "the first run's\n"
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: OUT.lock stays behind, stale
        first.wait()
    assert (tmp_path / "o.lock").exists()
    rc, err = run(capsys, *finetune(tiny_model_dir, data_dir, out))
    assert rc == 0, err
    assert (out / "eval" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "o"]  # lock released, no partial


def test_output_lock_in_one_process_and_its_release(tmp_path):
    from tunelab.outputs import output_lock

    out = tmp_path / "o"
    with output_lock(out):
        info = (tmp_path / "o.lock").read_text()
        assert f'"pid": {os.getpid()}' in info and '"host"' in info and '"started"' in info
        with pytest.raises(UsageError, match=rf"o is being written .*pid {os.getpid()}"), output_lock(out):
            pass
        with pytest.raises(UsageError, match="being written"), atomic_output(out, overwrite=True):
            pass
    assert not (tmp_path / "o.lock").exists()
    with pytest.raises(RuntimeError), output_lock(out):  # released on an error too
        raise RuntimeError
    with output_lock(out):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_second_study_in_the_same_run_folder_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    from tunelab.outputs import output_lock

    run_dir = tmp_path / "study"
    with output_lock(run_dir):
        rc, err = run(
            capsys,
            "study",
            "--set",
            f"model={tiny_model_dir}",
            "--set",
            f"data_dir={data_dir}",
            "--set",
            "squad.enabled=false",
            "--out",
            run_dir,
        )
    assert rc == 2 and "being written by another tunelab run" in err, err
    assert not run_dir.exists()


# ---- a checkpoint left by an interrupted run
# ----------------------------------------------------------------


def _checkpointed(work: Path, step: int) -> Path:
    ckpt = work / "checkpoints" / f"step-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "COMPLETE").write_text("{}")
    return ckpt


def test_an_interrupted_run_says_which_checkpoint_it_kept(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt) as info, atomic_output(out, keep_partial=True) as work:
        _checkpointed(work, 2)
        _checkpointed(work, 10)
        raise KeyboardInterrupt
    notes = "\n".join(info.value.__notes__)
    assert "kept the checkpoint" in notes and "step-10 (step 10)" in notes and "--resume" in notes
    with pytest.raises(KeyboardInterrupt) as info, atomic_output(tmp_path / "p", keep_partial=True):
        raise KeyboardInterrupt
    assert "no checkpoint was kept" in info.value.__notes__[0]
    assert not (tmp_path / "p.partial").exists()


def test_a_rerun_without_resume_keeps_a_complete_checkpoint(tmp_path):
    out = tmp_path / "o"
    ckpt = _checkpointed(partial := tmp_path / "o.partial", 4)
    with pytest.raises(UsageError, match=r"holds a complete checkpoint .*step-4.*--resume.*--overwrite"):
        with atomic_output(out, keep_partial=True):
            pass
    assert ckpt.is_dir()
    with pytest.raises(RuntimeError), atomic_output(out, keep_partial=True, resume=True) as work:
        assert (work / "checkpoints" / "step-4").is_dir()  # resume continues from it
        raise RuntimeError
    with atomic_output(out, keep_partial=True, overwrite=True) as work:  # --overwrite: start over
        assert not (work / "checkpoints").exists()
    assert out.is_dir() and not partial.exists()
    (tmp_path / "q.partial").mkdir()  # a partial folder without a checkpoint is simply cleared
    with atomic_output(tmp_path / "q"):
        pass


def test_the_cli_prints_what_was_kept(monkeypatch, tmp_path, capsys):
    import tunelab.cli as cli

    def interrupted(args):
        with atomic_output(tmp_path / "o", keep_partial=True) as work:
            _checkpointed(work, 6)
            raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "report", interrupted)
    assert main(["report", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "tunelab: interrupted by SIGINT" in err
    assert f"tunelab: kept the checkpoint {tmp_path / 'o.partial' / 'checkpoints' / 'step-6'} (step 6)" in err


# ---- a full disk
# --------------------------------------------------------------------------------------------


def test_a_full_disk_is_one_message_naming_the_file_and_the_free_space(tmp_path):
    import errno

    out = tmp_path / "o"
    with pytest.raises(UsageError) as info, atomic_output(out) as work:
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "metrics.json"))
    msg = str(info.value)
    assert msg.startswith(
        f"no space left on the device while writing {tmp_path / 'o.partial' / 'metrics.json'}"
    )
    assert " free on the file system of " in msg and not (tmp_path / "o.partial").exists()
    with pytest.raises(OSError), atomic_output(out):  # other errors stay what they are
        raise OSError(errno.EACCES, "Permission denied")


def _disk_full_run(monkeypatch, capsys, tiny_model_dir, data_dir, tmp_path, writer, fail_at, error=None):
    from helpers import full_disk

    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("an earlier result")
    calls = full_disk(monkeypatch, writer, fail_at, error)
    argv = finetune(tiny_model_dir, data_dir, out, "--epochs", "2", "--max-steps", "3", "--save-every", "1")
    argv.append("--overwrite")
    rc, err = run(capsys, *argv)
    assert len(calls) == fail_at, calls
    assert rc == 2 and "tunelab: error: no space left on the device while writing " in err, err
    assert " free on the file system of " in err and f"{out} is unchanged" in err
    assert (out / "mine.txt").read_text() == "an earlier result"
    return err, tmp_path / "o.partial" / "checkpoints"


@pytest.mark.parametrize("at", [2, 3], ids=["checkpoint", "final model"])
def test_a_full_disk_while_saving_keeps_the_checkpoint_before_and_the_users_files(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys, at
):
    """Three steps, a checkpoint after steps 1 and 2; the disk fills while writing the weights of the
    checkpoint at step 2 or of the final model."""
    import safetensors.torch

    from tunelab.training import checkpoint

    err, root = _disk_full_run(
        monkeypatch, capsys, tiny_model_dir, data_dir, tmp_path, safetensors.torch.save_file, at
    )
    kept = root / f"step-{at - 1}"
    assert f"tunelab: kept the checkpoint {kept} (step {at - 1})" in err and "--resume" in err
    assert checkpoint.complete_checkpoints(root)[0] == kept and checkpoint.problems(kept) == []
    assert not list(root.glob(".tmp-*"))
    assert len([line for line in err.splitlines() if "tunelab:" in line]) == 2  # the error, what was kept


def test_torchs_cryptic_full_disk_error_is_the_same_clear_message(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys
):
    import torch

    cryptic = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    err, _ = _disk_full_run(monkeypatch, capsys, tiny_model_dir, data_dir, tmp_path, torch.save, 1, cryptic)
    assert "checkpoints/.tmp-step-1/" in err and "(checkpoint step 1)" in err  # the file written last
    assert "no checkpoint was kept" in err and not (tmp_path / "o.partial").exists()


def test_a_full_disk_outside_an_output_folder_is_the_same_clear_message(monkeypatch, tmp_path, capsys):
    import errno

    import tunelab.cli as cli

    def writes(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "stages.json"))

    monkeypatch.setitem(cli.COMMANDS, "report", writes)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"tunelab: error: no space left on the device while writing {tmp_path}/run/stages.json"
    )
    assert "MB free on the file system of" in err and "Traceback" not in err


def test_training_files_outside_the_data_folder_are_inputs_too(tiny_model_dir, data_dir, tmp_path, capsys):
    """--train-file and --extra-train files (not under the data folder) are protected like the data files,
    also when extra_train joins them into one training-data description."""
    own, extra = tmp_path / "own", tmp_path / "extra"
    own.mkdir(), extra.mkdir()
    shutil.copy(data_dir / "SST-2" / "train.tsv", own / "train.tsv")
    (extra / "more.tsv").write_text("sentence\tlabel\nan extra good line\t1\nan extra bad line\t0\n")
    before = digest(tmp_path / "own"), digest(tmp_path / "extra")
    cases = [
        finetune(tiny_model_dir, data_dir, own, "--overwrite", "--train-file", own / "train.tsv"),
        finetune(tiny_model_dir, data_dir, extra, "--overwrite", "--extra-train", extra / "more.tsv"),
    ]
    for argv in cases:
        rc, err = run(capsys, *argv)
        assert rc == 2 and "input of this command" in err and "training file" in err, (argv, err)
    assert (digest(tmp_path / "own"), digest(tmp_path / "extra")) == before


def test_an_output_folder_that_cannot_be_made_is_one_message(tmp_path, capsys):
    """Any OSError making the folder or its lock (here: a path under /proc) is a usage error, exit 2."""
    with pytest.raises(UsageError, match="cannot create the output folder"):
        with atomic_output("/proc/tunelab-no-such/out"):
            pass
    (tmp_path / "f.txt").write_text("mine")
    with pytest.raises(
        UsageError, match=r"cannot create the output folder .*/f\.txt/x/out: .*/f\.txt is a file"
    ):
        with atomic_output(tmp_path / "f.txt" / "x" / "out"):
            pass
    assert (tmp_path / "f.txt").read_text() == "mine"


def test_write_text_where_a_folder_stands_in_the_way(tmp_path):
    """A folder at the file's path, or at its temporary file's path: one error naming it, the folder and
    what it holds untouched."""
    from tunelab.outputs import write_text

    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(UsageError, match=r"metrics\.json: is a folder, so the file cannot be written there"):
        write_text(tmp_path / "metrics.json", "{}")
    (tmp_path / "report.md.tmp").mkdir()
    (tmp_path / "report.md.tmp" / "mine.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"report\.md\.tmp: is a folder, so report\.md cannot be written"):
        write_text(tmp_path / "report.md", "# report")
    assert (tmp_path / "report.md.tmp" / "mine.txt").read_text() == "mine"
    assert not (tmp_path / "report.md").exists()
