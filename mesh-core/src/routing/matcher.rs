use regex::Regex;

use crate::proxy_config::StringMatcher;

/// A `StringMatcher` ready to run. Regexes are RE2 syntax and must match
/// the whole value, as Envoy's `safe_regex`.
#[derive(Clone, Debug)]
pub enum CompiledMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present,
}

impl CompiledMatcher {
    /// Compile; `ignore_case` lowercases exact and prefix values (the
    /// caller lowercases the input) and makes regexes case-insensitive.
    pub fn new(m: &StringMatcher, ignore_case: bool) -> Result<CompiledMatcher, regex::Error> {
        let fold = |s: &String| if ignore_case { s.to_ascii_lowercase() } else { s.clone() };
        Ok(match m {
            StringMatcher::Exact(e) => CompiledMatcher::Exact(fold(e)),
            StringMatcher::Prefix(p) => CompiledMatcher::Prefix(fold(p)),
            StringMatcher::Regex(r) => {
                let anchored = format!("{}^(?:{r})$", if ignore_case { "(?i)" } else { "" });
                CompiledMatcher::Regex(Regex::new(&anchored)?)
            }
            StringMatcher::Present => CompiledMatcher::Present,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            CompiledMatcher::Exact(e) => e == value,
            CompiledMatcher::Prefix(p) => value.starts_with(p.as_str()),
            CompiledMatcher::Regex(r) => r.is_match(value),
            CompiledMatcher::Present => true,
        }
    }
}
