"""Load a pruned checkpoint (Hub repo + branch, or local folder) and serve it with `pipeline` / `generate`.

    python examples/serve_pruned.py hf-prune-demo/sparsity-20 --prompt "What is a computer?"
    python examples/serve_pruned.py your-name/Qwen2.5-7B-pruned --revision sparsity-30
    python examples/serve_pruned.py hf-prune-demo/sparsity-20 --port 8000   # then:
    curl -s localhost:8000 -d '{"prompt": "What is a computer?", "max_new_tokens": 40}'
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

import hf_prune  # noqa: F401  (registers the pruned model type; without it, pass trust_remote_code=True)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model", help="pruned model folder or Hub repo id")
parser.add_argument("--revision", default=None, help="branch (e.g. sparsity-30) or, better, a commit sha")
parser.add_argument("--prompt", default="What is a computer?")
parser.add_argument("--max-new-tokens", type=int, default=40)
parser.add_argument("--port", type=int, default=None, help="serve JSON POST requests on this port")
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
model = AutoModelForCausalLM.from_pretrained(args.model, revision=args.revision, dtype="auto").to(device).eval()
print(f"{type(model).__name__}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters on {device}")
generator = pipeline("text-generation", model=model, tokenizer=tokenizer)


def answer(prompt: str, max_new_tokens: int) -> str:
    if tokenizer.chat_template:  # instruct models: the pipeline applies the chat template to messages
        out = generator([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens, do_sample=False)
        return out[0]["generated_text"][-1]["content"]
    return generator(prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False)[0]["generated_text"]


# 1. the pipeline
print("pipeline:", answer(args.prompt, args.max_new_tokens))

# 2. generate() directly, with the KV cache (pruned layers have fewer KV heads: a smaller cache)
if tokenizer.chat_template:
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True).to(device)
else:
    inputs = tokenizer(args.prompt, return_tensors="pt").to(device)
with torch.no_grad():
    ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
print("generate:", tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

# 3. a minimal JSON endpoint (one request at a time; use TGI/vLLM-style servers for production)
if args.port:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            text = answer(str(body.get("prompt", "")), int(body.get("max_new_tokens", args.max_new_tokens)))
            data = json.dumps({"generated_text": text}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    print(f"serving on http://127.0.0.1:{args.port}")
    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
