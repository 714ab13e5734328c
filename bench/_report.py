"""Rendering results as docs/benchmarks.md (and a short summary for the terminal).

The hand-written analysis between the ANALYSIS markers of an existing docs/benchmarks.md
is carried over into the regenerated file, so rerunning the benchmarks refreshes the
figures without losing it (re-read it against the new figures, though).
"""

from __future__ import annotations

from typing import Any

BEGIN = "<!-- analysis:begin (kept by bench/run.py when it rewrites this file) -->"
END = "<!-- analysis:end -->"
OTHER_BEGIN = "<!-- other-benchmarks:begin (policy, measurement, core; kept by bench/run.py) -->"
OTHER_END = "<!-- other-benchmarks:end -->"
MIB = 1 << 20


def _x(ratio: float, target: float) -> str:
    """A ratio with enough digits not to look equal to its target."""
    text = f"{ratio:.2f}"
    return text if text != f"{target:.2f}" else f"{ratio:.3f}"


def verdict_higher(ratio: float, target: float) -> str:
    """For 'at least target x' targets (throughput)."""
    if ratio >= target:
        return f"**met** ({_x(ratio, target)}× ≥ {target:.2f}×)"
    need = (target / ratio - 1) * 100
    return f"**not met**: {_x(ratio, target)}× < {target:.2f}× (needs +{need:.1f}% throughput)"


def verdict_lower(ratio: float, target: float, own_s: float, peer_s: float) -> str:
    """For 'at most target x the peer's time' targets."""
    if ratio <= target:
        return f"**met** ({_x(ratio, target)}× ≤ {target:.2f}×)"
    goal = target * peer_s
    cut = (1 - goal / own_s) * 100
    return (
        f"**not met**: {_x(ratio, target)}× > {target:.2f}× (needs {own_s:.2f} s → ≤ {goal:.2f} s, "
        f"{cut:.0f}% less time)"
    )


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _rate(size: int, seconds: float) -> str:
    return f"{size / MIB / seconds:,.0f} MiB/s"


def summary_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(benchmark, imaguard, peer, ratio, target, met) rows of the headline table."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    h = res.get("hash")
    if h:
        size = h["file_size"]
        c = h["commands"]
        peer = h["fastest_peer"]
        ig = c["imaguard"]
        rows.append(
            (
                f"sha256 of a {size / MIB:,.0f} MiB file, whole CLI process "
                f"(median of {h['reps']})",
                f"{_rate(size, ig['median_wall_s'])} ({ig['median_wall_s']:.3f} s)",
                f"{peer}: {_rate(size, c[peer]['median_wall_s'])} "
                f"({c[peer]['median_wall_s']:.3f} s)",
                f"{_x(h['ratio'], h['target'])}× throughput",
                "≥ 0.90×",
                verdict_higher(h["ratio"], h["target"]),
            )
        )
        other = "sha256sum" if peer == "openssl" else "openssl"
        rows.append(
            (
                "  same, the other peer (for reference)",
                "",
                f"{other}: {_rate(size, c[other]['median_wall_s'])} "
                f"({c[other]['median_wall_s']:.3f} s)",
                f"{h['ratio_other']:.2f}× throughput",
                "—",
                "(no target)",
            )
        )
        rss_ok = h["rss_met"]
        rows.append(
            (
                "peak RSS of `imaguard hash -n` on that file",
                _mib(ig["max_rss_kib"]),
                f"{peer}: {_mib(c[peer]['max_rss_kib'])}",
                "—",
                "< 100 MB (95.4 MiB)",
                "**met**" if rss_ok else "**not met**",
            )
        )
        ip = h["inprocess"]
        rows.append(
            (
                "`imaguard.hash_file(FILE, 'sha256')` in-process (median)",
                f"{_rate(size, ip['hash_file_median_s'])} ({ip['hash_file_median_s']:.3f} s)",
                f"{peer}: {_rate(size, c[peer]['median_wall_s'])}",
                f"{ip['ratio']:.2f}× throughput",
                "(reported separately)",
                "(no target)",
            )
        )
    for _key, t in trees(res):
        rows += _tree_rows(t)
    return rows


TREES = (("tree", "tree"), ("tree_1k", "tree1k"))
"""(results key, --only name) of the tree benchmarks, in report order."""


def trees(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(key, res[key]) for key, _only in TREES if res.get(key)]


def _size(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def tree_label(t: dict[str, Any]) -> str:
    """'20,200 files (20,000 of 100 B – 8 KiB + 200 of 1 MiB)', '100,000 files of 1 KiB'."""
    s = t["spec"]
    small = (
        _size(s["small_min"])
        if s["small_min"] == s["small_max"]
        else f"{_size(s['small_min'])} – {_size(s['small_max'])}"
    )
    if not s["big_files"]:
        return f"{t['n_files']:,} files of {small}"
    return (
        f"{t['n_files']:,} files ({s['small_files']:,} of {small} + "
        f"{s['big_files']:,} of {_size(s['big_size'])})"
    )


def op_targets(b: dict[str, Any]) -> dict[str, float]:
    """The targets recorded with one tree operation (older results: wall time only)."""
    return b.get("targets") or {"ratio": b["target"]}


def _tree_rows(t: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str, str]] = []
    for op in ("sign", "verify"):
        b = t.get(op)
        if not b:
            continue
        targets = op_targets(b)
        ev, ig, j1 = (b[k] for k in ("evmctl", "imaguard", "imaguard_j1"))
        cpu_ratio = b.get("cpu_ratio", ig["median_cpu_s"] / ev["median_cpu_s"])
        metrics = (
            (
                "ratio",
                f"{op} {tree_label(t)}, `-r` (median of {t['reps']}), imaguard -j {t['jobs']}",
                b["ratio"],
                ig["median_wall_s"],
                ev["median_wall_s"],
                "time",
            ),
            (
                "cpu_ratio",
                f"  {op}, CPU time (user + sys, workers included)",
                cpu_ratio,
                ig["median_cpu_s"],
                ev["median_cpu_s"],
                "CPU",
            ),
            (
                "ratio_j1",
                f"  {op}, imaguard -j 1 (single core)",
                b["ratio_j1"],
                j1["median_wall_s"],
                ev["median_wall_s"],
                "time",
            ),
        )
        for key, label, ratio, own, peer, unit in metrics:
            target = targets.get(key)
            rows.append(
                (
                    label,
                    f"{own:.2f} s",
                    f"evmctl: {peer:.2f} s",
                    f"{ratio:.2f}× {unit}",
                    f"≤ {target:.2f}×" if target is not None else "—",
                    verdict_lower(ratio, target, own, peer)
                    if target is not None
                    else "(no target)",
                )
            )
    return rows


def _detail_table(title: str, cmds: dict[str, dict[str, Any]], size: int | None) -> list[str]:
    head = (
        "| command | median wall | min – max | median CPU (user+sys) | peak RSS "
        "| other load (median CPU-s) |"
    )
    sep = "|---|---:|---:|---:|---:|---:|"
    if size:
        head += " throughput |"
        sep += "---:|"
    out = [f"**{title}**", "", head, sep]
    for name, c in cmds.items():
        line = (
            f"| {name}: `{c['shown'].replace('|', chr(92) + '|')}` | {c['median_wall_s']:.3f} s | "
            f"{c['min_wall_s']:.3f} – {c['max_wall_s']:.3f} s | {c['median_cpu_s']:.3f} s | "
            f"{_mib(c['max_rss_kib'])} | {c['median_other_cpu_s']:.2f}"
            + (f" ({c['contended_kept']} contended)" if c.get("contended_kept") else "")
            + " |"
        )
        if size:
            line += f" {_rate(size, c['median_wall_s'])} |"
        out.append(line)
    out.append("")
    return out


def _tree_how(t: dict[str, Any], first: bool) -> list[str]:
    s = t["spec"]
    if s["small_min"] == s["small_max"]:
        sizes = f"{s['small_files']:,} files of {_size(s['small_min'])} (random content)"
    else:
        sizes = (
            f"{s['small_files']:,} files of {_size(s['small_min'])} – {_size(s['small_max'])} "
            "(uniform, random content)"
        )
    big = f", plus {s['big_files']} files of {_size(s['big_size'])}" if s["big_files"] else ""
    key = t.get("key", "tree")
    lines = [
        f"* **{key}**: {sizes} in {s['small_files'] // s['files_per_dir']:,} directories of "
        f"{s['files_per_dir']} (two levels){big}: {t['n_files']:,} files, "
        f"{t['bytes'] / MIB:,.0f} MiB, read once before timing (warm cache). "
        + (
            "RSA-2048 key from `imaguard keys generate` (one key for all trees). "
            if first
            else "The same key. "
        )
        + f"{t['reps']} repetitions; imaguard runs with its default worker count "
        f"(`-j {t['jobs']}` = all cores) and with `-j 1`; evmctl is single-threaded. "
        "Targets (imaguard / evmctl, at most): "
        + "; ".join(
            f"{op} "
            + ", ".join(f"{_TARGET_NAMES[k]} {v:.2f}×" for k, v in op_targets(t[op]).items())
            for op in ("sign", "verify")
            if t.get(op)
        )
        + "."
        + (
            " Paths are absolute: `evmctl ima_sign -r` changes directory while it walks, so "
            "a relative `--key` makes it sign **nothing and still exit 0**."
            if first
            else ""
        )
    ]
    if t.get("sign"):
        lines.append(
            f"* {key} sign: `imaguard sign --key KEY -a sha256 -r TREE` vs "
            "`evmctl ima_sign -r -a sha256 --key KEY TREE`. Before every timed run all "
            "`security.ima` xattrs are removed (not timed); after it, every file is checked "
            f"to carry one: {t['sign']['checks']['summary']}"
        )
    elif t.get("signed_untimed"):
        u = t["signed_untimed"]
        lines.append(
            f"* {key} sign: not timed (`bench/run.py --sign-1k` times it); the tree was "
            f"signed once by `imaguard sign --key KEY -a sha256 -r TREE` "
            f"({u['wall_s']:.2f} s) and every file checked to carry `security.ima`."
        )
    v = t["verify"]
    lines.append(
        f"* {key} verify: `imaguard verify --cert CERT.der -r TREE` vs "
        "`sh -c 'find TREE -type f -print0 | xargs -0 evmctl ima_verify --key CERT.der'` "
        "(evmctl's time includes the `find` walk, "
        f"{v['find_only']['median_wall_s']:.3f} s alone, as imaguard's includes its own "
        "walk; its CPU time is that of `sh`, `find`, `xargs` and every `evmctl`, as "
        f"imaguard's includes its workers'). {v['checks']['summary']}"
    )
    return lines


_TARGET_NAMES = {"ratio": "wall", "cpu_ratio": "CPU", "ratio_j1": "`-j 1` wall"}


def _source_line(src: dict[str, Any] | None) -> str:
    if not src:
        return "* imaguard source: unknown"
    dirty = src["src_changes_uncommitted"]
    return (
        f"* imaguard source measured: git `{src['git_head']}`"
        + (f" with {dirty} uncommitted change(s) under `src/`" if dirty else ", `src/` clean")
        + f"; content hash of `src/imaguard/**/*.py` `{src['src_sha256']}`"
    )


def render(res: dict[str, Any], analysis: str, other: str = "") -> str:
    m = res["machine"]
    tools = m["tools"]
    lines = [
        "# imaguard benchmarks",
        "",
        f"Measured on **{res['date']}** by `make bench` (`bench/run.py`; raw figures in "
        f"`bench/out/results-{res['timestamp']}.json`, which is not committed). "
        "Every ratio compares imaguard with a peer measured **in the same run**, on the same "
        "data, alternating the commands within each repetition. What each benchmark does "
        "is described in `bench/README.md`.",
        "",
        "## Figures",
        "",
        "| benchmark | imaguard | peer | ratio | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in summary_rows(res):
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "### Details", ""]
    h = res.get("hash")
    if h:
        lines += _detail_table(f"hash, {h['reps']} repetitions", h["commands"], h["file_size"])
        st = h["startup_empty_file"]
        ip = h["inprocess"]
        lines += [
            f"* imaguard startup (`imaguard hash -n` of an empty file): median "
            f"{st['median_wall_s'] * 1000:.0f} ms wall, {st['median_cpu_s'] * 1000:.0f} ms CPU, "
            f"{_mib(st['max_rss_kib'])}.",
            f"* in-process: `imaguard.hash_file` median {ip['hash_file_median_s']:.3f} s; a plain "
            f"hashlib loop (1 MiB `readinto`, the Python + OpenSSL ceiling) "
            f"{ip['hashlib_median_s']:.3f} s; `import imaguard` {ip['import_s'] * 1000:.0f} ms; "
            f"that process peaked at {_mib(ip['process_max_rss_kib'])}.",
        ]
        lines.append(
            f"* peak RSS is measured with {h['rss_method']}; its floor (the same measurement "
            f"of `true`) is {_mib(h['rss_floor_kib'])}."
        )
        lines.append("")
    for _key, t in trees(res):
        for op in ("sign", "verify"):
            if not t.get(op):
                continue
            cmds = {k: t[op][k] for k in ("imaguard", "imaguard_j1", "evmctl")}
            lines += _detail_table(f"{op}, {tree_label(t)}, {t['reps']} repetitions", cmds, None)
    lines += ["## Machine", ""]
    lines += [
        f"* CPU: {m['cpu_model']}, `nproc` = {m['nproc']}"
        + (" (a virtual machine: the `hypervisor` CPU flag is set)" if m["hypervisor"] else "")
        + (", SHA extensions (`sha_ni`) present" if m["sha_ni"] else ""),
        f"* memory: {m['mem_total_gib']} GiB; kernel `{m['kernel']}`",
        f"* data directory `{m['data_dir']}` on {' '.join(m['data_fs'].split())}",
        f"* imaguard {tools['imaguard']}, Python {tools['python']} "
        f"(hashlib: {tools['python_hashlib_openssl']}), cryptography {tools['cryptography']}",
        f"* peers: {tools['evmctl']}; {tools['openssl']}; {tools['sha256sum']}",
        _source_line(res.get("source")),
        "",
        "## How measured",
        "",
        "* Each command is a fresh process started with `posix_spawn` and reaped with `wait4`: "
        "wall time is `perf_counter` around the two (including about 1 ms for the "
        "`/usr/bin/time` wrapper, the same for every command), CPU time (user + sys, workers "
        "included) comes from `wait4`, and peak RSS from `/usr/bin/time -f %M` (the largest "
        "single process in the command's tree: for imaguard with workers, the largest of "
        "parent and workers; `wait4` in the benchmark process itself would report at least "
        "the benchmark's own RSS, see `bench/_measure.py`). Output goes to `/dev/null` "
        "(or a scratch file that is parsed), never a terminal, so imaguard draws no "
        "progress bar. The reported figure is the **median** of the repetitions; the order "
        "of the commands rotates from one repetition to the next.",
    ]
    ct = res.get("contention")
    if ct:
        share = ct["other_cpu_s"] / ct["measured_wall_s"] if ct["measured_wall_s"] else 0.0
        lines.append(
            "* **Other load.** The machine may be shared (it was: other sessions ran test "
            "suites on it). Before each timed command the benchmark waits until the rest of "
            f"the machine uses less than {ct['quiet_threshold_cpu']:.0%} of one CPU; during "
            "the command it records the CPU time the *rest* of the machine used (`/proc/stat` "
            "busy time minus the command's own: last column of the detail tables), and a "
            f"sample during which that exceeded {ct['contended_threshold_cpu']:.0%} of one CPU "
            "is discarded and taken again. Waiting and retaking share a budget of "
            f"{ct['slack_s']:.0f} s. This run waited {ct['waited_s']:.0f} s, retook "
            f"{ct['retaken']} sample(s) and kept **{ct['contended_kept']} contended "
            f"sample(s)** (budget left: {ct['slack_left_s']:.0f} s); over all kept samples "
            f"other processes used {ct['other_cpu_s']:.1f} CPU-s during "
            f"{ct['measured_wall_s']:.1f} s of measurement ({share:.0%} of one CPU; hypervisor "
            f"steal {ct['steal_s']:.1f} s). Other load inflates wall times, not CPU times."
        )
    h = res.get("hash")
    if h:
        lines.append(
            f"* **hash**: one file of {h['file_size'] / MIB:,.0f} MiB of random data on the "
            "disk. Nothing is dropped from the page cache; the file is read once before "
            f"timing (warm-up: {h['warmup_s']:.2f} s), so every tool reads it from a warm "
            f"cache. {h['reps']} repetitions of `imaguard hash -n -a sha256 FILE`, "
            "`sha256sum FILE` and `openssl dgst -sha256 FILE`; all three printed the same "
            "digest in every repetition (checked). Throughput = file size / median wall time "
            "of the whole process, startup included. The in-process figure runs "
            "`imaguard.hash_file(FILE, 'sha256')` "
            f"{h['reps']} times in one fresh Python process (import not timed)."
        )
    bc = res.get("bytecode")
    if bc:
        lines.append(
            "* **Bytecode.** imaguard is installed editable from `src/`. Before timing, "
            f"`{bc['compileall']}` compiled its {bc['modules_with_bytecode']} modules once, "
            "and every command ran without `PYTHONDONTWRITEBYTECODE`"
            + (
                " (set in the shell the benchmark was started from)"
                if bc["pythondontwritebytecode_was_set"]
                else ""
            )
            + ", so imaguard loads cached bytecode as an installed program does instead of "
            "compiling its modules from source in every process (10–20 ms each)."
        )
    first = True
    for _key, t in trees(res):
        lines += _tree_how(t, first)
        first = False
    lines += [
        "",
        "## Analysis",
        "",
        BEGIN,
        analysis.strip() if analysis.strip() else "(no analysis written yet)",
        END,
        "",
        "## Policy engine, measurement log and integrity core",
        "",
        OTHER_BEGIN,
        other.strip() if other.strip() else "(not recorded yet)",
        OTHER_END,
        "",
        "## Rerun",
        "",
        "```sh",
        "make bench          # runs bench/run.py (5-10 min; rewrites this file), then the",
        "                    # policy/measure/core benchmarks (bench_*.py, JSON only)",
        ".venv/bin/python bench/run.py --profile     # the same + importtime/cProfile output",
        ".venv/bin/python bench/run.py --quick       # smoke run on small data; file untouched",
        ".venv/bin/python bench/run.py --only hash   # or --only tree / tree1k; JSON only",
        ".venv/bin/python bench/run.py --render bench/out/results-<stamp>.json  # rewrite",
        "                    # this file from a JSON result, keeping the analysis",
        "```",
        "",
    ]
    return "\n".join(lines)


def existing_analysis(path: str) -> str:
    return _block(path, BEGIN, END)


def existing_other(path: str) -> str:
    return _block(path, OTHER_BEGIN, OTHER_END)


def _block(path: str, begin: str, end: str) -> str:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    if begin in text and end in text:
        return text.split(begin, 1)[1].split(end, 1)[0]
    return ""
