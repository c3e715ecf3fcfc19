//! The store's census for the status page: series per family, and a family's label names
//! with their numbers of values. Read like a scrape reads ([`super::read`]): the registry
//! lock is held for one chunk at a time, never on the hot path (writers take it only on a
//! cache miss), and nothing is copied per series but a hash of each label value while one
//! family's labels are counted.

use std::collections::HashSet;
use std::hash::BuildHasher as _;

use super::Store;
use crate::naming::FamilyKind;
use crate::sync::lock;

/// Families visited per registry lock hold by [`Store::census`].
pub const CENSUS_CHUNK: usize = 16 * 1024;

/// Series keys read per registry lock hold by [`Store::family_labels`].
pub const LABELS_CHUNK: usize = 4096;

/// Distinct values counted per label name by [`Store::family_labels`]; a label with more is
/// reported as having at least this many ([`LabelValues::capped`]).
pub const DISTINCT_CAP: usize = 100_000;

/// One label name of a family and how many values it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelValues {
    /// The label name.
    pub name: String,
    /// Distinct values seen (at most [`DISTINCT_CAP`]).
    pub values: usize,
    /// True if counting stopped at [`DISTINCT_CAP`].
    pub capped: bool,
}

impl Store {
    /// Calls `f(name, kind, series)` for every family with a member, in name order. `series`
    /// counts live and retiring members (those counted against the limits). The registry lock
    /// is held for [`CENSUS_CHUNK`] families at a time; a family created or removed during the
    /// walk may be seen or missed, none is seen twice.
    pub fn census(&self, mut f: impl FnMut(&str, FamilyKind, usize)) {
        let mut after: Option<Box<str>> = None;
        loop {
            let mut reg = lock(&self.registry);
            if after.is_none() {
                reg.cat.settle();
            }
            let cat = &reg.cat;
            let mut seen = 0;
            let mut last = None;
            for &fid in cat.ordered_from(after.as_deref()) {
                let name = cat.name(fid);
                if after.as_deref() == Some(name) {
                    continue;
                }
                if seen == CENSUS_CHUNK {
                    break;
                }
                let fam = cat.family(fid);
                if fam.len() > 0 {
                    f(name, fam.kind, fam.len());
                }
                seen += 1;
                last = Some(fid);
            }
            match last {
                Some(fid) if seen == CENSUS_CHUNK => after = Some(Box::from(cat.name(fid))),
                _ => return,
            }
        }
    }

    /// The label names of family `name`'s series, each with its number of distinct values,
    /// most values first (then by name). Series are read [`LABELS_CHUNK`] at a time, the
    /// family found again by name for each chunk; a series removed meanwhile moves another
    /// into its place, which may then be missed (an estimate, like any census of a moving
    /// store). Empty if the family does not exist.
    pub fn family_labels(&self, name: &str) -> Vec<LabelValues> {
        let hasher = foldhash::quality::RandomState::default();
        let mut seen: Vec<(String, HashSet<u64>)> = Vec::new();
        let mut next = 0;
        loop {
            let reg = lock(&self.registry);
            let cat = &reg.cat;
            let Some(fid) = cat.family_id(name) else {
                break;
            };
            let fam = cat.family(fid);
            let end = fam.len().min(next + LABELS_CHUNK);
            for pos in next..end {
                let Some(id) = fam.member(pos) else { break };
                for (label, value) in label_pairs(cat.labels(id)) {
                    let i = match seen.iter().position(|(n, _)| n == label) {
                        Some(i) => i,
                        None => {
                            seen.push((label.to_string(), HashSet::new()));
                            seen.len() - 1
                        }
                    };
                    let values = &mut seen[i].1;
                    if values.len() < DISTINCT_CAP {
                        values.insert(hasher.hash_one(value));
                    }
                }
            }
            if end >= fam.len() {
                break;
            }
            next = end;
        }
        let mut out: Vec<LabelValues> = seen
            .into_iter()
            .map(|(name, values)| LabelValues {
                name,
                capped: values.len() >= DISTINCT_CAP,
                values: values.len(),
            })
            .collect();
        out.sort_by(|a, b| b.values.cmp(&a.values).then_with(|| a.name.cmp(&b.name)));
        out
    }
}

/// The `(name, escaped value)` pairs of a series' rendered labels (`k="v",k2="v2"`, values
/// escaped as the text format escapes them: `\\`, `\"`, `\n`). Stops at anything else.
pub fn label_pairs(labels: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = labels;
    std::iter::from_fn(move || {
        let (name, after) = rest.split_once("=\"")?;
        let bytes = after.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        let value = after.get(..i)?;
        rest = after.get(i + 1..).unwrap_or("");
        rest = rest.strip_prefix(',').unwrap_or(rest);
        Some((name, value))
    })
}

#[cfg(test)]
mod tests {
    use super::label_pairs;

    #[test]
    fn label_pairs_split_escaped_values() {
        let pairs: Vec<_> = label_pairs(r#"a="1",b="x\"y,z=\"",c="\\",d="""#).collect();
        assert_eq!(
            pairs,
            [("a", "1"), ("b", r#"x\"y,z=\""#), ("c", r"\\"), ("d", "")]
        );
        assert_eq!(label_pairs("").count(), 0);
    }
}
