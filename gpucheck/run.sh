#!/usr/bin/env bash
export PYTHONPATH="$PWD/src" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name --format=csv,noheader
echo "== single GPU bf16: crash/resume lora"
timeout 50 python3 gpucheck/fsdp_resume.py /tmp/gc_gpu_lora lora 2>&1 | grep -E '^\{|distributed_type|Error'
echo "== FSDP2 (1 process): crash/resume lora"
timeout 60 python3 -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 gpucheck/fsdp_resume.py /tmp/gc_fsdp_lora lora 2>&1 | grep -E '^\{|distributed_type|Error' | head -12
