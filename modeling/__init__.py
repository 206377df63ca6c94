"""The pruned-model format, installed as ``hf_prune.modeling``.

The two sibling files are also copied, unchanged, into every saved checkpoint (remote code), so they import
only torch, transformers and each other. This ``__init__`` is not copied.
"""
