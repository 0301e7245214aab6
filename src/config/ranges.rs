//! Node patterns of the command line (`--node 'web[1-3],db1'`, `--node worker-[01-20]`),
//! written the way ansible and pdsh write host ranges, and matched against the
//! inventory's names with no I/O.
//!
//! - A comma outside brackets separates patterns: `web[1-3],db1` is two.
//! - A pattern is name characters (A-Z a-z 0-9 . _ -) and brackets; a bracket holds
//!   comma-separated numbers and ranges: `[1-3,7]`.
//! - A zero-padded bound keeps its width: `[01-20]` is 01, 02, … 20; `[1-20]` is 1 … 20.
//! - Several brackets multiply: `rack[1-2]-n[1-4]` is eight names.
//!
//! Patterns are matched against names rather than expanded, so `[1-1000000]` costs
//! nothing. Each pattern, and each number or range inside its brackets, must match at
//! least one name, so a typo is caught rather than quietly pushing to fewer nodes.

use std::collections::HashSet;

/// Longest number a bracket may hold: 18 digits always fit a u64.
const MAX_DIGITS: usize = 18;

/// Most groups of names a message lists before it says "…"; a line stays readable.
const MAX_LISTED: usize = 6;

/// Why a `--node` value selects nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The value is not written as the pattern grammar says.
    #[error("--node `{arg}`: {reason}")]
    Malformed { arg: String, reason: String },
    /// A pattern, or the part of it one number or range of a bracket makes, names no
    /// node; `near` folds the names that resemble it (empty when none does).
    #[error("{}{}", unmatched(pattern, part.as_deref()), it_has(near))]
    Unmatched {
        pattern: String,
        part: Option<String>,
        near: String,
    },
}

/// "`--node P` matches …", or "`--node P`: `PART` matches …" for one bracket item.
fn unmatched(pattern: &str, part: Option<&str>) -> String {
    match part {
        None => format!("--node `{pattern}` matches no node of the inventory"),
        Some(part) => format!("--node `{pattern}`: `{part}` matches no node of the inventory"),
    }
}

/// " (it has …)" when something near exists.
fn it_has(near: &str) -> String {
    match near.is_empty() {
        true => String::new(),
        false => format!(" (it has {near})"),
    }
}

/// Every pattern of every `--node` value, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePatterns {
    patterns: Vec<Pattern>,
}

impl NodePatterns {
    /// Parses each `--node` value; the first malformed one is the error.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<NodePatterns, PatternError> {
        let mut patterns = Vec::new();
        for arg in args {
            patterns.extend(parse_arg(arg.as_ref())?);
        }
        Ok(NodePatterns { patterns })
    }

    /// Whether no pattern was given (then every node is meant).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// A flag per name of `names`: whether some pattern matches it. Every pattern, and
    /// every number or range in its brackets, must match one name at least.
    pub fn matches(&self, names: &[&str]) -> Result<Vec<bool>, PatternError> {
        let mut picked = vec![false; names.len()];
        for pattern in &self.patterns {
            let mut used = HashSet::new();
            let mut any = false;
            for (i, name) in names.iter().enumerate() {
                let ways = pattern.ways(name, false);
                any |= !ways.is_empty();
                picked[i] |= !ways.is_empty();
                used.extend(ways.into_iter().flat_map(|w| w.into_iter().enumerate()));
            }
            if !any {
                return Err(pattern.unmatched(None, names));
            }
            pattern.check_items(&used, names)?;
        }
        Ok(picked)
    }
}

/// Splits one `--node` value at the commas outside brackets and parses each piece.
fn parse_arg(arg: &str) -> Result<Vec<Pattern>, PatternError> {
    let malformed = |reason: String| PatternError::Malformed {
        arg: arg.to_string(),
        reason,
    };
    let mut pieces = vec![String::new()];
    let mut depth = 0usize;
    for c in arg.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                pieces.push(String::new());
                continue;
            }
            _ => {}
        }
        pieces.last_mut().expect("pieces starts with one").push(c);
    }
    pieces
        .iter()
        .map(|piece| match piece.trim() {
            "" => Err(malformed(
                "an empty name (a comma too many, or an empty --node?)".into(),
            )),
            piece => Pattern::parse(piece).map_err(malformed),
        })
        .collect()
}

/// One pattern: text and brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// As written, for messages.
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Name characters matched as they are.
    Text(String),
    /// A bracket: one of these numbers or ranges.
    Numbers(Vec<Span>),
}

/// One item of a bracket: `lo` to `hi` (equal for a single number), each written with
/// at least `width` digits (0: not padded).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    lo: u64,
    hi: u64,
    width: usize,
    /// As written (`01-20`, `7`), for messages.
    text: String,
}

impl Pattern {
    /// Parses one pattern (no comma outside brackets); the error is the reason.
    fn parse(text: &str) -> Result<Pattern, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let literal = rest.find(['[', ']']).unwrap_or(rest.len());
            if literal > 0 {
                parts.push(Part::Text(name_chars(&rest[..literal])?.to_string()));
                rest = &rest[literal..];
                continue;
            }
            let (bracket, after) = take_bracket(rest)?;
            parts.push(Part::Numbers(parse_bracket(bracket)?));
            rest = after;
        }
        Ok(Pattern {
            text: text.to_string(),
            parts,
        })
    }

    /// Every way `name` matches: for each, the item chosen in each bracket. With
    /// `any_width`, a number matches whatever its padding (for near misses).
    fn ways(&self, name: &str, any_width: bool) -> Vec<Vec<usize>> {
        let mut ways = Vec::new();
        walk(&self.parts, name, any_width, &mut Vec::new(), &mut ways);
        ways
    }

    /// Refuses the first bracket item that no name used: `used` holds (bracket, item)
    /// pairs of every way a name matched.
    fn check_items(&self, used: &HashSet<(usize, usize)>, names: &[&str]) -> Result<(), PatternError> {
        let brackets = self.parts.iter().filter_map(|p| match p {
            Part::Numbers(spans) => Some(spans),
            Part::Text(_) => None,
        });
        for (b, spans) in brackets.enumerate() {
            if let Some(i) = (0..spans.len()).find(|i| !used.contains(&(b, *i))) {
                return Err(self.unmatched(Some((b, i)), names));
            }
        }
        Ok(())
    }

    /// The error for this pattern, or for item `i` of bracket `b` of it.
    fn unmatched(&self, item: Option<(usize, usize)>, names: &[&str]) -> PatternError {
        let narrowed = item.map(|(b, i)| self.narrowed(b, i));
        let near = near_misses(narrowed.as_ref().unwrap_or(self), names);
        PatternError::Unmatched {
            pattern: self.text.clone(),
            part: narrowed.map(|p| p.text),
            near: fold(&near),
        }
    }

    /// This pattern with bracket `b` reduced to its item `i`, written out.
    fn narrowed(&self, b: usize, i: usize) -> Pattern {
        let mut seen = 0;
        let parts: Vec<Part> = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Numbers(spans) => {
                    seen += 1;
                    match seen - 1 == b {
                        true => Part::Numbers(vec![spans[i].clone()]),
                        false => part.clone(),
                    }
                }
                Part::Text(_) => part.clone(),
            })
            .collect();
        let text = parts.iter().map(Part::render).collect();
        Pattern { text, parts }
    }
}

impl Part {
    /// The part as a pattern writes it; a bracket of one number is just the number.
    fn render(&self) -> String {
        match self {
            Part::Text(text) => text.clone(),
            Part::Numbers(spans) => match spans.as_slice() {
                [one] if one.lo == one.hi => one.format(one.lo),
                _ => format!(
                    "[{}]",
                    spans
                        .iter()
                        .map(|s| s.text.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            },
        }
    }
}

/// `text` if every character may be in a node name, else why not.
fn name_chars(text: &str) -> Result<&str, String> {
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        None => Ok(text),
        Some(c) if c.is_whitespace() => Err(format!(
            "a space inside `{text}` (separate patterns with commas: web1,db1)"
        )),
        Some(c) => Err(format!(
            "`{c}` cannot be in a node name (names are A-Z a-z 0-9 . _ -; \
             write ranges in brackets, as web[1-3])"
        )),
    }
}

/// Splits `[…]rest` into the bracket's inside and the rest.
fn take_bracket(text: &str) -> Result<(&str, &str), String> {
    if text.starts_with(']') {
        return Err("`]` without a `[` before it".into());
    }
    let inner = &text[1..];
    let close = inner.find(']').ok_or("`[` is never closed by a `]`")?;
    if inner[..close].contains('[') {
        return Err("brackets cannot nest".into());
    }
    Ok((&inner[..close], &inner[close + 1..]))
}

/// The items of a bracket's inside, `1-3,7`.
fn parse_bracket(inside: &str) -> Result<Vec<Span>, String> {
    if inside.trim().is_empty() {
        return Err("`[]` is empty: write numbers or ranges in it, as [1-3,7]".into());
    }
    inside
        .split(',')
        .map(|item| parse_span(item.trim(), inside))
        .collect()
}

/// One bracket item: `7`, `01-20`.
fn parse_span(item: &str, inside: &str) -> Result<Span, String> {
    if item.is_empty() {
        return Err(format!("an empty item in `[{inside}]`"));
    }
    let (lo, hi) = item.split_once('-').unwrap_or((item, item));
    let not_numbers =
        || format!("`{item}` in `[{inside}]` is not a number or a range of numbers (write [1-3] or [01-20])");
    let (lo_n, hi_n) = (
        number(lo).ok_or_else(not_numbers)?,
        number(hi).ok_or_else(not_numbers)?,
    );
    if lo_n > hi_n {
        return Err(format!("the range `{item}` runs backwards (write `{hi}-{lo}`)"));
    }
    let width = padded(lo).max(padded(hi));
    let mismatched = |bound: &str| padded(bound) == 0 && bound.len() < width;
    if padded(lo) != 0 && padded(hi) != 0 && lo.len() != hi.len() || mismatched(lo) {
        return Err(format!(
            "the bounds of `{item}` are padded to different widths (write them alike, as 01-20)"
        ));
    }
    Ok(Span {
        lo: lo_n,
        hi: hi_n,
        width,
        text: item.to_string(),
    })
}

/// The value of a string of 1 to [`MAX_DIGITS`] ASCII digits.
fn number(digits: &str) -> Option<u64> {
    let ok = (1..=MAX_DIGITS).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| digits.parse().ok()).flatten()
}

/// The width a zero-padded number keeps (`007` → 3), or 0 when it is not padded.
fn padded(digits: &str) -> usize {
    match digits.len() > 1 && digits.starts_with('0') {
        true => digits.len(),
        false => 0,
    }
}

impl Span {
    /// Whether `digits` is one of this item's numbers, written as the item writes them.
    fn contains(&self, digits: &str, any_width: bool) -> bool {
        let Some(n) = number(digits) else {
            return false;
        };
        (self.lo..=self.hi).contains(&n) && (any_width || self.format(n) == digits)
    }

    /// `n` padded to this item's width.
    fn format(&self, n: u64) -> String {
        format!("{n:0width$}", width = self.width)
    }
}

/// Matches `name` against `parts`, pushing each complete way (the item chosen in each
/// bracket so far is `chosen`) onto `ways`. A bracket may take any leading run of digits,
/// so `n[1-3]0` matches n10 … n30.
fn walk(parts: &[Part], name: &str, any_width: bool, chosen: &mut Vec<usize>, ways: &mut Vec<Vec<usize>>) {
    let Some((part, rest)) = parts.split_first() else {
        if name.is_empty() {
            ways.push(chosen.clone());
        }
        return;
    };
    match part {
        Part::Text(text) => {
            if let Some(after) = name.strip_prefix(text.as_str()) {
                walk(rest, after, any_width, chosen, ways);
            }
        }
        Part::Numbers(spans) => {
            let run = name.bytes().take_while(u8::is_ascii_digit).count();
            for len in 1..=run {
                for (i, span) in spans.iter().enumerate() {
                    if span.contains(&name[..len], any_width) {
                        chosen.push(i);
                        walk(rest, &name[len..], any_width, chosen, ways);
                        chosen.pop();
                    }
                }
            }
        }
    }
}

/// Names of `names` that `pattern` nearly matches, best kind first: the same numbers
/// padded otherwise (web01 for web1), then names starting with the pattern's text
/// before its first number, then the names closest to it in case or by one or two characters.
fn near_misses<'a>(pattern: &Pattern, names: &[&'a str]) -> Vec<&'a str> {
    let padding: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !pattern.ways(n, true).is_empty())
        .collect();
    if !padding.is_empty() {
        return padding;
    }
    let stem = stem(pattern);
    let prefixed: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !stem.is_empty() && n.starts_with(stem.as_str()))
        .collect();
    if !prefixed.is_empty() {
        return prefixed;
    }
    let lower = pattern.text.to_ascii_lowercase();
    let distance = |n: &str| match n.to_ascii_lowercase() == lower {
        true => 0,
        false => edit_distance(n, &pattern.text),
    };
    let best = names.iter().map(|n| distance(n)).min().unwrap_or(0);
    match best <= 2 {
        true => names.iter().copied().filter(|n| distance(n) == best).collect(),
        false => Vec::new(),
    }
}

/// The pattern's text before its first number (bracketed or not), without a trailing
/// separator: `web` for web[1-3] and web7, `worker` for worker-[01-20].
fn stem(pattern: &Pattern) -> String {
    let head = match pattern.parts.first() {
        Some(Part::Text(text)) => text.as_str(),
        _ => "",
    };
    let head = head.trim_end_matches(|c: char| c.is_ascii_digit());
    head.trim_end_matches(['-', '_', '.']).to_string()
}

/// Levenshtein distance, on bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// `names` written as patterns, in the order first met: `web[1-3],db1`,
/// `worker-[01-20]`; past [`MAX_LISTED`] groups, "…".
pub(super) fn fold(names: &[&str]) -> String {
    let mut groups: Vec<Group> = Vec::new();
    for name in names {
        let (head, digits, tail) = split_number(name);
        let alike =
            |g: &&mut Group| g.head == head && g.tail == tail && g.numbers.is_empty() == digits.is_none();
        match groups.iter_mut().find(alike) {
            Some(group) => group.numbers.extend(digits),
            None => groups.push(Group {
                head,
                tail,
                numbers: digits.into_iter().collect(),
            }),
        }
    }
    let mut shown: Vec<String> = groups.iter().take(MAX_LISTED).map(Group::render).collect();
    if groups.len() > MAX_LISTED {
        shown.push("…".into());
    }
    shown.join(",")
}

/// Names alike but for their last number.
struct Group<'a> {
    head: &'a str,
    tail: &'a str,
    /// The last number of each name, as written; empty for a name without digits.
    numbers: Vec<&'a str>,
}

impl Group<'_> {
    /// `head[runs]tail`, or the name itself when there is one number or none.
    fn render(&self) -> String {
        let mut numbers = self.numbers.clone();
        numbers.sort_by_key(|d| (number(d), d.len()));
        numbers.dedup();
        let runs = runs(&numbers);
        match (numbers.as_slice(), runs.as_slice()) {
            ([], _) => format!("{}{}", self.head, self.tail),
            ([one], _) => format!("{}{one}{}", self.head, self.tail),
            _ => format!("{}[{}]{}", self.head, runs.join(","), self.tail),
        }
    }
}

/// Sorted numbers as bracket items: consecutive ones written alike join into `lo-hi`.
fn runs(numbers: &[&str]) -> Vec<String> {
    let mut runs: Vec<Run> = Vec::new();
    for digits in numbers {
        match runs.last_mut() {
            Some(run) if run.continued_by(digits) => {
                run.last = digits;
                run.hi = number(digits);
            }
            _ => runs.push(Run {
                first: digits,
                last: digits,
                hi: number(digits),
                width: padded(digits),
            }),
        }
    }
    runs.iter().map(Run::write).collect()
}

/// Consecutive numbers written alike, `first` to `last` (whose value is `hi`; `None` past
/// [`MAX_DIGITS`]), padded to `width`.
struct Run<'a> {
    first: &'a str,
    last: &'a str,
    hi: Option<u64>,
    width: usize,
}

impl Run<'_> {
    /// Whether `digits` is the number after `last`, written as this run writes numbers.
    fn continued_by(&self, digits: &str) -> bool {
        let next = self.hi.and_then(|hi| hi.checked_add(1));
        next.is_some_and(|n| number(digits) == Some(n) && format!("{n:0w$}", w = self.width) == digits)
    }

    fn write(&self) -> String {
        match self.first == self.last {
            true => self.first.to_string(),
            false => format!("{}-{}", self.first, self.last),
        }
    }
}

/// `name` cut around its last run of digits: (before, digits, after); no digits gives
/// (name, None, "").
fn split_number(name: &str) -> (&str, Option<&str>, &str) {
    let Some(end) = name.rfind(|c: char| c.is_ascii_digit()).map(|i| i + 1) else {
        return (name, None, "");
    };
    let start = name[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    (&name[..start], Some(&name[start..end]), &name[end..])
}

#[cfg(test)]
#[path = "tests/ranges.rs"]
mod tests;
