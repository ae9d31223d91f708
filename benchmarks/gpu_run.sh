#!/usr/bin/env bash
# All the GPU work of issue 11 (speed), in order of importance, each stage saving its results under $OUT as
# soon as it ends (a run cut short keeps what it finished). Stages:
#   speed-baseline  benchmarks/speed.py, all four cases, as it was before any option (variant default)
#   speed-options   benchmarks/speed.py, all four cases, with the speed options (variants $VARIANTS)
#   squad-epoch     `tunelab finetune` SmolLM2 on the whole SQuAD v1.1 train, one epoch ($SQUAD_FLAGS),
#                   then the official dev set: train seconds and dev EM/F1 (so speed is not bought with quality)
#   harness         benchmarks/harness_sst2.py: zero-shot SST-2 dev against lm-evaluation-harness (if lm_eval
#                   imports, from the image or from $HARNESS_SITE, default /tmp/site-harness, where
#                   benchmarks/stage_harness.sh's extra run installs it; skipped, saying so, otherwise)
#   eval-batching   benchmarks/eval_batching.py: evaluation at fixed batch sizes against batch_size auto, and
#                   zero-shot SQuAD generation with a dynamic against a static KV cache
#   study           benchmarks/gpu_study.py (issue 3's stages; only when named in ONLY)
# Environment: ONLY=stage,stage (default: the first five, in that order); BUDGET seconds for the whole script
# (default 540; a stage that would start with under 30 s left is skipped and marked so); each stage also
# stops at its own cap (CAP_SPEED_BASELINE 150, CAP_SPEED_OPTIONS 240, CAP_SQUAD_EPOCH 300, CAP_HARNESS 120,
# CAP_EVAL_BATCHING 120 s), so that one slow stage cannot take the others' time; VARIANTS (default
# packing,compile-packing,all,share-prefix); SQUAD_FLAGS (default --packing); STEPS (speed's timed steps,
# default 40). The speed cases run SmolLM2 first (the issue's main targets), then the Llama-3.2-1B shape.
# TINY=1: the dry run on a CPU (tiny speed cases with variant packing only, 32 SQuAD training questions, 16 dev
# questions, 8 harness sentences): checks this script end to end (13 minutes on the shared 2-core CPU).
#
# On the lent GPU machine (the `run` tool), after ../shared/tools/device-stage nltk==3.10.4 (its header; nltk:
# SST-2 zero-shot detokenizes its inputs) and then
# benchmarks/stage_harness.sh here: three runs back to back,
#   run 0: carry [".carry/h"]    command: bash .carry/h/stage
#   run 1: carry [".carry/s1"]   command: bash .carry/s1/stage
#   run 2: carry [".carry/s2"]   command: source .carry/s2/stage &&
#          BUDGET=480 bash benchmarks/on_device.sh /tmp/w11 bash benchmarks/gpu_run.sh
# (on_device.sh: only 8 files come back from the machine's $OUT; it packs what this script writes into one.)
# Staged with DATA_ONLY=1, the speed stages alone need one run: source .carry/s1/stage && ONLY=speed-baseline,
# speed-options bash benchmarks/on_device.sh /tmp/w11 bash benchmarks/gpu_run.sh (without the model's chat
# template the SST-2 prompt rows are skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-run-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ONLY=${ONLY:-speed-baseline,speed-options,squad-epoch,harness,eval-batching}
BUDGET=${BUDGET:-540}
VARIANTS=${VARIANTS:-packing,compile-packing,all,share-prefix}
[[ -n ${TINY:-} && -z ${KEEP_VARIANTS:-} ]] && VARIANTS=packing  # compiling on a CPU takes minutes a row
SQUAD_FLAGS=${SQUAD_FLAGS:---packing}
STEPS=${STEPS:-40}
HARNESS_SITE=${HARNESS_SITE:-/tmp/site-harness}
START=$(date +%s)
LOG="$OUT/gpu_run.log"
STATUS="$OUT/stages.jsonl"

left() { echo $((BUDGET - ($(date +%s) - START))); }
declare -A CAPS=([speed-baseline]=150 [speed-options]=240 [squad-epoch]=300 [harness]=120 [eval-batching]=120)
note() { echo "{\"stage\": \"$1\", \"status\": \"$2\", \"seconds\": $3, \"at\": \"$(date -u +%FT%TZ)\"}" >> "$STATUS"; }

# one stage: runs "$@" under the time left, logs to $OUT/<stage>.log, notes its status and wall seconds
stage() {
  local name=$1; shift
  local t0 rest rc cap
  rest=$(left)
  cap_var=CAP_${name^^}; cap_var=${cap_var//-/_}
  cap=${!cap_var:-${CAPS[$name]:-$rest}}
  (( rest < 30 )) || (( cap >= rest )) || rest=$cap
  if (( rest < 30 )); then echo "== $name: skipped, ${rest} s left for it" | tee -a "$LOG"; note "$name" skipped 0; return; fi
  echo "== $name ($rest s left): $*" | tee -a "$LOG"
  t0=$(date +%s)
  timeout "$rest" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 15 "$OUT/$name.log" | tee -a "$LOG"
  local status=ok; (( rc == 124 )) && status=timeout; (( rc != 0 && rc != 124 )) && status="exit $rc"
  note "$name" "$status" $(( $(date +%s) - t0 ))
}

{
  echo "gpu_run.sh $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') TINY=${TINY:-}"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU (nvidia-smi failed)"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$LOG"

# The SmolLM2 tokenizer with its chat template: tunelab's converted model when the model is staged (the
# conversion caches it, ~20 s), else the staged tokenizer files.
TOK=()
if [[ -z ${TUNELAB_GGUF:-} && -z ${TINY:-} && -f /tmp/stage/tok/tokenizer.json ]]; then TOK=(--tokenizer /tmp/stage/tok); fi

speed_args=(--steps "$STEPS" --warmup 10 --cases sst2-smollm2,squad-smollm2,sst2-llama1b,squad-llama1b)
[[ -n ${TINY:-} ]] && speed_args=(--tiny)

for s in ${ONLY//,/ }; do
  case $s in
    speed-baseline)
      stage "$s" "$PY" benchmarks/speed.py "${speed_args[@]}" "${TOK[@]}" --variants default --out "$OUT/speed-baseline.json" ;;
    speed-options)
      stage "$s" "$PY" benchmarks/speed.py "${speed_args[@]}" "${TOK[@]}" --variants "default,$VARIANTS" --out "$OUT/speed-options.json" ;;
    squad-epoch)
      # the weights stay on the machine (/tmp); metrics, training log and timings come back
      work=/tmp/gpu-run-squad-epoch
      limits=(); [[ -n ${TINY:-} ]] && limits=(--train-limit 32 --limit 16 --max-length 128)
      # shellcheck disable=SC2086
      stage "$s" "$PY" -m tunelab finetune smollm2-135m --task squad --method full --epochs 1 $SQUAD_FLAGS \
        "${limits[@]}" --out "$work" --overwrite
      mkdir -p "$OUT/squad-epoch"
      # a run cut short leaves $work.partial: its train_log.jsonl still gives the steps' pace
      for d in "$work" "$work.partial"; do
        cp "$d"/eval/metrics.json "$d"/train_log.jsonl "$d"/training_config.json "$OUT/squad-epoch/" 2>/dev/null
      done; true ;;
    harness)
      # lm-eval from the image, else from benchmarks/stage_harness.sh's install (this stage's path only)
      hp=$PYTHONPATH; [[ -d $HARNESS_SITE ]] && hp="$PYTHONPATH:$HARNESS_SITE"
      if PYTHONPATH=$hp "$PY" -c "import lm_eval" 2>/dev/null; then
        # bfloat16 only: tunelab's default on a GPU, and half the launches of both float types
        lim=(--dtypes bfloat16 --out "$OUT/harness-sst2.json"); [[ -n ${TINY:-} ]] && lim+=(--limit 8 --repeats 1)
        stage "$s" env PYTHONPATH="$hp" "$PY" benchmarks/harness_sst2.py "${lim[@]}"
      else
        echo "== harness: skipped, lm_eval does not import here (stage it: benchmarks/stage_harness.sh)" | tee -a "$LOG"
        note "$s" "skipped: no lm_eval" 0
      fi ;;
    eval-batching)
      sizes=(--sst2-n 872 --squad-n 512 --spans-n 2000 --settings 32,128,auto)
      [[ -n ${TINY:-} ]] && sizes=(--sst2-n 32 --squad-n 8 --spans-n 8 --settings 16,auto)
      stage "$s" "$PY" benchmarks/eval_batching.py "${sizes[@]}" --kv-caches dynamic,static --out "$OUT/eval-batching.json" ;;
    study)
      stage "$s" "$PY" benchmarks/gpu_study.py --out "$OUT/study" --budget "$(( $(left) - 20 ))" ${TINY:+--smoke} ;;
    *) echo "unknown stage $s (known: speed-baseline speed-options squad-epoch harness eval-batching study)" | tee -a "$LOG"; exit 2 ;;
  esac
done
echo "done in $(( $(date +%s) - START )) s; results in $OUT" | tee -a "$LOG"
