#!/usr/bin/env bash
# Stage lm-evaluation-harness for gpu_run.sh's `harness` stage on the lent GPU machine. The device image
# (../.library/device/KINDS.md lists it) lacks lm-eval and the packages below; as Python 3.12 wheels they take
# ~13 MiB, more than either of device-stage's two parts has room for (each is near the 64 MiB one run carries),
# so they travel in a third part, .carry/h/, installed into /tmp/site-harness, which gpu_run.sh puts on the
# harness stage's PYTHONPATH only (datasets and fsspec here never reach tunelab's own stages).
# Run it after ../shared/tools/device-stage (which empties .carry/), then on the device, back to back:
#   run 0: carry [".carry/h"]    command: bash .carry/h/stage
#   run 1, run 2: as device-stage's header says.
# Versions: lm-eval 0.4.13 (the CPU comparison's); datasets 5.2.0 accepts the image's huggingface_hub 1.33.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
dest=.carry/h
rm -rf "$dest" && mkdir -p "$dest/whl"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest/whl" \
  lm-eval==0.4.13 datasets==5.2.0 fsspec==2026.9.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 \
  pytablewriter==1.2.1 dataproperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 \
  tcolorpy==0.1.7 typepy==1.3.5 chardet==6.0.0.post1 pytz==2026.6 nltk==3.10.4 more-itertools==11.2.1 \
  2>&1 | grep -v '^WARNING: Location' || true
# three pure-Python packages publish only source archives: built here, they install anywhere
"$PY" -m pip wheel -q --no-deps -w "$dest/whl" sqlitedict==2.1.0 word2number==1.1 rouge-score==0.1.2 \
  2>&1 | grep -v '^WARNING: Location' || true
n=$(ls "$dest"/whl/*.whl | wc -l)
((n == 20)) || { echo "stage_harness: expected 20 wheels, got $n" >&2; exit 1; }
cat > "$dest/stage" <<'EOS'
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-harness .carry/h/whl/*.whl 2>&1 \
  | grep -v "as the 'root' user"
PYTHONPATH=/tmp/site-harness python3 -c "import lm_eval, datasets; print('lm_eval', lm_eval.__version__, 'datasets', datasets.__version__)"
EOS
du -sh "$dest" | sed 's/^/staged for the harness: /'
