"""The Markdown tables of a GPU benchmark's ``results.json`` (``gpu_bench.py`` writes them beside it)."""

from __future__ import annotations

GiB = 2**30


def _gib(n) -> str:
    return f"{n / GiB:.1f} GiB" if isinstance(n, (int, float)) else str(n)


def _memory(row: dict) -> str:
    if "process_bytes" not in row:
        return f"planned {_gib(row['planned_bytes'])}, measured: {row.get('measured', 'no')}"
    return (f"planned {_gib(row['planned_bytes'])}, measured {_gib(row['process_bytes'])} (tensors "
            f"{_gib(row['allocated_bytes'])}); plan / measured = {row['plan_over_process']:.2f}")


def _scoring(sec: dict) -> list[str]:
    lines = []
    for key, label in (("round_1", "round 1 (dense)"), ("later_round", "a later round (sliced copy, dense kept)")):
        if key in sec:
            r = sec[key]
            lines.append(f"- scoring {label}: {r['seconds']:.1f} s, {r['tokens_per_second']:,.0f} tokens/s; "
                         f"{_memory(r)}")
    return lines


def _prefill(sec: dict) -> list[str]:
    rows = {k: v for k, v in sec.items() if isinstance(v, dict) and "settings" in v}
    if not rows:
        return []
    keys = list(next(iter(rows.values()))["settings"])
    lines = ["| plan | removed | " + " | ".join(f"{k}: speed-up / FLOP limit (% of it)" for k in keys) + " |",
             "|---|---:|" + "---:|" * len(keys)]
    for name, row in rows.items():
        cells = [f"{c['speedup']:.2f} / {c['flop_ratio']:.2f} ({100 * c['fraction_of_limit']:.0f}%)"
                 for c in row["settings"].values()]
        lines.append(f"| {name} | {100 * row['removed']:.1f}% | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))["settings"]
    lines.append("")
    lines.append("dense prefill: " + ", ".join(f"{k} {v['dense_tok_s']:,.0f} tok/s" for k, v in first.items()))
    if sec.get("skipped"):
        lines.append(f"not measured (time budget): {', '.join(sec['skipped'])}")
    return lines


def _decode(sec: dict) -> list[str]:
    if not sec.get("batches"):
        return []
    lines = [f"{sec['cache']} cache, prompt {sec['prompt']}, {sec['new_tokens']} new tokens, kept widths multiple of "
             f"{sec['multiple']}:", "", "| batch | model | tok/s | speed-up | FLOP ratio | weight-bytes ratio |",
             "|---|---|---:|---:|---:|---:|"]
    for batch, rows in sec["batches"].items():
        for name, r in rows.items():
            extra = (f"{r['speedup']:.2f} | {r['flop_ratio']:.2f} | {r['weight_bytes_ratio']:.2f}" if "speedup" in r
                     else " | | ")
            lines.append(f"| {batch} | {name} | {r['tok_s']:,.0f} | {extra} |")
    return lines


def _others(sections: dict) -> list[str]:
    lines = []
    comp = sections.get("compensation")
    if comp and "seconds" in comp:
        lines.append(f"- compensation of the {comp['level']:.0%} level ({comp['windows']} windows): "
                     f"{comp['seconds']:.1f} s; {_memory(comp)}")
    rec = sections.get("recovery")
    if rec and "tokens_per_second" in rec:
        lines.append(f"- recovery at {rec['level']:.0%}, batch {rec['batch']}, full-parameter: student tok/s " +
                     ", ".join(f"{k} {v:,.0f}" for k, v in rec["tokens_per_second"].items()) +
                     (f" (peak {_gib(rec['peak_allocated_bytes'])})" if "peak_allocated_bytes" in rec else ""))
    big = sections.get("large")
    if big and "scoring" in big:
        score = big["scoring"]
        lines.append(f"- {big['shape']} scoring round 1: " + (f"{score['seconds']:.1f} s; {_memory(score)}"
                                                              if isinstance(score, dict) else score))
    comp = {k: v for k, v in sections.get("compiled_decode", {}).items() if isinstance(v, dict)}
    if comp:
        speedup = sections["compiled_decode"].get("speedup")
        lines.append("- compiled batch-1 decode (static cache, torch.compile): " + ", ".join(
            f"{k} {v['tok_s']:,.0f} tok/s (first generate {v['first_generate_seconds']:.0f} s)" for k, v in comp.items())
            + (f"; speed-up {speedup:.2f}" if speedup else "; the pruned model not measured (time budget)"))
    return lines


def markdown(results: dict) -> str:
    env, sections = results["environment"], results["sections"]
    device = env.get("gpu", "CPU (smoke test: the numbers mean nothing)")
    lines = [f"Device: {device}; torch {env.get('torch')}, transformers {env.get('transformers')}; "
             f"{results['settings']['shape']} shapes, random {results['settings']['dtype']} weights; "
             f"{results.get('wall_s', 0):.0f} s", ""]
    lines += _scoring(sections.get("scoring", {})) + _others(sections)
    if sections.get("prefill"):
        lines += ["", "Prefill (SDPA), pruned vs dense, interleaved rounds:", ""] + _prefill(sections["prefill"])
    if sections.get("decode"):
        lines += ["", "Decode:", ""] + _decode(sections["decode"])
    if sections.get("large", {}).get("prefill"):
        lines += ["", f"Prefill, {sections['large']['shape']}:", ""] + _prefill(sections["large"]["prefill"])
    for kind in ("skipped", "errors"):
        for name, why in results.get(kind, {}).items():
            lines.append(f"- {kind[:-1] if kind == 'errors' else 'skipped'} {name}: {why}")
    return "\n".join(lines)
