"""Prune Qwen2.5-7B to 20/30/40% sparsity on a multi-domain mix of public Hub datasets and publish every level.

Needs Hub access and a GPU (about 40 GB in bf16 with gradient checkpointing; GISP scores need gradients), and a
write token (`hf auth login` or HF_TOKEN). Not run by the tests. The same job on the command line:

    hf-prune prune Qwen/Qwen2.5-7B --sparsity 0.2*,0.3,0.4 --calibration web=0.3,code=0.3,math=0.2,dialogue=0.2 \
        --evaluation eval_mix.yaml --num-samples 256 --seq-len 1024 --dtype bfloat16 --device-map cuda \
        --output-dir Qwen2.5-7B-pruned --push-to your-name/Qwen2.5-7B-pruned
"""

from hf_prune import CalibrationMix
from hf_prune import prune_and_push  # also exported as hf_prune.prune_and_push

REPO_ID = "your-name/Qwen2.5-7B-pruned"  # change me

# Calibration: the presets of hf_prune.data.PRESETS (C4, codeparrot, GSM8K train, UltraChat train), streamed.
calibration = CalibrationMix({"web": 0.3, "code": 0.3, "math": 0.2, "dialogue": 0.2})

# Evaluation: held-out splits, never the calibration ones (prune_and_push refuses a shared source).
evaluation = CalibrationMix({
    "web": {"source": "allenai/c4", "config": "en", "split": "validation", "streaming": True, "max_tokens": 200_000},
    "code": {"source": "openai/openai_humaneval", "split": "test", "text_field": ["prompt", "canonical_solution"]},
    "math": {"source": "openai/gsm8k", "config": "main", "split": "test", "text_field": ["question", "answer"]},
    "dialogue": {"source": "HuggingFaceH4/ultrachat_200k", "split": "test_sft", "chat": True, "streaming": True,
                 "max_tokens": 200_000},
})

result = prune_and_push(
    "Qwen/Qwen2.5-7B",
    REPO_ID,
    target_sparsity=(0.2, 0.3, 0.4),
    primary=0.2,                 # the level that goes to `main`
    calibration=calibration,
    evaluation=evaluation,
    method="gisp",
    num_samples=256,
    seq_len=1024,
    eval_seq_len=1024,
    eval_max_windows=64,
    torch_dtype="bfloat16",
    device_map="cuda",
    output_dir="Qwen2.5-7B-pruned",
    private=True,
    # passed on to hf_prune.prune:
    channel_multiple=64,         # kept MLP widths are multiples of 64 (GPU-friendly shapes)
    gradient_checkpointing=True,
    state_dir="Qwen2.5-7B-pruned.state",  # a crashed run resumes after its last finished step
)

print(result.summary())
print(result.perplexity_table())
for push in result.pushes:
    print(f"{push.branch}: {push.commit_url}")
