"""The documentation is tested like code.

- The reference pages in docs/reference/ equal what ``scripts/gen_reference.py`` generates from ``PruneConfig``,
  ``RecoveryConfig`` and the command line's parser.
- Every ```python block of the README and docs/ runs, page by page in one namespace (as a reader would run them
  one after another), in a folder where ``models/qwen2.5-0.5b`` is a tiny random Qwen2 with a small trained
  tokenizer, ``models/smollm2-135m`` a tiny random Llama, and ``data/`` holds generated text. A block preceded by
  ``<!-- skip-test: reason -->`` is not run (it needs the Hub or a GPU); a block preceded by
  ``<!-- test-file: PATH -->`` is written to PATH first (a YAML mix file the page shows, for example).
- Every ``hf-prune`` command in a ```bash block parses with the command line's own parser (``prune`` commands
  also build their PruneConfig, so a bad value fails); ``python benchmarks/X.py`` commands name an existing
  script and only options that script defines; ``python -m`` modules and ``bash scripts/...`` files exist.
- The README's headline table holds the numbers of the committed benchmark JSON.
- Relative links between the pages point at files (and headings) that exist; no machine paths.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import random
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, tiny_qwen2

PAGES = [REPO_ROOT / "README.md", REPO_ROOT / "CHANGELOG.md", REPO_ROOT / "benchmarks" / "README.md",
         *sorted((REPO_ROOT / "docs").rglob("*.md"))]
REGENERATE = "python scripts/gen_reference.py"

_BLOCK = re.compile(r"(?:<!--\s*(?P<marker>[\w-]+)(?::\s*(?P<arg>[^>]*?))?\s*-->\s*\n)?^```(?P<lang>\w*)\n"
                    r"(?P<code>.*?)^```\s*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str | None
    arg: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO_ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    return [Block(page, text.count("\n", 0, m.start("code")), m["lang"], m["code"], m["marker"], m["arg"])
            for m in _BLOCK.finditer(text)]


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO_ROOT))


# ---- generated reference pages ---------------------------------------------------------------------------
def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO_ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_pages_are_generated_from_the_code():
    pages = _generator().render()
    assert {p.name for p in pages} == {"prune-config.md", "recovery-config.md", "cli.md"}
    for path, text in pages.items():
        assert path.is_file() and path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(REPO_ROOT)} is out of date: run `{REGENERATE}`")


def test_reference_tables_are_the_dataclasses():
    from hf_prune import PruneConfig, RecoveryConfig

    reference = REPO_ROOT / "docs" / "reference"
    assert PruneConfig.reference() in (reference / "prune-config.md").read_text(encoding="utf-8"), REGENERATE
    assert RecoveryConfig.reference() in (reference / "recovery-config.md").read_text(encoding="utf-8"), REGENERATE
    cli = (reference / "cli.md").read_text(encoding="utf-8")
    for option in ("`--sparsity LIST`", "`--recovery-tokens TOKENS`", "`--format {", "`--tasks PATH_OR_NAME"):
        assert option in cli, option


# ---- the python blocks run -------------------------------------------------------------------------------
WORDS = {
    "code": "def return import class self if else for while yield lambda print list dict value index key item "
            "range len none true false".split(),
    "web": "the news city market people today world price weather game team music school water light house "
           "river street night".split(),
}


def _texts(domain: str, seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS[domain]) for _ in range(rng.randint(40, 120))) for _ in range(n)]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """What the documentation's examples read: two tiny models with a trained tokenizer, text and a task file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("docs_workspace")
    for domain in WORDS:
        _write_jsonl(root / "data" / f"{domain}.jsonl", [{"text": t} for t in _texts(domain, 1, 400)])
        _write_jsonl(root / "data" / f"{domain}_eval.jsonl", [{"text": t} for t in _texts(domain, 2, 8)])
    rng = random.Random(3)
    _write_jsonl(root / "tasks" / "code.jsonl", [
        {"prompt": " ".join(rng.choices(WORDS["code"], k=8)), "choices": [" ".join(rng.choices(WORDS["code"], k=3))
                                                                          for _ in range(4)], "answer": i % 4}
        for i in range(12)])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts("code", 0, 50) + _texts("web", 0, 50), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    # Room above the tokenizer's ids, as real checkpoints have (AutoTokenizer may add special tokens).
    ids = {"vocab_size": len(tokenizer) + 20, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    tiny_qwen2(**ids).save_pretrained(root / "models" / "qwen2.5-0.5b")
    llama = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **ids)
    LlamaForCausalLM(llama).save_pretrained(root / "models" / "smollm2-135m")
    for name in ("qwen2.5-0.5b", "smollm2-135m"):
        tokenizer.save_pretrained(root / "models" / name)
    return root


def _python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang == "python" and b.marker != "skip-test" for b in blocks(p))]


@pytest.mark.parametrize("page", _python_pages(), ids=_rel)
def test_python_blocks_run(page, workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for entry in workspace.iterdir():
        (tmp_path / entry.name).symlink_to(entry, target_is_directory=True)
    page_blocks = blocks(page)
    for block in page_blocks:
        if block.marker == "test-file":
            Path(block.arg).write_text(block.code + "\n", encoding="utf-8")
    namespace: dict = {"__name__": "__docs__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the models are tiny: on a busy machine, waking a second thread costs more than it gains
    try:
        for block in page_blocks:
            if block.lang != "python" or block.marker == "skip-test":
                continue
            code = compile(block.code, block.where, "exec")  # tracebacks name the page and line
            with contextlib.redirect_stdout(io.StringIO()):
                exec(code, namespace)
    finally:
        torch.set_num_threads(threads)


def test_skipped_blocks_say_why():
    for page in PAGES:
        for block in blocks(page):
            if block.marker == "skip-test":
                assert block.arg and block.arg.strip(), f"{block.where}: skip-test needs a reason"
            elif block.marker is not None:
                assert block.marker == "test-file" and block.arg, f"{block.where}: unknown marker {block.marker!r}"


# ---- the commands parse ----------------------------------------------------------------------------------
_CONTROL = {"&&", "||", ";", "|"}


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block (continuations joined, comments dropped, chains split)."""
    out: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token in _CONTROL:
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    stripped = []
    for command in out:
        while command and re.match(r"^\w+=", command[0]):  # leading VAR=value assignments
            command = command[1:]
        if command:
            stripped.append(command)
    return stripped


def hf_prune_argv(command: list[str]) -> list[str] | None:
    """The arguments of an ``hf-prune`` invocation (any of its spellings), or None for another program."""
    program = Path(command[0]).name
    if program == "hf-prune":
        return command[1:]
    if program == "optimum-cli" and command[1:2] == ["prune"]:
        return command[1:]
    if "-m" in command and program in ("python", "python3", "torchrun"):
        i = command.index("-m")
        if command[i + 1:i + 2] == ["hf_prune"]:
            return command[i + 2:]
    return None


def _check_hf_prune(argv: list[str], where: str) -> None:
    from hf_prune.cli import build_parser, config_from_args

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            args = build_parser().parse_args(argv)
    except SystemExit as exit:
        assert exit.code == 0, f"{where}: `hf-prune {shlex.join(argv)}` does not parse: {err.getvalue()[-500:]}"
        return
    if args.command == "prune":
        config_from_args(args)


def _check_script(command: list[str], where: str) -> None:
    program = Path(command[0]).name
    if program in ("python", "python3") and command[1:2] == ["-m"]:
        if command[2].startswith("hf_prune"):
            assert importlib.util.find_spec(command[2]) is not None, f"{where}: no module {command[2]}"
        return
    script = next((t for t in command[1:] if t.endswith((".py", ".sh"))), None)
    if program not in ("python", "python3", "bash") or script is None or script.startswith("-"):
        return
    path = REPO_ROOT / script
    assert path.is_file(), f"{where}: {script} does not exist"
    if path.suffix == ".py":
        source = path.read_text(encoding="utf-8")
        for module in re.findall(r"^from (\w+) import", source, flags=re.M):  # options shared between scripts
            if (path.parent / f"{module}.py").is_file():
                source += (path.parent / f"{module}.py").read_text(encoding="utf-8")
        for option in (t.split("=")[0] for t in command if t.startswith("--")):
            assert f'"{option}"' in source, f"{where}: {script} has no option {option}"


def test_shell_commands_parse():
    checked = 0
    for page in PAGES:
        for block in blocks(page):
            if block.lang not in ("bash", "sh") or block.marker == "skip-test":
                continue
            for command in commands(block.code):
                argv = hf_prune_argv(command)
                if argv is not None:
                    _check_hf_prune(argv, block.where)
                    checked += 1
                else:
                    _check_script(command, block.where)
    assert checked > 20  # the parser is actually exercised


def test_the_command_check_catches_a_bad_option():
    with pytest.raises(AssertionError, match="does not parse"):
        _check_hf_prune(["prune", "m", "--no-such-option"], "here")
    with pytest.raises(Exception, match="sparsit"):
        _check_hf_prune(["prune", "m", "--sparsity", "1.5"], "here")
    assert commands("A=1 hf-prune prune m \\\n  --steps 2  # note\nbash x.sh && hf-prune demo") == [
        ["hf-prune", "prune", "m", "--steps", "2"], ["bash", "x.sh"], ["hf-prune", "demo"]]


# ---- numbers and links -----------------------------------------------------------------------------------
def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]


def test_readme_headline_numbers_are_the_benchmark_json():
    results = REPO_ROOT / "benchmarks" / "results"
    quality = json.loads((results / "quality_qwen.json").read_text())
    peer = json.loads((results / "peer_torch_pruning_qwen.json").read_text())
    levels = ("0.2", "0.3", "0.5")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    dense = f"{quality['dense']['mean']:.2f}"
    assert _row(readme, "| **gisp**") == [dense, *(f"{quality['methods']['gisp']['levels'][s]['mean']:.2f}"
                                                   for s in levels)]
    assert _row(readme, "| torch-pruning") == [dense, *(f"{peer['levels'][s]['mean']:.2f}" for s in levels)]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-"))
    return out


def test_links_between_pages_resolve():
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{_rel(page)}: broken link {target}"
            if anchor and resolved.suffix == ".md":
                assert anchor in _anchors(resolved), f"{_rel(page)}: no heading #{anchor} in {path or 'this page'}"


def test_no_machine_paths_or_work_notes():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for pattern in (r"\.\./shared", r"/work/", r"/home/", r"\b[Ii]ssue #?\d+", r"2-core machine"):
            assert not re.search(pattern, text), f"{_rel(page)}: {pattern!r}"
