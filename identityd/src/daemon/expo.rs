//! Prometheus exposition, both formats: the classic text format (0.0.4, what `promtool check
//! metrics` reads and the default) and OpenMetrics 1.0 (when the scraper's `Accept` asks for
//! `application/openmetrics-text`). Counters are named without `_total` here; each format adds
//! the suffix where it belongs (classic: on the family and the sample; OpenMetrics: on the
//! sample only).

use std::fmt::Write as _;

/// The exposition formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Classic,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format a scraper's `Accept` header asks for (OpenMetrics only when it is named).
    #[must_use]
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Classic,
        }
    }

    /// The `content-type` of a response in this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; `_total` is added to the name.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Classic histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// Labels of one sample.
pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Value {
    Number(f64),
    Histogram {
        /// Upper bounds (without `+Inf`).
        bounds: &'static [f64],
        /// Per bucket, not cumulative; one more than `bounds` (the `+Inf` bucket).
        counts: Vec<u64>,
        sum: f64,
    },
}

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(Labels, Value)>,
}

/// A set of metric families, rendered in either format.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

/// Builder of one family's samples.
#[derive(Debug)]
pub struct FamilyRef<'a> {
    family: &'a mut Family,
}

impl FamilyRef<'_> {
    /// Adds a counter or gauge sample.
    pub fn set(&mut self, labels: Labels, value: f64) -> &mut Self {
        self.family.samples.push((labels, Value::Number(value)));
        self
    }

    /// Adds a histogram sample: `counts` per bucket (not cumulative), the last one for `+Inf`.
    pub fn histogram(
        &mut self,
        labels: Labels,
        bounds: &'static [f64],
        counts: Vec<u64>,
        sum: f64,
    ) -> &mut Self {
        debug_assert_eq!(counts.len(), bounds.len() + 1);
        self.family.samples.push((
            labels,
            Value::Histogram {
                bounds,
                counts,
                sum,
            },
        ));
        self
    }
}

/// `labels!["node" => n, …]`-like helper: owned label pairs.
#[must_use]
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Exposition {
    /// An empty exposition.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family (`name` without `_total` for counters).
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> FamilyRef<'_> {
        debug_assert!(
            !(kind == Kind::Counter && name.ends_with("_total")),
            "counter {name}: the format adds _total"
        );
        self.families.push(Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: Vec::new(),
        });
        let family = self.families.last_mut().expect("just pushed");
        FamilyRef { family }
    }

    /// Every family name as Prometheus stores its series (counters with `_total`, histograms
    /// with `_bucket`/`_sum`/`_count`).
    #[must_use]
    pub fn series_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.families {
            match f.kind {
                Kind::Counter => out.push(format!("{}_total", f.name)),
                Kind::Gauge => out.push(f.name.clone()),
                Kind::Histogram => {
                    for s in ["_bucket", "_sum", "_count"] {
                        out.push(format!("{}{s}", f.name));
                    }
                }
            }
        }
        out
    }

    /// The text in `format`.
    #[must_use]
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        for f in &self.families {
            let (meta_name, sample_name) = match (f.kind, format) {
                (Kind::Counter, Format::Classic) => {
                    (format!("{}_total", f.name), format!("{}_total", f.name))
                }
                (Kind::Counter, Format::OpenMetrics) => {
                    (f.name.clone(), format!("{}_total", f.name))
                }
                _ => (f.name.clone(), f.name.clone()),
            };
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {meta_name} {}", escape_help(&f.help, format));
            let _ = writeln!(out, "# TYPE {meta_name} {kind}");
            for (labels, value) in &f.samples {
                match value {
                    Value::Number(v) => {
                        let _ = writeln!(
                            out,
                            "{sample_name}{} {}",
                            label_text(labels, None),
                            number(*v)
                        );
                    }
                    Value::Histogram {
                        bounds,
                        counts,
                        sum,
                    } => {
                        let mut acc = 0u64;
                        for (i, c) in counts.iter().enumerate() {
                            acc += c;
                            let le = bounds
                                .get(i)
                                .map_or_else(|| "+Inf".to_owned(), |b| bound(*b, format));
                            let _ = writeln!(
                                out,
                                "{sample_name}_bucket{} {acc}",
                                label_text(labels, Some(&le))
                            );
                        }
                        let l = label_text(labels, None);
                        let _ = writeln!(out, "{sample_name}_sum{l} {}", number(*sum));
                        let _ = writeln!(out, "{sample_name}_count{l} {acc}");
                    }
                }
            }
        }
        if format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

fn escape_help(s: &str, format: Format) -> String {
    let mut o = s.replace('\\', "\\\\").replace('\n', "\\n");
    if format == Format::OpenMetrics {
        o = o.replace('"', "\\\"");
    }
    o
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Bucket bounds: OpenMetrics wants a float's canonical text (`1.0`, not `1`).
fn bound(b: f64, format: Format) -> String {
    if format == Format::OpenMetrics && b.fract() == 0.0 {
        format!("{b:.1}")
    } else {
        format!("{b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Exposition {
        let mut e = Exposition::new();
        e.family("x_requests", "Requests \"served\"", Kind::Counter)
            .set(labels(&[("a", "q\"uo\\te\n")]), 3.0);
        e.family("x_up", "Up", Kind::Gauge).set(Vec::new(), 1.0);
        e.family("x_seconds", "Latency", Kind::Histogram).histogram(
            labels(&[("s", "web")]),
            &[0.1, 1.0],
            vec![2, 1, 1],
            1.75,
        );
        e
    }

    #[test]
    fn classic_names_counters_with_total_and_histograms_cumulatively() {
        let t = sample().render(Format::Classic);
        assert!(t.contains("# TYPE x_requests_total counter\n"), "{t}");
        assert!(
            t.contains("x_requests_total{a=\"q\\\"uo\\\\te\\n\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("x_seconds_bucket{s=\"web\",le=\"0.1\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("x_seconds_bucket{s=\"web\",le=\"1\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("x_seconds_bucket{s=\"web\",le=\"+Inf\"} 4\n"),
            "{t}"
        );
        assert!(t.contains("x_seconds_count{s=\"web\"} 4\n"), "{t}");
        assert!(t.contains("x_seconds_sum{s=\"web\"} 1.75\n"), "{t}");
        assert!(!t.contains("# EOF"), "{t}");
    }

    #[test]
    fn openmetrics_keeps_total_on_the_sample_and_ends_with_eof() {
        let t = sample().render(Format::OpenMetrics);
        assert!(t.contains("# TYPE x_requests counter\n"), "{t}");
        assert!(t.contains("x_requests_total{"), "{t}");
        assert!(t.contains("le=\"1.0\""), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn the_accept_header_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Classic);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::Classic
        );
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
    }
}
