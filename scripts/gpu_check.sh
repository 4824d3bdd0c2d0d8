#!/usr/bin/env bash
# The GPU checks in one command (under 10 minutes on one H100/H200): the CUDA kernel tests, 20 training
# steps of the demo model on CUDA, the training benchmark of tiny_LLaMA_1b against transformers, and
# its step time with the document mask (FlexAttention) against without.
# Needs a PyTorch CUDA image plus the project's dependencies and transformers (the benchmark's reference
# and test_model's), installed from wheels brought along where there is no package index. Writes
# everything under ${OUT:-gpu_check_out}/ and prints a summary.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status() { if [ "$1" -eq 0 ]; then echo ok; else echo "FAILED ($1)"; fi; }

python -c "import torch; print(f'{torch.cuda.get_device_name(0)}, PyTorch {torch.__version__}, CUDA {torch.version.cuda}')" \
    | tee "$OUT/card.txt"

# 1. every fused or optional path against its reference on CUDA (the CPU-only tests are deselected)
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_model.py tests/test_documents.py -k cuda \
    > "$OUT/kernel_tests.txt" 2>&1
KERNELS=$?

# 2. 20 steps of the demo model on random-token shards, bf16-mixed, compiled blocks
python - "$OUT/data" <<'PY' > "$OUT/data.txt" 2>&1
import sys
from pathlib import Path
import numpy as np
from lit_gpt.data.index import index_directory
from lit_gpt.data.shards import write_shard
directory = Path(sys.argv[1])
directory.mkdir(parents=True, exist_ok=True)
write_shard(directory / "train_random_0_0000000000.bin", np.random.default_rng(0).integers(0, 4096, 257 * 4096, dtype=np.uint16))
index_directory(directory)
PY
timeout 150 python pretrain/tinyllama.py --config pretrain/configs/cpu_demo.yaml \
    --train_data "[{name: random, path: $OUT/data}]" --val_data null --out_dir "$OUT/train" --resume false \
    --overwrite true --precision bf16-mixed --compile true --max_steps 20 --log_interval 5 --save_interval 20 \
    > "$OUT/train.txt" 2>&1
TRAIN=$?

# 3. tokens/s per GPU, MFU and peak memory: ours eager / compiled / compiled + selective checkpointing,
#    and transformers' LlamaForCausalLM (SDPA) eager and compiled, micro-batch 8 x 2048, bf16
timeout 240 python scripts/benchmark_train.py --model_name tiny_LLaMA_1b --model_config '{}' --seq_len 2048 \
    --micro_batch_size 8 --precision bf16-true --devices cuda --threads 8 --steps 10 --warmup 3 \
    --modes '[eager, compile, compile+selective]' > "$OUT/benchmark.txt" 2>&1
BENCH=$?
timeout 60 python scripts/benchmark_train.py --loss true --model_name tiny_LLaMA_1b --model_config '{}' \
    --seq_len 2048 --micro_batch_size 8 --precision bf16-true --devices cuda --steps 5 > "$OUT/loss.txt" 2>&1
LOSS=$?
timeout 150 python scripts/benchmark_train.py --document_mask true --model_name tiny_LLaMA_1b --model_config '{}' \
    --seq_len 2048 --micro_batch_size 8 --precision bf16-true --devices cuda --threads 8 --steps 10 --warmup 3 \
    --modes '[compile]' > "$OUT/document_mask.txt" 2>&1
MASK=$?

echo
echo "=== summary: $(cat "$OUT/card.txt")"
echo "kernel tests:  $(status $KERNELS)   $(tail -1 "$OUT/kernel_tests.txt")"
echo "demo training: $(status $TRAIN)   $(grep -E '^step +20/' "$OUT/train.txt" | tail -1)"
echo "benchmark:     $(status $BENCH)"
grep -E 'tokens/s|ours / transformers' "$OUT/benchmark.txt"
echo "loss:          $(status $LOSS)"
grep -E 'ms|x the time' "$OUT/loss.txt"
echo "document mask: $(status $MASK)"
grep -E "mask's attention|tokens/s|with the mask" "$OUT/document_mask.txt"
