#!/usr/bin/env bash
# One GPU lease, one script (issue 20): training data, the ablation at equal budget, the bundled
# model's training run, their evaluation on both evaluation families, and gpu_check.
#
#   OUT=DIR bash benchmarks/gpu_session.sh [SECONDS]
#   OUT=DIR TRAIN_CHECK_ONLY=1 bash benchmarks/gpu_session.sh   # issue 22: gpu_check's training table only
#
# Training reads its data through one grid cache ($W/grid-cache, issue 22), shared by the probe and
# the final run; patches are cut in DataLoader workers (--workers, default 2 per process).
#
# Runs on a CUDA host whose python has torch, numpy, scipy, safetensors, tqdm and pillow; MONAI
# comes as a wheel in .gpu/whl, and .gpu/train-2mm holds the ICBM152 heads, prepared here with
# `ct2mri-node phantoms --family icbm --cases 12 --seed 3000` then `ct2mri-node prepare` (they
# need SimpleITK and nilearn, which such a host may lack). The phantom and randomised families
# are generated on the host itself, straight into the prepared folder. SECONDS (default 540) is
# the wall-clock budget: the final run gets what is left after the ablation, less a reserve for
# the evaluation, and stops by itself (--max-minutes) if the GPU turns out slower.
set -u
start=$(date +%s)
budget=${1:-540}
OUT=${OUT:?set OUT to the folder results go to}
# overridable for a dry run on the CPU (tiny counts); the defaults are what the lease ran
DEVICE=${DEVICE:-cuda} ARM_ITERS=${ARM_ITERS:-1500} PROBE_ITERS=${PROBE_ITERS:-60}
N_PHANTOM=${N_PHANTOM:-16} N_RANDOMISED=${N_RANDOMISED:-100} WIDTH=${WIDTH:-24} PATCH=${PATCH:-48}
ARM_WIDTH=${ARM_WIDTH:-16} ARM_PATCH=${ARM_PATCH:-32} RESERVE=${RESERVE:-150}
W=/tmp/ct2mri-gpu
mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
python3 -c "import monai" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.is_available())"
elapsed() { echo $(( $(date +%s) - start )); }

# issue 22: training speed and memory at 2 mm and 1 mm patches, 1 and 2 GPUs (about 2 minutes on one H200)
if [ "${TRAIN_CHECK_ONLY:-0}" = 1 ]; then
    python3 benchmarks/gpu_check.py --train-only --train-iterations "${TRAIN_CHECK_ITERS:-300}" 2>&1 | tee "$OUT/gpu_train.log"
    exit 0
fi

# 1. training data: ICBM heads (carried) + phantom and randomised cases generated here
D=$W/train-2mm
rm -rf "$D" && cp -r .gpu/train-2mm "$D"
python3 -m ct2mri_node.commands.prepare --family phantom --cases "$N_PHANTOM" --seed 1000 --out "$D" --workers 16 2>&1 | tail -1
python3 -m ct2mri_node.commands.prepare --family randomised --cases "$N_RANDOMISED" --seed 2000 --out "$D" --workers 16 2>&1 | tail -1
echo "data ready at $(elapsed) s"

# 2. ablation arms at equal budget, all at once (small networks leave the GPU mostly idle)
for arm in v02-design windows windows+batchnorm windows+batchnorm+fat unet ddpm; do
    python3 benchmarks/ablation.py train --arm "$arm" --data "$D" --out "$W/ablation" --device "$DEVICE" \
        --iterations "$ARM_ITERS" --batch-size 8 --patch "$ARM_PATCH" --base-channels "$ARM_WIDTH" --lr 1e-3 > "$W/arm-$arm.log" 2>&1 &
done
wait
tail -qn 1 "$W"/arm-*.log
echo "ablation trained at $(elapsed) s"

# 3. the bundled model: measure its speed, then train for the time left less a reserve
FINAL=(--data "$D" --device "$DEVICE" --base-channels "$WIDTH" --patch "$PATCH" --batch-size 8 --lr 1e-3 --seed 0 --val-every 500
       --weights float16 --name ct2mri-enhanced-demo --cache "$W/grid-cache")
python3 -m ct2mri_node.commands.train "${FINAL[@]}" --out "$W/probe" --iterations "$PROBE_ITERS" > "$W/probe.log" 2>&1
rate=$(grep -o '[0-9.]* it/s this run' "$W/probe.log" | cut -d' ' -f1)
left=$(( budget - $(elapsed) - RESERVE )); [ "$left" -ge 60 ] || left=60
iters=$(python3 -c "print(max(${MIN_ITERS:-500}, int(float('${rate:-5}') * $left * 0.9) // 100 * 100))")
echo "probe ${rate} it/s; final run: $iters iterations in at most $left s"
python3 -m ct2mri_node.commands.train "${FINAL[@]}" --out "$W/final" --iterations "$iters" \
    --max-minutes "$(python3 -c "print($left / 60)")" > "$W/final.log" 2>&1 &
final_pid=$!
args=()
for arm in "$W"/ablation/*/; do args+=(--checkpoint "${arm%/}"); done
python3 benchmarks/ablation.py evaluate "${args[@]}" --cases 1 --device "$DEVICE" --json "$W/ablation.json" \
    > "$W/ablation-eval.log" 2>&1
wait $final_pid
tail -n 2 "$W/final.log"
echo "final trained at $(elapsed) s"

# 4. the final model on both evaluation families (montages), and gpu_check with it
python3 benchmarks/ablation.py evaluate --checkpoint "$W/final" --cases 2 --device "$DEVICE" --json "$W/final-eval.json" \
    --montage-dir "$W/montages" > "$W/final-eval.log" 2>&1 &
python3 benchmarks/gpu_check.py --checkpoint "$W/final" --skip-train > "$W/gpu_check.log" 2>&1
wait
cat "$W/gpu_check.log"
tail -n 8 "$W/ablation-eval.log" "$W/final-eval.log"

# 5. what comes back
mkdir -p "$OUT/final"
cp "$W/final/model.safetensors" "$W/final/card.json" "$OUT/final/"
cp "$W/ablation.json" "$W/final-eval.json" "$OUT/" 2>/dev/null
tar -C "$W" -cf "$OUT/montages.tar" montages 2>/dev/null
tar -C "$W" -cf "$OUT/logs.tar" --exclude='*.pt' --exclude='*.safetensors' $(cd "$W" && ls *.log) ablation
echo "done at $(elapsed) s"
