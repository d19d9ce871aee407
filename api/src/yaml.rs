//! A YAML (and so JSON) document tree that remembers where every node came from.
//!
//! serde-based YAML crates stop at the first error and forget positions once a value is
//! built. Berth reports every error with its line and column, so manifests are first read
//! into this located tree and only then checked against the resource shapes.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in a source text: 1-based line and column (in characters), and the byte
/// offset used to underline the source when rendering diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A scalar as written. `plain` scalars are typed by their text (`8080` is a number,
    /// `true` a boolean, `~` null); quoted and block scalars are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Key nodes keep their own position so an unknown field is pointed at exactly.
    Map(Vec<(Node, Node)>),
}

/// What a scalar means under YAML 1.2's core schema (the one JSON agrees with).
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Node {
    pub fn scalar(&self) -> Option<Scalar<'_>> {
        match &self.kind {
            NodeKind::Scalar { text, plain } => Some(if *plain {
                core_schema(text)
            } else {
                Scalar::Str(text)
            }),
            _ => None,
        }
    }

    /// A short name of what the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
            NodeKind::Scalar { .. } => match self.scalar() {
                Some(Scalar::Null) => "nothing (null)",
                Some(Scalar::Bool(_)) => "a boolean",
                Some(Scalar::Int(_)) => "an integer",
                Some(Scalar::Float(_)) => "a number",
                _ => "a string",
            },
        }
    }

    /// The plain JSON reading of this node (no defaults, no checks): what an editor's
    /// schema validator sees.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (key_text(k), v.to_json()))
                    .collect(),
            ),
            NodeKind::Scalar { .. } => match self.scalar() {
                Some(Scalar::Null) | None => Value::Null,
                Some(Scalar::Bool(b)) => Value::Bool(b),
                Some(Scalar::Int(i)) => Value::from(i),
                Some(Scalar::Float(f)) => serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null),
                Some(Scalar::Str(s)) => Value::String(s.to_owned()),
            },
        }
    }
}

/// The text of a mapping key; non-scalar keys (legal YAML, never valid here) get a
/// placeholder that cannot match a field name.
pub fn key_text(key: &Node) -> String {
    match &key.kind {
        NodeKind::Scalar { text, .. } => text.clone(),
        _ => "<complex key>".to_owned(),
    }
}

fn core_schema(text: &str) -> Scalar<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Scalar::Int(i);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Scalar::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Scalar::Int(i);
        }
    }
    let looks_numeric = text
        .trim_start_matches(['-', '+'])
        .starts_with(|c: char| c.is_ascii_digit() || c == '.');
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Scalar::Float(f);
        }
    }
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => Scalar::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Scalar::Float(f64::NAN),
        _ => Scalar::Str(text),
    }
}

/// A syntax error, with where it was found.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Anchors let a small file expand into a huge tree ("billion laughs"); past this many
/// nodes a file is refused rather than expanded.
const MAX_NODES: usize = 200_000;
const MAX_DEPTH: usize = 64;

/// Parses every document of a YAML stream. Empty documents (only comments) are skipped.
pub fn parse_documents(src: &str) -> Result<Vec<Node>, SyntaxError> {
    let lines = LineIndex::new(src);
    let mut builder = Builder {
        lines: &lines,
        anchors: Vec::new(),
        nodes: 0,
    };
    let mut parser = Parser::new_from_str(src);
    let mut docs = Vec::new();
    loop {
        let (event, span) = builder.next(&mut parser)?;
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => return Ok(docs),
            Event::DocumentStart(_) => {
                builder.anchors.clear();
                let (event, span) = builder.next(&mut parser)?;
                if matches!(event, Event::DocumentEnd) {
                    continue;
                }
                let node = builder.node(&mut parser, event, span, 0)?;
                if !matches!(&node.kind, NodeKind::Scalar { text, plain: true } if text.is_empty())
                {
                    docs.push(node);
                }
            }
            other => {
                return Err(SyntaxError {
                    pos: lines.pos(span),
                    message: format!("unexpected {other:?} outside a document"),
                })
            }
        }
    }
}

struct Builder<'a> {
    lines: &'a LineIndex,
    anchors: Vec<(usize, Node)>,
    nodes: usize,
}

impl Builder<'_> {
    fn next<'i>(
        &self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
    ) -> Result<(Event<'i>, Span), SyntaxError> {
        match parser.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => {
                let m = e.marker();
                Err(SyntaxError {
                    pos: self.lines.at(m.line(), m.col()),
                    message: e.info().to_owned(),
                })
            }
            None => Err(SyntaxError {
                pos: Pos::default(),
                message: "unexpected end of input".to_owned(),
            }),
        }
    }

    fn count(&mut self, pos: Pos, n: usize) -> Result<(), SyntaxError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "document expands to more than {MAX_NODES} nodes (nested aliases?)"
                ),
            });
        }
        Ok(())
    }

    fn node<'i>(
        &mut self,
        parser: &mut Parser<'i, saphyr_parser::StrInput<'i>>,
        event: Event<'i>,
        span: Span,
        depth: usize,
    ) -> Result<Node, SyntaxError> {
        let pos = self.lines.pos(span);
        if depth > MAX_DEPTH {
            return Err(SyntaxError {
                pos,
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
            });
        }
        self.count(pos, 1)?;
        let (node, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    match (tag.handle.as_str(), tag.suffix.as_str()) {
                        ("!!", "str") | ("tag:yaml.org,2002:", "str") => plain = false,
                        _ => {
                            return Err(SyntaxError {
                                pos,
                                message: format!(
                                    "unsupported tag `{}{}` (only !!str is understood)",
                                    tag.handle, tag.suffix
                                ),
                            })
                        }
                    }
                }
                let kind = NodeKind::Scalar {
                    text: text.into_owned(),
                    plain,
                };
                (Node { pos, kind }, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next(parser)?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(parser, event, span, depth + 1)?);
                }
                let kind = NodeKind::Seq(items);
                (Node { pos, kind }, anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries = Vec::new();
                loop {
                    let (event, span) = self.next(parser)?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(parser, event, span, depth + 1)?;
                    let (event, span) = self.next(parser)?;
                    let value = self.node(parser, event, span, depth + 1)?;
                    entries.push((key, value));
                }
                let kind = NodeKind::Map(entries);
                (Node { pos, kind }, anchor)
            }
            Event::Alias(id) => {
                let Some((_, target)) = self.anchors.iter().rev().find(|(a, _)| *a == id) else {
                    return Err(SyntaxError {
                        pos,
                        message: "alias to an unknown anchor".to_owned(),
                    });
                };
                let mut copy = target.clone();
                self.count(pos, size(&copy))?;
                copy.pos = pos;
                return Ok(copy);
            }
            other => {
                return Err(SyntaxError {
                    pos,
                    message: format!("unexpected {other:?}"),
                })
            }
        };
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        Ok(node)
    }
}

fn size(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| size(k) + size(v))
                .sum::<usize>()
        }
    }
}

/// Maps the parser's (line, character column) to byte offsets for rendering.
struct LineIndex {
    /// Byte offset of each line's start, and the line's text.
    starts: Vec<usize>,
    text: String,
}

impl LineIndex {
    fn new(src: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            starts,
            text: src.to_owned(),
        }
    }

    fn pos(&self, span: Span) -> Pos {
        self.at(span.start.line(), span.start.col())
    }

    /// `line` is 1-based, `col` a 0-based count of characters.
    fn at(&self, line: usize, col: usize) -> Pos {
        let line = line.clamp(1, self.starts.len());
        let start = self.starts[line - 1];
        let end = self.starts.get(line).copied().unwrap_or(self.text.len());
        let offset = self.text[start..end]
            .char_indices()
            .nth(col)
            .map(|(i, _)| start + i)
            .unwrap_or(end);
        Pos {
            line,
            column: col + 1,
            offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Node {
        let mut docs = parse_documents(src).expect("parses");
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let doc = one("a: 1\nb:\n  c: x\n");
        let NodeKind::Map(entries) = &doc.kind else {
            panic!("map")
        };
        let (k, v) = &entries[1];
        assert_eq!((k.pos.line, k.pos.column), (2, 1));
        let NodeKind::Map(inner) = &v.kind else {
            panic!("map")
        };
        assert_eq!((inner[0].1.pos.line, inner[0].1.pos.column), (3, 6));
        assert_eq!(inner[0].1.pos.offset, "a: 1\nb:\n  c: ".len());
    }

    #[test]
    fn plain_scalars_follow_the_core_schema_and_quoted_ones_stay_strings() {
        let doc = one("[8080, '8080', true, ~, 1.5, x, !!str 7]");
        let NodeKind::Seq(items) = &doc.kind else {
            panic!("seq")
        };
        let got: Vec<_> = items.iter().map(|n| n.scalar().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Scalar::Int(8080),
                Scalar::Str("8080"),
                Scalar::Bool(true),
                Scalar::Null,
                Scalar::Float(1.5),
                Scalar::Str("x"),
                Scalar::Str("7"),
            ]
        );
    }

    #[test]
    fn several_documents_and_empty_ones_are_skipped() {
        let docs = parse_documents("---\n# nothing\n---\na: 1\n---\nb: 2\n...\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].pos.line, 6);
    }

    #[test]
    fn json_is_read_too() {
        let doc = one("{\"kind\": \"Host\",\n \"spec\": {\"address\": \"local\"}}");
        assert_eq!(doc.to_json()["spec"]["address"], "local");
    }

    #[test]
    fn aliases_expand_but_a_bomb_is_refused() {
        let doc = one("a: &x [1, 2]\nb: *x\n");
        assert_eq!(doc.to_json()["b"], serde_json::json!([1, 2]));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&bomb).unwrap_err();
        assert!(err.message.contains("more than"), "{err:?}");
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse_documents("a: 1\nb: [1, 2\n").unwrap_err();
        assert!(err.pos.line >= 2, "{err:?}");
    }
}
