"""How numbers and summary entries read in notes, tables and plots. Pure Python."""

import math

from sae_harness.evals.registry import REFERENCE
from sae_harness.run.schema import METRICS


def fmt(value):
    """A number as it appears in notes and tables: 4 significant digits, ints plain, n/a for none/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e9):
        return str(int(value))
    return f"{value:.4g}"


def decimals_for(interval: dict, figures: int = 2) -> int:
    """Decimals that show an interval's half-width to `figures` significant figures (at least 1)."""
    half = abs(interval["hi"] - interval["lo"]) / 2 if interval.get("lo") is not None else abs(interval["delta"])
    if not half or not math.isfinite(half):
        return 3
    return max(1, figures - 1 - math.floor(math.log10(half)))


def fmt_interval(interval: dict | None) -> str:
    """ "-0.013 [-0.024, -0.001]": a difference and its 95% interval, every number to the decimals
    that give the half-width two significant figures (full precision stays in the JSON)."""
    if not interval:
        return "n/a"
    d = decimals_for(interval)
    if interval.get("lo") is None:
        return f"{interval['delta']:+.{d}f} (no interval)"
    return f"{interval['delta']:+.{d}f} [{interval['lo']:+.{d}f}, {interval['hi']:+.{d}f}]"


def fmt_contrast(c: dict | None) -> str:
    """fmt_interval, then the Holm p where the contrast is one of a family and "within noise" where
    its interval holds 0: "-0.026 [-0.036, -0.016], Holm p 0.0075"."""
    if not c or c.get("lo") is None:
        return fmt_interval(c)
    holm = f", Holm p {fmt_p(c['p_holm'])}" if c.get("p_holm") is not None else ""
    return fmt_interval(c) + holm + (" within noise" if c.get("within_noise") else "")


def fmt_p(p) -> str:
    """A p-value to two significant figures; n/a for none."""
    return "n/a" if p is None else f"{p:.2g}"


def spread_of(entry):
    """The noise an ok summary entry carries: (std, "std") over several seeds; for one seed (se,
    "se"), the eval's own standard error, or (None, "se") where it reports none."""
    if (entry.get("n") or 1) < 2 or entry.get("std") is None:
        return entry.get("se"), "se"
    return entry["std"], "std"


def fmt_spread(entry):
    """ "mean ± std (std over seeds, n=N; eval SE s)" of a summary entry; for one seed
    "value ± se (eval SE, n=1)", the eval's own standard error."""
    if entry.get("status") != "ok" or entry.get("value") is None:
        return entry.get("status") or "missing"
    spread, kind = spread_of(entry)
    se = entry.get("se")
    if kind == "se":
        return f"{fmt(entry['value'])} ± {fmt(se)} (eval SE, n=1)" if se is not None else f"{fmt(entry['value'])} (n=1)"
    eval_se = f"; eval SE {fmt(se)}" if se is not None else ""
    return f"{fmt(entry['value'])} ± {fmt(spread)} (std over seeds, n={entry['n']}{eval_se})"


def fmt_delta(cmp, kind: str = "Welch"):
    """ "Δ +0.01 [95% Welch CI -0.02, 0.04], within noise" for a welch_interval result (kind
    "paired" for a paired_interval one)."""
    if cmp is None:
        return "Δ n/a"
    text = f"Δ {cmp['delta']:+.4g}"
    if cmp["lo"] is None:
        return text + " (no interval: one seed on a side)"
    text += f" [{cmp['level']:.0%} {kind} CI {cmp['lo']:+.4g}, {cmp['hi']:+.4g}]"
    return text + (", within noise" if cmp["within_noise"] else "")


def results_markdown(result: dict) -> str:
    """The Markdown table of a sweep's results/<name>.json: a row per metric (with its direction), a
        column per arm, each cell mean ± std (n); in every arm but the baseline also Δ vs the baseline
        with its 95% Welch interval, and "within noise" where that interval includes 0, then where the
        sweep paired its arms by seed the paired 95% interval and the Holm-adjusted p (no Δ for
        reference metrics; no row for a metric no arm has). A sweep over worlds shows mean ± std only
        there (its comparisons are the worlds table's, over world means). Where the sweep compared its
    arms with others too (--against), the same table follows read against each. The README's
        Results tables are this function's output (a test holds them to results/*.json)."""
    arms = result["arms"]
    per_world = bool(result.get("over_worlds"))
    names = list(arms)
    lines = ["| metric (direction) | " + " | ".join(f"`{name}`" for name in names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in METRICS:
        if not any((arms[name]["summary"].get(metric.name) or {}).get("status") == "ok" for name in names):
            continue  # skipped or missing everywhere (unlearning on the embedded profile)
        cells = []
        for name in names:
            entry = arms[name]["summary"].get(metric.name) or {}
            if entry.get("status") != "ok" or entry.get("value") is None:
                cells.append(entry.get("status") or "missing")
                continue
            cell = f"{fmt(entry['value'])} ± {fmt(entry.get('std'))} (n={entry.get('n')})"
            if per_world:
                cells.append(cell)
                continue
            cmp = (arms[name].get("vs_baseline") or {}).get(metric.name)
            if cmp is not None and metric.direction != REFERENCE:
                interval = f" [{fmt(cmp['lo'])}, {fmt(cmp['hi'])}]" if cmp.get("lo") is not None else ""
                cell += f"; Δ {cmp['delta']:+.3g}{interval}" + (" within noise" if cmp.get("within_noise") else "")
            paired = (arms[name].get("paired_vs_baseline") or {}).get(metric.name)
            if paired is not None and paired.get("lo") is not None and metric.direction != REFERENCE:
                holm = f", Holm p {paired['p_holm']:.2g}" if paired.get("p_holm") is not None else ""
                cell += f"; paired [{fmt(paired['lo'])}, {fmt(paired['hi'])}]{holm}" + (" within noise" if paired["within_noise"] else "")
            cells.append(cell)
        lines.append(f"| {metric.name} ({metric.direction}) | " + " | ".join(cells) + " |")
    for a, compared in (result.get("against") or {}).items():  # the same table, read against another arm
        arms_vs = {a: dict(summary=arms[a]["summary"])} | {name: dict(summary=arms[name]["summary"]) | compared[name] for name in compared}
        table = results_markdown(dict(arms=arms_vs, baseline=a))
        lines += ["", f"Each arm against `{a}`: Δ and the paired interval are arm minus `{a}`.", "", table]
    return "\n".join(lines + worlds_markdown(result))


def worlds_markdown(result: dict) -> list[str]:
    """The lines of the worlds table, where a sweep ran over several worlds (its over_worlds): a row
    per metric, a column per arm, each cell the difference from plain TopK with its 95% interval
    over worlds, the worlds x seeds behind it, the spread between and within worlds, Holm's p."""
    over = result.get("over_worlds") or {}
    if not over:
        return []
    names = list(over)
    lines = [
        "",
        "Against plain TopK (and each schedule contrast, `A - B`) with worlds as the random factor (interval over world means):",
        "",
    ]
    lines += ["| metric (direction) | " + " | ".join(f"`{name}`" for name in names) + " |", "|---" * (len(names) + 1) + "|"]
    for metric in METRICS:
        if metric.direction == REFERENCE or not any(metric.name in over[name] for name in names):
            continue
        cells = []
        for name in names:
            c = over[name].get(metric.name)
            if c is None:
                cells.append("missing")
                continue
            interval = f" [{fmt(c['lo'])}, {fmt(c['hi'])}]" if c.get("lo") is not None else ""
            spread = f"; sd between {fmt(c['between_world_sd'])}, within {fmt(c['within_world_sd'])}"
            holm = f", Holm p {c['p_holm']:.2g}" if c.get("p_holm") is not None else ""
            seeds = "/".join(str(n) for n in c["seeds"])
            cells.append(
                f"Δ {c['delta']:+.3g}{interval} ({c['n_worlds']} worlds x {seeds} seeds{spread}){holm}"
                + (" within noise" if c.get("within_noise") else "")
            )
        lines.append(f"| {metric.name} ({metric.direction}) | " + " | ".join(cells) + " |")
    return lines
