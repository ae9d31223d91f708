"""Device check: FSDP (1 process) train + crash + resume == uninterrupted; full_state_dict gathers."""
import json, sys, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "tests")
from conftest import make_model_dir
from tunelab.models import load_task_model
from tunelab.models.params import LoraOptions, apply_method
from tunelab.training import TrainConfig, full_state_dict, last_checkpoint, train

root = Path(sys.argv[1]); method = sys.argv[2]
root.mkdir(parents=True, exist_ok=True)
model_dir = root / "model"
if not model_dir.exists():
    make_model_dir(model_dir)
rng = np.random.default_rng(0)
feats = []
for i in range(40):
    n = int(rng.integers(3, 20))
    feats.append({"input_ids": rng.integers(5, 300, size=n).tolist(), "attention_mask": [1] * n, "labels": i % 2})

def build():
    torch.manual_seed(0)
    m = load_task_model(str(model_dir), "sst2")
    m.config.pad_token_id = 0
    return apply_method(m, "sst2", method, LoraOptions(4, 8, 0.1, ("q_proj", "v_proj", "up_proj")))

cfg = TrainConfig(method=method, learning_rate=3e-3, epochs=3, batch_size=4, grad_accum=2, warmup_ratio=0.2,
                  max_length=32, seed=3, log_every=2, save_every=3, eval_every=4, lora_r=4, lora_alpha=8,
                  lora_dropout=0.1, lora_targets=["q_proj", "v_proj", "up_proj"], bf16=True)

class Crash(Exception):
    pass

def ev(crash_at):
    calls = []
    def f(model):
        calls.append(1)
        if crash_at and len(calls) == crash_at:
            raise Crash
        tot = 0.0
        for p in model.parameters():
            if p.requires_grad:
                t = p.full_tensor() if hasattr(p, "full_tensor") else p
                tot += float(t.double().sum())
        return {"score": tot}
    return f

t = time.time()
ref = train(build(), feats, cfg, pad_id=0, work_dir=root / "ref", evaluate=ev(None), progress=False)
a = {k: v.float().cpu() for k, v in full_state_dict(ref).items()}
try:
    train(build(), feats, cfg, pad_id=0, work_dir=root / "run", evaluate=ev(2), progress=False)
except Crash:
    pass
ck = last_checkpoint(root / "run" / "checkpoints")
print("distributed_type", ref.accelerator.distributed_type, "device", ref.accelerator.device, "ckpt", ck, sorted(p.name for p in ck.iterdir()))
got = train(build(), feats, cfg, pad_id=0, work_dir=root / "run", evaluate=ev(None), resume=True, progress=False)
b = {k: v.float().cpu() for k, v in full_state_dict(got).items()}
diff = max((a[k] - b[k]).abs().max().item() for k in a)
same = all(torch.equal(a[k], b[k]) for k in a)
strip = lambda log: [{k: v for k, v in e.items() if k != "tokens_per_s"} for e in log]
print(json.dumps({"method": method, "resumed_from": got.resumed_from, "bit_identical": same, "max_abs_diff": diff,
                  "logs_equal": strip(ref.log) == strip(got.log), "evals_equal": ref.evals == got.evals,
                  "n_tensors": len(a), "seconds": time.time() - t}))
