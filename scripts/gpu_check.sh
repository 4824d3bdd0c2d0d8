#!/usr/bin/env bash
# The GPU checks in one command. Steps (all by default; choose with --only STEP,STEP):
#   kernels    every fused or optional path against its reference on CUDA (tests -k cuda)      ~2 min
#   train      20 steps of the demo model on CUDA, bf16-mixed, compiled blocks                  ~1 min
#   benchmark  tiny_LLaMA_1b against transformers: tokens/s, MFU, peak memory (2048 tokens)     ~3 min
#   loss       the training loss alone, ours against PyTorch's chunked linear_cross_entropy,
#              at 32,000 and 128,256 ids                                                         ~1 min
#   mask       tiny_LLaMA_1b's step time with the document mask (FlexAttention) and without    ~2 min
#   llama3     tiny_LLaMA3_2b at 4,096 tokens (compiled, bf16, micro-batch 2) and Llama-3.2-1B
#              against transformers' LlamaForCausalLM (eager and compiled)                      ~5 min
# Needs a CUDA device, a PyTorch CUDA build, the project's dependencies and transformers (installed from
# wheels brought along where there is no package index). Writes everything under ${OUT:-gpu_check_out}/
# and prints a summary. One call of the lent machine runs at most 10 minutes: run
# --only kernels,train,benchmark,loss,mask in one and --only llama3 in another.
set -uo pipefail
usage() { sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
STEPS=kernels,train,benchmark,loss,mask,llama3
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --only) STEPS=${2:?--only needs a list of steps, e.g. --only kernels,train}; shift 2 ;;
        --only=*) STEPS=${1#--only=}; shift ;;
        *) echo "error: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for step in ${STEPS//,/ }; do
    case ",kernels,train,benchmark,loss,mask,llama3," in
        *",$step,"*) ;;
        *) echo "error: unknown step $step; the steps are kernels, train, benchmark, loss, mask, llama3" >&2; exit 2 ;;
    esac
done
wanted() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status() { if [ "$1" -eq 0 ]; then echo ok; else echo "FAILED ($1)"; fi; }

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "error: no usable CUDA device (torch.cuda.is_available() is False): these checks need a GPU" >&2
    exit 2
fi
mkdir -p "$OUT"
python -c "import torch; print(f'{torch.cuda.get_device_name(0)}, PyTorch {torch.__version__}, CUDA {torch.version.cuda}')" \
    | tee "$OUT/card.txt"
BENCH=(python scripts/benchmark_train.py --precision bf16-true --devices cuda --threads 8)

if wanted kernels; then  # the CPU-only tests are deselected
    timeout 150 python -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_model.py tests/test_documents.py \
        -k cuda > "$OUT/kernel_tests.txt" 2>&1
    KERNELS=$?
fi

if wanted train; then  # random-token shards
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
fi

if wanted benchmark; then  # ours eager / compiled / compiled + selective checkpointing, transformers (SDPA)
    timeout 240 "${BENCH[@]}" --model_name tiny_LLaMA_1b --model_config '{}' --seq_len 2048 --micro_batch_size 8 \
        --steps 10 --warmup 3 --modes '[eager, compile, compile+selective]' > "$OUT/benchmark.txt" 2>&1
    BENCHMARK=$?
fi
if wanted loss; then  # Llama 2's vocabulary, then Llama 3's (chunks of 1,024 rows: kernels.default_chunk_rows)
    timeout 60 "${BENCH[@]}" --loss true --model_name tiny_LLaMA_1b --model_config '{}' --seq_len 2048 \
        --micro_batch_size 8 --steps 5 > "$OUT/loss.txt" 2>&1
    LOSS=$?
    timeout 60 "${BENCH[@]}" --loss true --model_name tiny_LLaMA3_2b --model_config '{}' --seq_len 4096 \
        --micro_batch_size 4 --steps 5 >> "$OUT/loss.txt" 2>&1
    LOSS=$((LOSS + $?))
fi
if wanted mask; then
    timeout 150 "${BENCH[@]}" --document_mask true --model_name tiny_LLaMA_1b --model_config '{}' --seq_len 2048 \
        --micro_batch_size 8 --steps 10 --warmup 3 --modes '[compile]' > "$OUT/document_mask.txt" 2>&1
    MASK=$?
fi
if wanted llama3; then  # micro-batches that fit 80 GB (scripts/plan_memory.py: about 43 and 26 GiB)
    timeout 150 "${BENCH[@]}" --model_name tiny_LLaMA3_2b --model_config '{}' --seq_len 4096 --micro_batch_size 2 \
        --steps 5 --warmup 2 --modes '[compile]' > "$OUT/tiny_llama3.txt" 2>&1
    LLAMA3=$?
    timeout 200 "${BENCH[@]}" --model_name Llama-3.2-1B --model_config '{}' --seq_len 2048 --micro_batch_size 4 \
        --steps 8 --warmup 2 --modes '[eager, compile]' > "$OUT/llama3.2_1b.txt" 2>&1
    LLAMA32=$?
fi

echo
echo "=== summary: $(cat "$OUT/card.txt")"
if wanted kernels; then echo "kernel tests:  $(status $KERNELS)   $(tail -1 "$OUT/kernel_tests.txt")"; fi
if wanted train; then echo "demo training: $(status $TRAIN)   $(grep -E '^step +20/' "$OUT/train.txt" | tail -1)"; fi
if wanted benchmark; then
    echo "benchmark:     $(status $BENCHMARK)"
    grep -E 'tokens/s|ours / transformers' "$OUT/benchmark.txt"
fi
if wanted loss; then
    echo "loss:          $(status $LOSS)"
    grep -E '^loss:| ms$|x the time' "$OUT/loss.txt"
fi
if wanted mask; then
    echo "document mask: $(status $MASK)"
    grep -E "mask's attention|tokens/s|with the mask" "$OUT/document_mask.txt"
fi
if wanted llama3; then
    echo "tiny_LLaMA3_2b: $(status $LLAMA3)"
    grep -E 'tokens/s' "$OUT/tiny_llama3.txt"
    echo "Llama-3.2-1B:  $(status $LLAMA32)"
    grep -E 'tokens/s|ours / transformers' "$OUT/llama3.2_1b.txt"
fi
