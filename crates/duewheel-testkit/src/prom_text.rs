//! A strict reader of the Prometheus text exposition format (0.0.4), for
//! tests: every line must be a `# HELP`, a `# TYPE` or a sample, every
//! sample must belong to a family with a `# TYPE`, and histograms must be
//! well formed (cumulative buckets ending in `+Inf` equal to `_count`).

use std::collections::BTreeMap;

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric name, suffix included (`_bucket`, `_total`, ...).
    pub name: String,
    /// The labels, by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Each family's `# TYPE`, by family name.
    pub types: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one sample named `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want);
        let first = found.next()?;
        assert!(found.next().is_none(), "{name} {labels:?} appears twice");
        Some(first.value)
    }

    /// `# TYPE` of a family.
    pub fn type_of(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// Histogram buckets of `family` as `(le, cumulative count)`.
    pub fn buckets(&self, family: &str) -> Vec<(f64, f64)> {
        let name = format!("{family}_bucket");
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                (
                    parse_value(&s.labels["le"]).expect("le is a number"),
                    s.value,
                )
            })
            .collect()
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("label without = in {s:?}"))?;
        let key = rest[..eq].trim();
        if !is_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("unquoted label value in {s:?}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        if labels.insert(key.to_string(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(labels)
}

/// The family a sample belongs to (histogram and summary suffixes removed
/// when such a family is declared).
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
        {
            return base;
        }
    }
    name
}

/// Parses `text`, or says which line is wrong.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_name(name) {
                        return Err(at("bad family name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("bad type {kind}")));
                    }
                    if out.types.insert(name.into(), kind.into()).is_some() {
                        return Err(at("TYPE twice".into()));
                    }
                }
                (Some("HELP"), Some(name), _) if is_name(name) => {}
                (Some("HELP"), ..) => return Err(at("bad HELP".into())),
                _ => {}
            }
            continue;
        }
        let (name_labels, value) = match line.find('}') {
            Some(close) => (&line[..=close], line[close + 1..].trim()),
            None => {
                let sp = line.find(' ').ok_or_else(|| at("no value".into()))?;
                (&line[..sp], line[sp + 1..].trim())
            }
        };
        let (name, labels) = match name_labels.find('{') {
            Some(open) => (
                &name_labels[..open],
                parse_labels(&name_labels[open + 1..name_labels.len() - 1]).map_err(at)?,
            ),
            None => (name_labels, BTreeMap::new()),
        };
        if !is_name(name) {
            return Err(at("bad metric name".into()));
        }
        let value = value
            .split_whitespace()
            .next()
            .ok_or_else(|| at("no value".into()))?;
        let value = parse_value(value).map_err(at)?;
        out.samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    for sample in &out.samples {
        let fam = family(&sample.name, &out.types);
        if !out.types.contains_key(fam) {
            return Err(format!("{} has no # TYPE", sample.name));
        }
    }
    for (fam, kind) in &out.types {
        if kind == "histogram" {
            let buckets = out.buckets(fam);
            if buckets.is_empty() || buckets.last().unwrap().0 != f64::INFINITY {
                return Err(format!("{fam}: buckets must end with +Inf"));
            }
            if buckets
                .windows(2)
                .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
            {
                return Err(format!("{fam}: buckets must be cumulative and ordered"));
            }
            let count = out
                .value(&format!("{fam}_count"), &[])
                .ok_or_else(|| format!("{fam}: no _count"))?;
            out.value(&format!("{fam}_sum"), &[])
                .ok_or_else(|| format!("{fam}: no _sum"))?;
            if buckets.last().unwrap().1 != count {
                return Err(format!("{fam}: +Inf bucket differs from _count"));
            }
        }
    }
    Ok(out)
}
