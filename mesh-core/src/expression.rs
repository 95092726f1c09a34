//! Envoy's attribute expressions: CEL over what a proxy knows of a request
//! (`request.headers['x-user']`, `response.code >= 400`,
//! `connection.mtls`), as Istio's Telemetry API uses them for metric tag
//! overrides and access log filters. Parsing and evaluation are the `cel`
//! crate's; this module names the attributes, as Envoy's attribute
//! reference does, and refuses at compile time what it cannot evaluate (an
//! attribute or function it does not have), so a typo is a config error
//! rather than a tag that always reads `unknown`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock};

use cel::common::ast::Expr;
use cel::common::traits::{Container, Indexer, Iterable, Sizer};
use cel::common::types::{CelBool, CelInt, CelString, Type, DYN_TYPE, MAP_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{Context, ExecutionError, IdedExpr, Program, Value};

/// Envoy's attributes this proxy fills, by group.
const ATTRIBUTES: [(&str, &[&str]); 7] = [
    (
        "request",
        &[
            "path",
            "url_path",
            "host",
            "scheme",
            "method",
            "headers",
            "referer",
            "useragent",
            "id",
            "protocol",
            "query",
            "size",
            "total_size",
        ],
    ),
    ("response", &["code", "code_details", "grpc_status", "headers", "size", "total_size"]),
    ("source", &["address", "port"]),
    ("destination", &["address", "port"]),
    ("connection", &["mtls", "requested_server_name", "uri_san_peer_certificate"]),
    ("upstream", &["address", "port"]),
    ("xds", &["cluster_name", "route_name"]),
];

/// CEL's functions that the `cel` crate evaluates here (no `duration` or
/// `timestamp`: those need its `chrono` feature). Operators and macros
/// (`has`, `exists`, `in`...) are always there.
const FUNCTIONS: [&str; 13] = [
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "string",
    "int",
    "uint",
    "double",
    "bytes",
    "bool",
    "type",
    "dyn",
];

/// CEL's type names, which read as identifiers (`type(x) == int`).
const TYPE_NAMES: [&str; 10] = ["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"];

/// The functions every evaluation uses, registered once.
static ROOT: LazyLock<Context<'static, 'static>> = LazyLock::new(Context::default);

/// A compiled expression, cheap to clone.
#[derive(Clone)]
pub struct Expression {
    source: Arc<str>,
    program: Arc<Program>,
    /// Which attribute groups it reads (`request`, `response`...).
    groups: Arc<[&'static str]>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expression {
    /// Parse `source` and check that every attribute and function it names
    /// is one this proxy evaluates.
    pub fn compile(source: &str) -> Result<Expression, String> {
        let program = Program::compile(source).map_err(|e| {
            let first = e.errors.first().map_or_else(|| e.to_string(), |p| p.msg.clone());
            format!("`{source}` is not a valid CEL expression: {first}")
        })?;
        let mut refs = References::default();
        refs.walk(program.expression());
        if let Some(bad) = refs.unknown.first() {
            return Err(format!("`{source}`: {bad}"));
        }
        let references = program.references();
        let functions = references.functions();
        let unknown_fn = functions.iter().find(|f| f.chars().next().is_some_and(char::is_alphabetic));
        if let Some(f) = unknown_fn.filter(|f| !FUNCTIONS.contains(f)) {
            return Err(format!("`{source}`: function `{f}` is not supported (supported: {})", FUNCTIONS.join(", ")));
        }
        let groups = ATTRIBUTES.iter().map(|(g, _)| *g).filter(|g| refs.groups.contains(g)).collect();
        Ok(Expression { source: source.into(), program: Arc::new(program), groups })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether it reads an attribute of `group` (`request`, `response`...).
    pub fn reads(&self, group: &str) -> bool {
        self.groups.contains(&group)
    }

    fn evaluate(&self, attributes: &Attributes<'_>) -> Result<Value, ExecutionError> {
        let mut context = ROOT.new_inner_scope();
        context.set_variable_resolver(attributes);
        self.program.execute(&context)
    }

    /// As an access log filter: true only for a boolean `true`; an error
    /// (a header not there, a type mismatch) is false, as in Envoy.
    pub fn matches(&self, attributes: &Attributes<'_>) -> bool {
        matches!(self.evaluate(attributes), Ok(Value::Bool(true)))
    }

    /// As a metric tag: the value printed; `unknown` when it fails, as in
    /// Istio's stats filter.
    pub fn value(&self, attributes: &Attributes<'_>) -> String {
        match self.evaluate(attributes) {
            Ok(Value::String(s)) => s.to_string(),
            Ok(Value::Int(i)) => i.to_string(),
            Ok(Value::UInt(u)) => u.to_string(),
            Ok(Value::Float(f)) => f.to_string(),
            Ok(Value::Bool(b)) => b.to_string(),
            Ok(Value::Bytes(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(Value::Null) => "null".to_string(),
            _ => "unknown".to_string(),
        }
    }
}

/// The attributes named in an expression, and those this proxy lacks.
#[derive(Default)]
struct References {
    groups: Vec<&'static str>,
    /// Names bound by comprehensions (`exists(h, ...)`).
    bound: Vec<String>,
    unknown: Vec<String>,
}

impl References {
    fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Ident(name) => self.group(name),
            Expr::Select(s) => match &s.operand.expr {
                Expr::Ident(group) if !self.bound.contains(group) => {
                    self.group(group);
                    let fields = ATTRIBUTES.iter().find(|(g, _)| g == group).map(|(_, f)| *f).unwrap_or_default();
                    if !fields.is_empty() && !fields.contains(&s.field.as_str()) {
                        self.unknown.push(format!(
                            "attribute `{group}.{}` is not supported (supported: {})",
                            s.field,
                            fields.iter().map(|f| format!("{group}.{f}")).collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
                _ => self.walk(&s.operand),
            },
            Expr::Call(c) => {
                c.target.iter().for_each(|t| self.walk(t));
                c.args.iter().for_each(|a| self.walk(a));
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.walk(x)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(kv) = &entry.expr {
                        self.walk(&kv.key);
                        self.walk(&kv.value);
                    }
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.bound.push(c.accu_var.clone());
                for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(part);
                }
            }
            Expr::Literal(_) | Expr::Struct(_) | Expr::Unspecified => {}
        }
    }

    fn group(&mut self, name: &str) {
        if self.bound.iter().any(|b| b == name) || TYPE_NAMES.contains(&name) {
            return;
        }
        match ATTRIBUTES.iter().find(|(g, _)| *g == name) {
            Some((g, _)) if !self.groups.contains(g) => self.groups.push(g),
            Some(_) => {}
            None => self.unknown.push(format!(
                "attribute `{name}` is not supported (supported: {})",
                ATTRIBUTES.iter().map(|(g, _)| *g).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// What one proxy knows of one exchange, borrowed from the request path.
#[derive(Debug, Default)]
pub struct Attributes<'a> {
    /// `None` for TCP.
    pub request: Option<RequestAttributes<'a>>,
    /// `None` for TCP, and before the answer.
    pub response: Option<ResponseAttributes<'a>>,
    /// The downstream peer and the address it connected to.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub connection: ConnectionAttributes<'a>,
    pub cluster_name: &'a str,
    pub route_name: &'a str,
}

#[derive(Debug)]
pub struct RequestAttributes<'a> {
    pub method: &'a str,
    pub uri: &'a http::Uri,
    pub version: http::Version,
    pub headers: &'a http::HeaderMap,
    /// `x-request-id`.
    pub id: &'a str,
    /// The body's bytes, and the head's and body's.
    pub size: u64,
    pub total_size: u64,
}

#[derive(Debug)]
pub struct ResponseAttributes<'a> {
    pub code: u16,
    pub code_details: &'a str,
    pub grpc_status: Option<i64>,
    pub headers: &'a [(&'a http::HeaderName, &'a http::HeaderValue)],
    /// `None` for a body whose length is not known yet.
    pub size: Option<u64>,
    pub total_size: Option<u64>,
}

#[derive(Debug, Default)]
pub struct ConnectionAttributes<'a> {
    pub mtls: bool,
    pub requested_server_name: Option<&'a str>,
    /// The SPIFFE ID the peer proved.
    pub peer_principal: Option<&'a str>,
}

/// A group of attributes (`request`, `response`...) read field by field:
/// only what an expression names is computed, and strings are borrowed.
#[derive(Clone, Copy, Debug)]
struct Group<'a> {
    attributes: &'a Attributes<'a>,
    name: &'static str,
}

type Boxed<'a> = Box<dyn Val + 'a>;

fn text<'a>(s: impl Into<Cow<'a, str>>) -> Boxed<'a> {
    Box::new(CelString::from(s.into()))
}

fn int<'a>(n: impl TryInto<i64>) -> Boxed<'a> {
    Box::new(CelInt::from(n.try_into().unwrap_or(i64::MAX)))
}

fn header_text(value: &http::HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

/// A request's protocol as Envoy names it (`%PROTOCOL%`,
/// `request.protocol`, the `http.protocol` span tag).
pub fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl<'a> Group<'a> {
    fn field(&self, field: &str) -> Option<Boxed<'a>> {
        let a = self.attributes;
        let address = |addr: Option<SocketAddr>| match field {
            "address" => addr.map(|a| text(a.to_string())),
            "port" => addr.map(|a| int(a.port())),
            _ => None,
        };
        match self.name {
            "request" => a.request.as_ref().and_then(|r| r.field(field)),
            "response" => a.response.as_ref().and_then(|r| r.field(field)),
            "source" => address(a.source),
            "destination" => address(a.destination),
            "upstream" => address(a.upstream),
            "connection" => match field {
                "mtls" => Some(Box::new(CelBool::from(a.connection.mtls))),
                "requested_server_name" => a.connection.requested_server_name.map(text),
                "uri_san_peer_certificate" => a.connection.peer_principal.map(text),
                _ => None,
            },
            "xds" => match field {
                "cluster_name" => Some(text(a.cluster_name)),
                "route_name" => Some(text(a.route_name)),
                _ => None,
            },
            _ => None,
        }
    }
}

impl<'a> RequestAttributes<'a> {
    fn field(&self, field: &str) -> Option<Boxed<'a>> {
        let header = |name: http::HeaderName| self.headers.get(name).map(|v| text(header_text(v)));
        Some(match field {
            "path" => text(self.uri.path_and_query().map_or("/", |p| p.as_str())),
            "url_path" => text(self.uri.path()),
            "host" => return self.uri.authority().map(|a| text(a.as_str())).or_else(|| header(http::header::HOST)),
            "scheme" => text(self.uri.scheme_str().unwrap_or("http")),
            "method" => text(self.method),
            "headers" => Box::new(Headers::new(Fields::Map(self.headers))),
            "referer" => return header(http::header::REFERER),
            "useragent" => return header(http::header::USER_AGENT),
            "id" => text(self.id),
            "protocol" => text(protocol(self.version)),
            "query" => text(self.uri.query().unwrap_or_default()),
            "size" => int(self.size),
            "total_size" => int(self.total_size),
            _ => return None,
        })
    }
}

impl<'a> ResponseAttributes<'a> {
    fn field(&self, field: &str) -> Option<Boxed<'a>> {
        Some(match field {
            "code" => int(self.code),
            "code_details" => text(self.code_details),
            "grpc_status" => int(self.grpc_status?),
            "headers" => Box::new(Headers::new(Fields::Listed(self.headers))),
            "size" => int(self.size?),
            "total_size" => int(self.total_size?),
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Fields<'a> {
    Map(&'a http::HeaderMap),
    Listed(&'a [(&'a http::HeaderName, &'a http::HeaderValue)]),
}

/// Header fields as Envoy's attribute map has them, looked up where they
/// are: several values of a name joined with commas.
#[derive(Debug)]
struct Headers<'a> {
    fields: Fields<'a>,
    /// Their names, made only when an expression iterates them.
    names: OnceLock<Vec<CelString<'a>>>,
}

impl<'a> Headers<'a> {
    fn new(fields: Fields<'a>) -> Headers<'a> {
        Headers { fields, names: OnceLock::new() }
    }

    fn values(&self, name: &str) -> Vec<&'a http::HeaderValue> {
        match self.fields {
            Fields::Map(map) => map.get_all(name).iter().collect(),
            Fields::Listed(list) => list.iter().filter(|(n, _)| n.as_str() == name).map(|(_, v)| *v).collect(),
        }
    }

    fn joined(&self, name: &str) -> Option<Cow<'a, str>> {
        match self.values(name).as_slice() {
            [] => None,
            [one] => Some(header_text(one)),
            many => Some(Cow::Owned(many.iter().map(|v| header_text(v)).collect::<Vec<_>>().join(","))),
        }
    }

    fn names(&self) -> &[CelString<'a>] {
        self.names.get_or_init(|| {
            let mut names: Vec<&'a str> = match self.fields {
                Fields::Map(map) => map.keys().map(http::HeaderName::as_str).collect(),
                Fields::Listed(list) => list.iter().map(|(n, _)| n.as_str()).collect(),
            };
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(CelString::from).collect()
        })
    }
}

fn key(idx: &dyn Val) -> Result<&str, ExecutionError> {
    idx.downcast_ref::<CelString>().map(CelString::inner).ok_or_else(|| ExecutionError::no_such_key("non-string key"))
}

impl Val for Group<'_> {
    fn get_type(&self) -> &Type {
        &DYN_TYPE
    }
    fn cel_type() -> &'static Type {
        &DYN_TYPE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(*self)
    }
}

impl Indexer for Group<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let field = key(idx)?;
        self.field(field).map(CowVal::Owned).ok_or_else(|| ExecutionError::no_such_key(field))
    }
    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Val for Headers<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }
    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }
    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }
    fn as_iterable<'b, 'v>(&'b self) -> Option<&'b (dyn Iterable + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(Headers::new(self.fields))
    }
}

impl Indexer for Headers<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = key(idx)?;
        self.joined(name).map(|v| CowVal::Owned(text(v))).ok_or_else(|| ExecutionError::no_such_key(name))
    }
    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

impl Container for Headers<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(key(value).is_ok_and(|name| !self.values(name).is_empty()))
    }
}

impl Sizer for Headers<'_> {
    fn size(&self) -> CelInt {
        CelInt::from(i64::try_from(self.names().len()).unwrap_or(i64::MAX))
    }
}

impl Iterable for Headers<'_> {
    fn iter<'b, 'v>(&'b self) -> Box<dyn cel::common::traits::Iterator<'b, 'v> + 'b>
    where
        Self: 'v,
    {
        Box::new(Names(self.names().iter()))
    }
}

struct Names<'b, 'a>(std::slice::Iter<'b, CelString<'a>>);

impl<'b, 'a: 'v, 'v> cel::common::traits::Iterator<'b, 'v> for Names<'b, 'a> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        self.0.next().map(|n| n as &dyn Val)
    }
}

/// Each group is read only as far as an expression reads it.
impl cel::context::VariableResolver for Attributes<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let name = ATTRIBUTES.iter().map(|(g, _)| *g).find(|g| *g == variable)?;
        Some(CowVal::owned(Group { attributes: self, name }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_request<T>(f: impl FnOnce(&Attributes<'_>) -> T) -> T {
        let uri: http::Uri = "/reviews/1?page=2".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, http::HeaderValue::from_static("reviews:9080"));
        headers.insert("x-user", http::HeaderValue::from_static("jason"));
        headers.append("x-tag", http::HeaderValue::from_static("a"));
        headers.append("x-tag", http::HeaderValue::from_static("b"));
        let content_type = (&http::header::CONTENT_TYPE, &http::HeaderValue::from_static("text/plain"));
        let response_headers = [content_type];
        let attributes = Attributes {
            request: Some(RequestAttributes {
                method: "GET",
                uri: &uri,
                version: http::Version::HTTP_11,
                headers: &headers,
                id: "abc",
                size: 0,
                total_size: 60,
            }),
            response: Some(ResponseAttributes {
                code: 503,
                code_details: "upstream_reset_before_response_started",
                grpc_status: None,
                headers: &response_headers,
                size: Some(19),
                total_size: Some(80),
            }),
            source: Some("10.0.0.1:40000".parse().unwrap()),
            destination: Some("10.0.0.2:9080".parse().unwrap()),
            upstream: None,
            connection: ConnectionAttributes {
                mtls: true,
                requested_server_name: None,
                peer_principal: Some("spiffe://cluster.local/ns/default/sa/productpage"),
            },
            cluster_name: "inbound|9080||",
            route_name: "default",
        };
        f(&attributes)
    }

    #[test]
    fn tags_print_values_and_unknown_on_failure() {
        let cases = [
            ("request.host", "reviews:9080"),
            ("request.url_path", "/reviews/1"),
            ("request.path", "/reviews/1?page=2"),
            ("request.query", "page=2"),
            ("request.headers['x-user']", "jason"),
            ("request.headers['x-tag']", "a,b"),
            ("request.headers['x-missing']", "unknown"),
            ("'x-missing' in request.headers ? 'yes' : 'no'", "no"),
            ("response.code", "503"),
            ("response.code >= 500", "true"),
            ("response.headers['content-type']", "text/plain"),
            ("response.grpc_status", "unknown"),
            ("string(destination.port)", "9080"),
            ("source.address", "10.0.0.1:40000"),
            ("connection.uri_san_peer_certificate.endsWith('/sa/productpage')", "true"),
            ("xds.cluster_name", "inbound|9080||"),
            ("upstream.address", "unknown"),
            ("request.method + ' ' + request.url_path", "GET /reviews/1"),
        ];
        with_request(|a| {
            for (source, want) in cases {
                let e = Expression::compile(source).unwrap();
                assert_eq!(e.value(a), want, "{source}");
            }
        });
    }

    #[test]
    fn filters_are_true_only_for_true() {
        with_request(|a| {
            for (source, want) in [
                ("response.code >= 400", true),
                ("response.code >= 400 && !connection.mtls", false),
                ("request.headers['x-user'] == 'jason'", true),
                ("request.headers['x-missing'] == 'x'", false),
                ("request.url_path.matches('^/reviews/[0-9]+$')", true),
                ("request.headers.exists(h, h.startsWith('x-t'))", true),
                ("size(request.headers) > 1", true),
                ("request.host", false),
            ] {
                assert_eq!(Expression::compile(source).unwrap().matches(a), want, "{source}");
            }
            // TCP: no request attributes at all.
            let tcp = Attributes::default();
            assert!(!Expression::compile("response.code >= 400").unwrap().matches(&tcp));
        });
    }

    #[test]
    fn compile_names_what_is_not_supported() {
        for (source, needle) in [
            ("response.code >=", "not a valid CEL expression"),
            ("request.hostname", "attribute `request.hostname` is not supported"),
            ("response.flags == 0", "`response.flags`"),
            ("node.id", "attribute `node` is not supported"),
            ("filter_state['wasm.upstream_peer']", "attribute `filter_state`"),
            ("duration('1s') < request.size", "function `duration` is not supported"),
            ("request.path.lowerAscii()", "function `lowerAscii`"),
        ] {
            let err = Expression::compile(source).unwrap_err();
            assert!(err.contains(needle), "{source}: {err}");
        }
        let e = Expression::compile("[1, 2].exists(x, x > 1) && request.headers.all(k, k != '')").unwrap();
        assert!(e.reads("request") && !e.reads("response"));
    }

    #[test]
    fn every_listed_function_evaluates() {
        let calls = [
            "size('ab') == 2",
            "'ab'.contains('a')",
            "'ab'.startsWith('a')",
            "'ab'.endsWith('b')",
            "'ab'.matches('^a')",
            "string(1) == '1'",
            "int('2') == 2",
            "uint(2) == 2u",
            "double(1) == 1.0",
            "bytes('a') == b'a'",
            "bool('true')",
            "type(1) == int",
            "dyn(1) == 1",
        ];
        assert_eq!(calls.len(), FUNCTIONS.len());
        let none = Attributes::default();
        for source in calls {
            assert!(Expression::compile(source).unwrap().matches(&none), "{source}");
        }
    }
}
