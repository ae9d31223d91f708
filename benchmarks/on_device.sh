#!/usr/bin/env bash
# Run one command on the lent GPU machine so that what it writes comes back. That machine returns at most 8
# files from $OUT (16 MiB each, no more than two folders down) and empties $OUT before each command
# (../.library/device/README.md), so the command works in WORK, under /tmp (which stays while the machine is
# warm: a later call can continue a study there), and every 30 s and at its end the small files under WORK (no
# weights, checkpoints or optimizer states) are packed into $OUT/results.tgz, its whole output included
# (WORK/run.log); $OUT/run.log holds the output's last MiB. A call cut short at its time limit still returns
# the last pack.
#
#   bash benchmarks/on_device.sh WORK COMMAND [ARGS...]
#
# The command runs with OUT=WORK (gpu_run.sh writes to $OUT). Unpack here with
# `tar -xzf results.tgz -C benchmarks/results/NAME`.
set -uo pipefail
work=${1:?usage: on_device.sh WORK COMMAND [ARGS...]}
shift
back=${OUT:?OUT must name the folder whose files come back}
mkdir -p "$work" "$back"
LIMIT=$((15 * 1024 * 1024))  # under the 16 MiB a file may have

pack() {  # (a file that changes while tar reads it makes tar exit 1: the pack is still good)
  local skip=(--exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.pth' --exclude='*.gguf'
    --exclude='checkpoints' --exclude='optimizer*' --exclude='*.tmp' "$@")
  local tmp="$back/pack-$BASHPID.tmp"  # the periodic packer's own: the last pack never meets a half one
  tar -C "$work" -czf "$tmp" "${skip[@]}" . 2>/dev/null
  (($? <= 1)) || { rm -f "$tmp"; return 1; }
  if (($(stat -c %s "$tmp") > LIMIT)); then  # too big to come back: without per-example detail
    rm -f "$tmp"
    [[ $# -gt 0 ]] && return 1
    pack --exclude='nbest*' --exclude='per_example*' --exclude='predictions*' --exclude='tracking'
    return
  fi
  mv -f "$tmp" "$back/results.tgz"
}

# tunelab's dependencies that the device image lacks must have been staged (device-stage's wheels): say so now,
# not minutes into a run. CHECK_NLTK=0 skips it for commands that run no SST-2 zero-shot (SQuAD alone, speed).
if [[ ${CHECK_NLTK:-1} != 0 ]] && ! "${PYTHON:-python3}" -c "import nltk" 2>/dev/null; then
  echo "on_device: nltk does not import (SST-2 zero-shot detokenizes its inputs): stage it with" \
    "../shared/tools/device-stage nltk==3.10.4" | tee "$back/run.log" >&2
  exit 3
fi

(while sleep 30; do pack; done) 2>/dev/null &
packer=$!
OUT=$work WORK=$work "$@" 2>&1 | tee "$work/run.log"
rc=${PIPESTATUS[0]}
tail -c 1048576 "$work/run.log" > "$back/run.log"
pkill -P "$packer" 2>/dev/null
kill "$packer" 2>/dev/null
wait "$packer" 2>/dev/null
rm -f "$back"/pack-*.tmp
pack || echo "on_device: no results.tgz from the last pack (tar failed, or over $LIMIT bytes)" | tee -a "$back/run.log"
echo "on_device: exit $rc; results.tgz $(stat -c %s "$back/results.tgz" 2>/dev/null || echo 0) bytes" \
  | tee -a "$back/run.log"
exit "$rc"
