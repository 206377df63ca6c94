"""The pruned-model format, installed as ``hf_prune.modeling``.

The sibling files are also copied, unchanged, into every saved checkpoint (remote code), so they import
only torch, transformers and each other (the qwen3 files build on the qwen2 ones). This ``__init__`` is not copied.
"""
