//! One side's tag overrides (Telemetry API `tagOverrides`), compiled: per
//! metric, which of Istio's labels are removed or set and which are added,
//! each value an expression evaluated once per exchange. As Istio's stats
//! filter: a standard label is replaced in place, a new one is appended
//! (in name order), a value that fails to evaluate is `unknown`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use mesh_core::config::telemetry::{METRICS, STANDARD_TAGS};
use mesh_core::expression::{Attributes, Expression};
use mesh_core::telemetry::TagOp;

use super::labels::Labels;

/// Istio's metrics, in the order of [`METRICS`].
#[derive(Clone, Copy, Debug)]
pub enum Metric {
    Requests,
    Duration,
    RequestSize,
    ResponseSize,
    TcpOpened,
    TcpClosed,
    TcpSent,
    TcpReceived,
}

/// A tag's new value: `None` removes it, else the expression's index.
type Rule = (Cow<'static, str>, Option<usize>);

#[derive(Clone, Debug)]
pub struct TagRules {
    /// Each distinct expression once.
    expressions: Vec<Expression>,
    by_metric: [Vec<Rule>; METRICS.len()],
}

impl Default for TagRules {
    fn default() -> TagRules {
        TagRules::NONE
    }
}

impl TagRules {
    pub const NONE: TagRules = TagRules { expressions: Vec::new(), by_metric: [const { Vec::new() }; METRICS.len()] };

    /// Compile a side's overrides, by metric (Prometheus name) and tag; an
    /// expression that does not compile is left out, named in `warnings`.
    pub fn compile(overrides: &BTreeMap<String, BTreeMap<String, TagOp>>, warnings: &mut Vec<String>) -> TagRules {
        let mut rules = TagRules::NONE;
        for (i, (_, metric)) in METRICS.iter().enumerate() {
            for (tag, op) in overrides.get(*metric).into_iter().flatten() {
                let value = match op {
                    TagOp::Remove => None,
                    TagOp::Upsert(source) => match rules.expression(source) {
                        Ok(index) => Some(index),
                        Err(e) => {
                            warnings.push(format!("{metric}: tag override `{tag}` not applied: {e}"));
                            continue;
                        }
                    },
                };
                rules.by_metric[i].push((label_name(tag), value));
            }
        }
        rules
    }

    fn expression(&mut self, source: &str) -> Result<usize, String> {
        if let Some(i) = self.expressions.iter().position(|e| e.source() == source) {
            return Ok(i);
        }
        self.expressions.push(Expression::compile(source)?);
        Ok(self.expressions.len() - 1)
    }

    pub fn is_empty(&self) -> bool {
        self.by_metric.iter().all(Vec::is_empty)
    }

    /// Whether an expression reads attributes of `group` (`request`...).
    pub fn reads(&self, group: &str) -> bool {
        self.expressions.iter().any(|e| e.reads(group))
    }

    /// Every expression's value for one exchange.
    pub fn evaluate(&self, attributes: &Attributes<'_>) -> Vec<String> {
        self.expressions.iter().map(|e| e.value(attributes)).collect()
    }

    /// `labels` as `metric`'s overrides leave them, given the exchange's
    /// `values` (from [`TagRules::evaluate`]).
    pub fn apply<'l>(&self, metric: Metric, labels: &'l Labels, values: &[String]) -> Cow<'l, Labels> {
        let rules = &self.by_metric[metric as usize];
        if rules.is_empty() {
            return Cow::Borrowed(labels);
        }
        let value = |index: &usize| values.get(*index).cloned().unwrap_or_else(|| "unknown".to_string());
        let mut out = Labels(Vec::with_capacity(labels.0.len() + rules.len()));
        for (name, current) in &labels.0 {
            match rules.iter().find(|(tag, _)| tag == name) {
                None => out.0.push((name.clone(), current.clone())),
                Some((_, None)) => {}
                Some((_, Some(index))) => out.0.push((name.clone(), value(index))),
            }
        }
        // Standard labels a metric lacks (TCP has no response code) stay out.
        let added = rules.iter().filter(|(tag, _)| !STANDARD_TAGS.contains(&&**tag));
        out.0.extend(added.filter_map(|(tag, index)| Some((tag.clone(), value(index.as_ref()?)))));
        Cow::Owned(out)
    }
}

/// A label name Prometheus accepts: what is not a letter, digit or `_`
/// becomes `_`, as Envoy's Prometheus output does.
fn label_name(tag: &str) -> Cow<'static, str> {
    if let Some(standard) = STANDARD_TAGS.iter().find(|t| **t == tag) {
        return Cow::Borrowed(standard);
    }
    let mut name: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    Cow::Owned(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&'static str, &str)]) -> Labels {
        Labels(pairs.iter().map(|(k, v)| (Cow::Borrowed(*k), v.to_string())).collect())
    }

    #[test]
    fn standard_labels_are_replaced_or_removed_and_others_appended() {
        let upsert = |s: &str| TagOp::Upsert(s.to_string());
        let requests = BTreeMap::from([
            ("source_principal".to_string(), TagOp::Remove),
            ("response_code".to_string(), upsert("'2xx'")),
            ("request-host".to_string(), upsert("request.host")),
            ("api".to_string(), upsert("'v1'")),
        ]);
        let tcp = BTreeMap::from([("response_code".to_string(), upsert("'2xx'"))]);
        let overrides = BTreeMap::from([
            ("istio_requests_total".to_string(), requests),
            ("istio_tcp_sent_bytes_total".to_string(), tcp),
        ]);
        let mut warnings = Vec::new();
        let rules = TagRules::compile(&overrides, &mut warnings);
        assert!(warnings.is_empty() && !rules.is_empty() && rules.reads("request"));
        assert_eq!(rules.expressions.len(), 3, "'2xx' is compiled once");
        let values = rules.evaluate(&Attributes::default());
        assert_eq!(values, ["v1", "unknown", "2xx"], "no request: request.host fails");

        let base = labels(&[("reporter", "source"), ("source_principal", "spiffe://a"), ("response_code", "200")]);
        let out = rules.apply(Metric::Requests, &base, &values).into_owned();
        assert_eq!(
            out,
            labels(&[("reporter", "source"), ("response_code", "2xx"), ("api", "v1"), ("request_host", "unknown")])
        );
        assert!(matches!(rules.apply(Metric::Duration, &base, &values), Cow::Borrowed(_)), "other metrics untouched");
        let tcp_base = labels(&[("reporter", "source")]);
        assert_eq!(*rules.apply(Metric::TcpSent, &tcp_base, &values), tcp_base, "TCP has no response_code to set");
    }

    #[test]
    fn an_expression_that_does_not_compile_is_named() {
        let overrides = BTreeMap::from([(
            "istio_requests_total".to_string(),
            BTreeMap::from([("x".to_string(), TagOp::Upsert("node.id".to_string()))]),
        )]);
        let mut warnings = Vec::new();
        assert!(TagRules::compile(&overrides, &mut warnings).is_empty());
        assert!(warnings[0].contains("istio_requests_total: tag override `x`") && warnings[0].contains("`node`"));
    }
}
