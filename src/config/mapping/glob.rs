//! Glob rules, matched on a trie of dot-separated segments rather than as one regex each, so
//! that tens of thousands of rules load in a fraction of a second and a few bytes each.
//!
//! A glob is a list of segments; a segment is a literal or a pattern with `*`s, and a `*`
//! matches any run of characters within one segment (never a `.`, possibly none). A name
//! matches when it has as many segments and each matches its own. Several `*`s in one segment
//! capture as a regex `([^.]*)` each would: the first takes as much as it can while the rest
//! still match, then the next, and so on.
//!
//! The trie has one level per segment: a literal segment is a hash lookup, and only the
//! wildcard segments seen at that position are tried. Every node knows the lowest rule index
//! below it, so a search stops exploring a branch that cannot beat the best rule found so far.

use std::collections::HashMap;

/// One segment of a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Matches exactly this text.
    Lit(Box<str>),
    /// The literals between the `*`s (one more than there are `*`s; `*` alone is `["", ""]`).
    Wild(Box<[Box<str>]>),
}

/// A parsed glob.
#[derive(Debug, Clone)]
pub(super) struct Glob {
    segs: Box<[Seg]>,
    stars: usize,
}

impl Glob {
    /// Parses `glob`; the error says what is wrong with it.
    pub(super) fn parse(glob: &str) -> Result<Self, String> {
        if glob.is_empty() {
            return Err("empty glob".into());
        }
        if glob.split('.').any(str::is_empty) {
            return Err(format!("glob {glob:?} has an empty segment"));
        }
        let mut stars = 0;
        let mut segs = Vec::new();
        for seg in glob.split('.') {
            for lit in seg.split('*') {
                if lit.chars().any(|c| "[]{}()?+|^$\\".contains(c)) {
                    return Err(format!(
                        "glob {glob:?}: only `*` is special in a glob; use `regex` for {lit:?}"
                    ));
                }
            }
            if seg.contains('*') {
                let lits: Box<[Box<str>]> = seg.split('*').map(Box::from).collect();
                stars += lits.len() - 1;
                segs.push(Seg::Wild(lits));
            } else {
                segs.push(Seg::Lit(seg.into()));
            }
        }
        Ok(Self {
            segs: segs.into(),
            stars,
        })
    }

    /// The number of capture groups, counting `$0` (the whole name).
    pub(super) fn captures_len(&self) -> usize {
        self.stars + 1
    }

    /// The captures of `name` if the glob matches it: the whole name, then one per `*`.
    pub(super) fn captures<'n>(&self, name: &'n str) -> Option<Vec<&'n str>> {
        let mut caps = Vec::with_capacity(self.stars + 1);
        caps.push(name);
        let mut parts = name.split('.');
        for seg in self.segs.iter() {
            let part = parts.next()?;
            match seg {
                Seg::Lit(l) if **l == *part => {}
                Seg::Lit(_) => return None,
                Seg::Wild(lits) => {
                    if !wild_match(lits, part, Some(&mut caps)) {
                        return None;
                    }
                }
            }
        }
        parts.next().is_none().then_some(caps)
    }

    /// True if this glob matches every name `other` matches (segment by segment: the same
    /// text, or `*` alone). Used to find rules an earlier rule always shadows.
    #[cfg(test)]
    pub(super) fn covers(&self, other: &Glob) -> bool {
        self.segs.len() == other.segs.len()
            && self
                .segs
                .iter()
                .zip(other.segs.iter())
                .all(|(a, b)| matches!(a, Seg::Wild(l) if is_star(l)) || a == b)
    }
}

/// True for the literals of a segment that is `*` alone.
fn is_star(lits: &[Box<str>]) -> bool {
    lits.len() == 2 && lits.iter().all(|x| x.is_empty())
}

/// Matches one name segment against a wildcard segment's literals, pushing one capture per
/// `*` when `caps` is given (leftmost-first, each `*` as long as the rest allows).
fn wild_match<'n>(lits: &[Box<str>], part: &'n str, caps: Option<&mut Vec<&'n str>>) -> bool {
    let (first, rest) = lits.split_first().expect("a wildcard segment has literals");
    let Some(tail) = part.strip_prefix(&**first) else {
        return false;
    };
    fit(rest, tail, caps)
}

/// `s` is what follows the previous literal; `lits[0]` follows the next `*`.
fn fit<'n>(lits: &[Box<str>], s: &'n str, mut caps: Option<&mut Vec<&'n str>>) -> bool {
    match lits {
        [] => s.is_empty(),
        [last] => match s.strip_suffix(&**last) {
            Some(star) => {
                if let Some(c) = caps {
                    c.push(star);
                }
                true
            }
            None => false,
        },
        [next, more @ ..] => {
            // The longest capture first: the rightmost place for the next literal.
            for (at, _) in s.rmatch_indices(&**next) {
                let mark = caps.as_ref().map(|c| c.len());
                if let Some(c) = caps.as_deref_mut() {
                    c.push(&s[..at]);
                }
                if fit(more, &s[at + next.len()..], caps.as_deref_mut()) {
                    return true;
                }
                if let (Some(c), Some(m)) = (caps.as_deref_mut(), mark) {
                    c.truncate(m);
                }
            }
            false
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    lit: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    wild: Vec<(Box<[Box<str>]>, u32)>,
    /// Rules whose glob ends here, in rule order.
    rules: Vec<u32>,
    /// The lowest rule index in this node's subtree.
    min: u32,
}

/// Every glob rule of a config, by segment.
#[derive(Debug)]
pub(super) struct Trie {
    nodes: Vec<Node>,
}

impl Default for Trie {
    fn default() -> Self {
        Self {
            nodes: vec![Node {
                min: u32::MAX,
                ..Node::default()
            }],
        }
    }
}

impl Trie {
    /// Adds rule `rule`'s glob. Rules are added in increasing order.
    pub(super) fn insert(&mut self, glob: &Glob, rule: u32) {
        let mut at = 0usize;
        self.nodes[0].min = self.nodes[0].min.min(rule);
        for seg in glob.segs.iter() {
            let next = match seg {
                Seg::Lit(l) => self.nodes[at].lit.get(l).copied(),
                Seg::Wild(p) => self.nodes[at]
                    .wild
                    .iter()
                    .find(|(q, _)| q == p)
                    .map(|(_, c)| *c),
            };
            let next = match next {
                Some(c) => c as usize,
                None => {
                    let c = self.nodes.len();
                    self.nodes.push(Node {
                        min: rule,
                        ..Node::default()
                    });
                    let id = u32::try_from(c).expect("fewer than 2^32 trie nodes");
                    match seg {
                        Seg::Lit(l) => {
                            self.nodes[at].lit.insert(l.clone(), id);
                        }
                        Seg::Wild(p) => self.nodes[at].wild.push((p.clone(), id)),
                    }
                    c
                }
            };
            at = next;
            self.nodes[at].min = self.nodes[at].min.min(rule);
        }
        self.nodes[at].rules.push(rule);
    }

    /// The lowest rule below `bound` whose glob matches `segs` (a name split on `.`) and that
    /// `admit` accepts.
    pub(super) fn first(
        &self,
        segs: &[&str],
        bound: u32,
        admit: &dyn Fn(u32) -> bool,
    ) -> Option<u32> {
        let mut best = bound;
        self.visit(0, segs, &mut best, admit);
        (best < bound).then_some(best)
    }

    fn visit(&self, at: usize, segs: &[&str], best: &mut u32, admit: &dyn Fn(u32) -> bool) {
        let node = &self.nodes[at];
        if node.min >= *best {
            return;
        }
        let Some((part, rest)) = segs.split_first() else {
            if let Some(&r) = node.rules.iter().find(|&&r| admit(r)) {
                *best = (*best).min(r);
            }
            return;
        };
        if let Some(&c) = node.lit.get(*part) {
            self.visit(c as usize, rest, best, admit);
        }
        for (lits, c) in &node.wild {
            if wild_match(lits, part, None) {
                self.visit(*c as usize, rest, best, admit);
            }
        }
    }

    /// The lowest rule already in the trie that `admit` accepts and whose glob matches every
    /// name `glob` matches (segment by segment: the same text, or `*` alone).
    pub(super) fn first_covering(&self, glob: &Glob, admit: &dyn Fn(u32) -> bool) -> Option<u32> {
        let mut best = u32::MAX;
        self.cover(0, &glob.segs, &mut best, admit);
        (best < u32::MAX).then_some(best)
    }

    fn cover(&self, at: usize, segs: &[Seg], best: &mut u32, admit: &dyn Fn(u32) -> bool) {
        let node = &self.nodes[at];
        if node.min >= *best {
            return;
        }
        let Some((seg, rest)) = segs.split_first() else {
            if let Some(&r) = node.rules.iter().find(|&&r| admit(r)) {
                *best = (*best).min(r);
            }
            return;
        };
        for (lits, c) in &node.wild {
            if is_star(lits) || matches!(seg, Seg::Wild(p) if p == lits) {
                self.cover(*c as usize, rest, best, admit);
            }
        }
        if let Seg::Lit(l) = seg
            && let Some(&c) = node.lit.get(l)
        {
            self.cover(c as usize, rest, best, admit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The regex a glob used to be compiled to: the reference for matching and captures.
    fn as_regex(glob: &str) -> regex::Regex {
        let mut re = String::from("^");
        for (i, seg) in glob.split('.').enumerate() {
            if i > 0 {
                re.push_str("\\.");
            }
            for (j, lit) in seg.split('*').enumerate() {
                if j > 0 {
                    re.push_str("([^.]*)");
                }
                re.push_str(&regex::escape(lit));
            }
        }
        re.push('$');
        regex::Regex::new(&re).unwrap()
    }

    fn caps_by_regex<'n>(glob: &str, name: &'n str) -> Option<Vec<&'n str>> {
        as_regex(glob)
            .captures(name)
            .map(|c| c.iter().map(|m| m.map_or("", |m| m.as_str())).collect())
    }

    #[test]
    fn captures_as_the_regex_would() {
        for (glob, name) in [
            ("a.*.c", "a.b.c"),
            ("a.*.c", "a..c"),
            ("a.*", "a.b.c"),
            ("x*y*z", "xAyByCz"),
            ("x**z", "xABz"),
            ("*_count.*", "db_x_count.q"),
            ("a*a", "a"),
            ("a*a", "aa"),
            ("*.*", "é.ü"),
        ] {
            let g = Glob::parse(glob).unwrap();
            assert_eq!(g.captures(name), caps_by_regex(glob, name), "{glob} {name}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop::string::string_regex("[ab*]{1,4}").unwrap()
    }

    fn glob() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..4).prop_map(|s| s.join("."))
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::string::string_regex("[ab*]{0,5}").unwrap(), 1..4)
            .prop_map(|s| s.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Matching and captures equal the regex translation's, and the trie finds the same
        /// first rule as trying each glob in order.
        #[test]
        fn trie_and_captures_match_the_regex_translation(
            globs in prop::collection::vec(glob(), 1..12),
            names in prop::collection::vec(name(), 1..12),
        ) {
            let parsed: Vec<Glob> = globs.iter().map(|g| Glob::parse(g).unwrap()).collect();
            let regexes: Vec<regex::Regex> = globs.iter().map(|g| as_regex(g)).collect();
            let mut trie = Trie::default();
            for (i, g) in parsed.iter().enumerate() {
                trie.insert(g, i as u32);
            }
            for n in &names {
                for ((g, p), re) in globs.iter().zip(&parsed).zip(&regexes) {
                    let by_regex: Option<Vec<&str>> = re
                        .captures(n)
                        .map(|c| c.iter().map(|m| m.map_or("", |m| m.as_str())).collect());
                    prop_assert_eq!(p.captures(n), by_regex, "{} {}", g, n);
                }
                let want = regexes.iter().position(|re| re.is_match(n)).map(|i| i as u32);
                let segs: Vec<&str> = n.split('.').collect();
                prop_assert_eq!(trie.first(&segs, u32::MAX, &|_| true), want, "{}", n);
                // Only odd rules admitted.
                let want = regexes
                    .iter()
                    .enumerate()
                    .position(|(i, re)| i % 2 == 1 && re.is_match(n))
                    .map(|i| i as u32);
                prop_assert_eq!(trie.first(&segs, u32::MAX, &|r| r % 2 == 1), want);
            }
            // first_covering agrees with covers() over the earlier globs.
            for (i, g) in parsed.iter().enumerate() {
                let mut before = Trie::default();
                for (j, p) in parsed[..i].iter().enumerate() {
                    before.insert(p, j as u32);
                }
                let want = parsed[..i].iter().position(|p| p.covers(g)).map(|j| j as u32);
                prop_assert_eq!(before.first_covering(g, &|_| true), want);
            }
        }
    }
}
