#!/usr/bin/env python3
"""code_stats.py - measure the source layout of a Rust crate (Python 3.8+, no dependencies).

Usage: python3 code_stats.py SRC_DIR [--depth 2] [--with-tests]

Each .rs file is first "cleaned": the contents of comments (// and nested /* */),
strings ("..", b"..", r#".."#, br"..") and char literals ('{', b'"', '\\'; not
lifetimes like 'a) are blanked, keeping newlines, so braces, `fn`, `pub` and
paths are only seen in code. Test code = files named tests.rs or under a tests/
folder, plus every item after #[cfg(test)] (e.g. `mod tests {..}`, `mod tests;`),
from the attribute to the item's closing brace or semicolon.

Prints:
 1. files: number of .rs files, total lines, the longest, files over 600 / 500 lines.
 2. functions: every `fn NAME` with a body (free, methods, nested, tests); its
    length = lines from the `fn` keyword to its closing brace, inclusive.
    Count, median, p90 (nearest rank: the ceil(0.9 n)-th smallest) and the 15
    longest, once for all code and once excluding test code.
 3. module graph: a file's unit is its first path component (swarm.rs and
    swarm/x.rs -> `swarm`; lib.rs, main.rs left out); with --depth 2, files in a
    directory get two (content/store.rs -> `content::store`). Paths in `use`
    trees (brace groups expanded) and inline paths are resolved through crate::,
    super:: / self:: (the file's module plus enclosing inline `mod x {}`) and
    child modules declared by `mod x;`. Edge A -> B: code of A names a path in
    unit B. Test code is skipped unless --with-tests. Prints the edges, strongly
    connected components of size > 1, the 2-cycles, and the units in cycles.
 4. visibility, outside test code: `pub fn` (with async/const/unsafe), pub(crate),
    pub(super), pub(in ..), and bare `pub` items by kind.
"""
import argparse
import math
import os
import re
from collections import defaultdict

RAW = re.compile(r'(?:br|cr|r)(#*)"')
CFG_TEST = re.compile(r"#\[cfg\(test\)\]")
INLINE_MOD = re.compile(r"\bmod\s+(\w+)\s*\{")
PATH = re.compile(r"(?<![\w:])((?:crate|super|self|[a-z_]\w*)(?:\s*::\s*\w+)+)")
PUB = r"\bpub\s+(?:(?:async|const|unsafe|extern)\s+)*"
VISIBILITY = {"pub fn": PUB + r"fn\b", "pub(crate)": r"\bpub\s*\(\s*crate\s*\)",
              "pub(super)": r"\bpub\s*\(\s*super\s*\)", "pub(in ..)": r"\bpub\s*\(\s*in\b",
              "bare pub item": PUB + r"(fn|struct|enum|const|static|type|trait|mod|use)\b"}


def clean(src):
    """Blank out comments, strings and char literals; keep newlines and quotes."""
    out, i, n = [], 0, len(src)
    while i < n:
        c, ident_before = src[i], i > 0 and (src[i - 1].isalnum() or src[i - 1] == "_")
        raw = not ident_before and RAW.match(src, i)
        if src.startswith("//", i):
            j = src.find("\n", i)
            j, keep = (n if j < 0 else j), (0, 0)
        elif src.startswith("/*", i):  # block comments nest
            depth, j, keep = 1, i + 2, (0, 0)
            while j < n and depth:
                step = {"/*": 1, "*/": -1}.get(src[j:j + 2], 0)
                depth, j = depth + step, j + (2 if step else 1)
        elif raw:
            end = '"' + raw.group(1)
            j = src.find(end, raw.end())
            j, keep = (n if j < 0 else j + len(end)), (raw.end() - i, len(end))
        elif c == '"' or (c in "bc" and src.startswith('"', i + 1) and not ident_before) \
                or (c == "'" and (src.startswith("\\", i + 1) or src.startswith("'", i + 2))):
            quote = '"' if c != "'" else "'"  # a ' without a closing quote is a lifetime
            j = src.index(quote, i)
            start = j + 1
            j = start
            while j < n and src[j] != quote:
                j += 2 if src[j] == "\\" else 1
            j, keep = j + 1, (start - i, 1)
        else:
            out.append(c)
            i += 1
            continue
        out.append(src[i:i + keep[0]] + re.sub(r"[^\n]", " ", src[i + keep[0]:j - keep[1]])
                   + src[j - keep[1]:j])
        i = j
    return "".join(out)


def match_brace(text, i):
    """Index of the brace closing the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return len(text) - 1


def item_end(text, i):
    """(end, has_body) of the item going on at i: its first ';' outside () and [], or its body's '}'."""
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(text[j], 0)
        if depth == 0 and text[j] in ";{":
            return (j, False) if text[j] == ";" else (match_brace(text, j), True)
    return len(text) - 1, False


class File:
    def __init__(self, root, path):
        self.rel = os.path.relpath(path, root)
        with open(path, encoding="utf-8") as f:
            self.src = f.read()
        self.text = clean(self.src)
        self.lines = self.src.count("\n") + (not self.src.endswith("\n") and self.src != "")
        parts = self.rel[:-3].split(os.sep)
        self.is_test = parts[-1] == "tests" or "tests" in parts[:-1]
        self.tests = [(m.start(), item_end(self.text, m.end())[0]) for m in CFG_TEST.finditer(self.text)]
        self.inline_mods = [(m.start(), match_brace(self.text, m.end() - 1), m.group(1))
                            for m in INLINE_MOD.finditer(self.text)]
        self.children = set(re.findall(r"\bmod\s+(\w+)\s*;", self.text))
        self.modpath = ["crate"] + (parts[:-1] if parts[-1] in ("mod", "lib", "main") else parts)

    def line(self, pos):
        return self.text.count("\n", 0, pos) + 1

    def in_test(self, pos):
        return self.is_test or any(a <= pos <= b for a, b in self.tests)

    def functions(self):
        """(name, line, length, in_test) of each fn with a body."""
        for m in re.finditer(r"\bfn\s+(?:r#)?([A-Za-z_]\w*)", self.text):
            end, body = item_end(self.text, m.end())
            if body:
                first = self.line(m.start())
                yield m.group(1), first, self.line(end) - first + 1, self.in_test(m.start())

    def references(self):
        """(position, segments) of every path in a `use` tree or inline in the code."""
        refs, code = [], self.text
        for m in re.finditer(r"\buse\s+([^;]+);", self.text):
            refs += [(m.start(), p.split("::")) for p in expand_use(m.group(1))]
        for m in list(re.finditer(r"\buse\s+[^;]+;|\bpub\s*\(\s*in\s[^)]*\)", code)):
            code = code[:m.start()] + " " * (m.end() - m.start()) + code[m.end():]
        return refs + [(m.start(), re.sub(r"\s", "", m.group(1)).split("::")) for m in PATH.finditer(code)]

    def resolve(self, pos, segs):
        """Absolute module path of the path segs named at pos; None if not in this crate."""
        inline = [name for a, b, name in self.inline_mods if a < pos <= b]
        here = self.modpath + inline
        if segs[0] == "crate":
            return segs
        if segs[0] in ("super", "self"):
            while segs and segs[0] in ("super", "self"):
                here, segs = (here[:-1] if segs[0] == "super" else here), segs[1:]
            return here + segs
        return self.modpath + segs if not inline and segs[0] in self.children else None


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree, depth, parts, start = re.sub(r"\s+as\s+\w+|\s+", "", tree), 0, [], 0
    for k, ch in enumerate(tree + ","):  # split on top-level commas
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts, start = parts + [tree[start:k]], k + 1
    out = []
    for p in filter(None, parts):
        brace = p.find("{")
        out += [p[:brace] + sub for sub in expand_use(p[brace + 1:-1])] if brace >= 0 else [p]
    return out


def unit_of(modpath, depth, units):
    """The unit holding an absolute module path: its first `depth` components, or fewer."""
    key = "::".join(modpath[1:1 + depth])
    while key and key not in units:
        key = key.rpartition("::")[0]
    return key or None


def sccs(nodes, edges):
    """Strongly connected components (Tarjan)."""
    index, low, stack, out = {}, {}, [], []
    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
            if w in stack:
                low[v] = min(low[v], low[w])
        if low[v] == index[v]:
            k = stack.index(v)
            out.append(sorted(stack[k:]))
            del stack[k:]
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def fn_stats(title, fns):
    lengths, k = sorted(t[3] for t in fns), len(fns)
    print(f"\n== functions ({title}) ==")
    if not fns:
        return print("no functions")
    median = (lengths[(k - 1) // 2] + lengths[k // 2]) / 2
    print(f"count {k}, median {median:g}, p90 {lengths[math.ceil(0.9 * k) - 1]}, "
          f"mean {sum(lengths) / k:.1f}, max {lengths[-1]}")
    for rel, line, name, n in sorted(fns, key=lambda t: -t[3])[:15]:
        print(f"  {n:5d}  {rel}:{line} {name}")


def main():
    ap = argparse.ArgumentParser(description="Measure a Rust crate's source layout; see the module docstring.")
    ap.add_argument("src_dir")
    ap.add_argument("--depth", type=int, choices=(1, 2), default=1, help="units: 1 or 2 path components")
    ap.add_argument("--with-tests", action="store_true", help="include test code in the module graph")
    opts = ap.parse_args()
    root, depth, with_tests = opts.src_dir, opts.depth, opts.with_tests
    files = sorted((File(root, os.path.join(d, n)) for d, _, ns in os.walk(root)
                    for n in ns if n.endswith(".rs")), key=lambda f: f.rel)

    if not files:
        ap.error(f"no .rs files under {root}")
    longest = max(files, key=lambda f: f.lines)
    print(f"== files ({root}) ==\n{len(files)} .rs files, {sum(f.lines for f in files)} lines; "
          f"longest {longest.rel} ({longest.lines} lines)")
    for limit in (600, 500):
        big = [f"{f.rel} ({f.lines})" for f in files if f.lines > limit]
        print(f"over {limit} lines: {len(big)}: " + ", ".join(big))

    fns = [(f.rel, line, name, n, test) for f in files for name, line, n, test in f.functions()]
    fn_stats("all code", [t[:4] for t in fns])
    fn_stats("excluding test code", [t[:4] for t in fns if not t[4]])

    graph_files = [f for f in files if len(f.modpath) > 1 and (with_tests or not f.is_test)]
    units = {"::".join(f.modpath[1:1 + depth]) for f in graph_files}
    edges = defaultdict(set)
    for f in graph_files:
        src = unit_of(f.modpath, depth, units)
        for pos, segs in f.references():
            target = f.resolve(pos, segs)
            dst = target and unit_of(target, depth, units)
            if dst and dst != src and (with_tests or not f.in_test(pos)):
                edges[src].add(dst)
    print(f"\n== module graph (depth {depth}, {'with' if with_tests else 'without'} tests) ==")
    print(f"{len(units)} units, {sum(map(len, edges.values()))} edges")
    for a in sorted(units):
        print(f"  {a} -> {', '.join(sorted(edges[a])) or '-'}")
    cycles = [c for c in sccs(units, edges) if len(c) > 1]
    print(f"cycles (strongly connected components of size > 1): {len(cycles)}")
    for c in cycles:
        print("  {" + ", ".join(c) + "}")
    pairs = sorted((a, b) for a in edges for b in edges[a] if a < b and a in edges[b])
    print(f"2-cycles: {len(pairs)}: " + ", ".join(f"{a} <-> {b}" for a, b in pairs))
    print(f"units in cycles: {sum(map(len, cycles))} of {len(units)}")

    counts = defaultdict(int)
    for f in files:
        for key, pattern in VISIBILITY.items():
            for m in re.finditer(pattern, f.text):
                if not f.in_test(m.start()):
                    counts[key] += 1
                    if m.groups():
                        counts["  pub " + m.group(1)] += 1
    print("\n== visibility (excluding test code) ==")
    for key in list(VISIBILITY) + sorted(k for k in counts if k.startswith("  ")):
        print(f"{key:16} {counts[key]}")
    print(f"pub(crate) + pub(super): {counts['pub(crate)'] + counts['pub(super)']}")


if __name__ == "__main__":
    main()
