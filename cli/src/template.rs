//! A small Go-template engine for `--format` and `inspect -f`, evaluated on
//! JSON values: `{{.A.B}}`, `{{json .}}`, `{{index .Labels "k"}}`, pipes,
//! `{{if}}`/`{{else}}`/`{{range}}`/`{{with}}`/`{{end}}`, `{{- -}}` trimming,
//! and docker's extra functions (join, split, upper, lower, title, pad,
//! truncate). No Go-template crate exists, and docker users' formats only
//! need this much.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template parsing error: {0}")]
    Parse(String),
    #[error("template: {0}")]
    Exec(String),
}

fn parse_error(message: impl Into<String>) -> TemplateError {
    TemplateError::Parse(message.into())
}

fn exec_error(message: impl Into<String>) -> TemplateError {
    TemplateError::Exec(message.into())
}

/// Methods of the data beyond its JSON fields, e.g. `ps`'s `{{.Label "k"}}`.
pub trait Methods {
    /// The value of `.name args...`, or None when there is no such method.
    fn call(&self, name: &str, args: &[Value]) -> Option<Value>;
}

/// Data without methods.
pub struct NoMethods;

impl Methods for NoMethods {
    fn call(&self, _name: &str, _args: &[Value]) -> Option<Value> {
        None
    }
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Output(Pipeline),
    If { branches: Vec<(Pipeline, Vec<Node>)>, otherwise: Vec<Node> },
    Range { pipeline: Pipeline, body: Vec<Node>, otherwise: Vec<Node> },
    With { pipeline: Pipeline, body: Vec<Node>, otherwise: Vec<Node> },
}

#[derive(Debug, Clone)]
struct Pipeline {
    commands: Vec<Vec<Operand>>,
}

#[derive(Debug, Clone)]
enum Operand {
    /// `.A.B` (from dot) or `$.A.B` (from the top-level data).
    Path {
        from_root: bool,
        fields: Vec<String>,
    },
    Literal(Value),
    Function(String),
    Nested(Pipeline),
    /// `(PIPELINE).A.B`.
    Chained(Pipeline, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Path {
        from_root: bool,
        fields: Vec<String>,
    },
    Literal(Value),
    Ident(String),
    Pipe,
    Open,
    Close,
    /// `.A.B` right after `)`.
    Chain(Vec<String>),
}

/// What the template source is cut into: text, and the tokens of actions.
enum Piece {
    Text(String),
    Action(Vec<Token>),
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let pieces = split(source)?;
        let mut position = 0;
        let (nodes, end) = parse_nodes(&pieces, &mut position)?;
        match end {
            Terminator::Eof => Ok(Template { nodes }),
            Terminator::End => Err(parse_error("unexpected {{end}}")),
            Terminator::Else(_) => Err(parse_error("unexpected {{else}}")),
        }
    }

    pub fn render(&self, data: &Value) -> Result<String, TemplateError> {
        self.render_with(data, &NoMethods)
    }

    pub fn render_with(&self, data: &Value, methods: &dyn Methods) -> Result<String, TemplateError> {
        let scope = Scope { root: data, methods };
        let mut out = String::new();
        scope.run(&self.nodes, data, &mut out)?;
        Ok(out)
    }
}

// ---- lexing -------------------------------------------------------------

fn split(source: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = source;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let mut action = &rest[start + 2..];
        if action.starts_with('-') && action[1..].starts_with(char::is_whitespace) {
            text = text.trim_end();
            action = &action[1..];
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
        let (tokens, consumed, trim) = lex_action(action)?;
        if let Some(tokens) = tokens {
            pieces.push(Piece::Action(tokens));
        }
        rest = &action[consumed..];
        trim_next = trim;
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    if !text.is_empty() {
        pieces.push(Piece::Text(text.to_string()));
    }
    Ok(pieces)
}

/// The tokens of one action (None for a comment), the bytes it used up to
/// and including `}}`, and whether it ends with `-}}`.
fn lex_action(source: &str) -> Result<(Option<Vec<Token>>, usize, bool), TemplateError> {
    if let Some(comment) = source.trim_start().strip_prefix("/*") {
        let close = comment.find("*/").ok_or_else(|| parse_error("unclosed comment"))?;
        let after = &comment[close + 2..];
        let (consumed_after, trim) = action_end(after).ok_or_else(|| parse_error("comment ends without }}"))?;
        let consumed = source.len() - after.len() + consumed_after;
        return Ok((None, consumed, trim));
    }
    let mut tokens = Vec::new();
    let mut position = 0;
    loop {
        let rest = &source[position..];
        if let Some((consumed, trim)) = action_end(rest) {
            return Ok((Some(tokens), position + consumed, trim));
        }
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            return Err(parse_error("unclosed action"));
        }
        let spaced = trimmed.len() < rest.len();
        position += rest.len() - trimmed.len();
        if action_end(&source[position..]).is_some() {
            continue;
        }
        let (token, length) = lex_token(&source[position..])?;
        let token = match token {
            Token::Path { from_root: false, fields } if !spaced && tokens.last() == Some(&Token::Close) => {
                Token::Chain(fields)
            }
            token => token,
        };
        tokens.push(token);
        position += length;
    }
}

/// How many bytes end an action here (`}}`, or whitespace and `-}}`).
fn action_end(source: &str) -> Option<(usize, bool)> {
    if source.starts_with("}}") {
        return Some((2, false));
    }
    let trimmed = source.trim_start();
    if trimmed.len() < source.len() && trimmed.starts_with("-}}") {
        return Some((source.len() - trimmed.len() + 3, true));
    }
    None
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn lex_token(source: &str) -> Result<(Token, usize), TemplateError> {
    let first = source.chars().next().unwrap_or(' ');
    match first {
        '|' => Ok((Token::Pipe, 1)),
        '(' => Ok((Token::Open, 1)),
        ')' => Ok((Token::Close, 1)),
        '"' => lex_string(source),
        '`' => {
            let end = source[1..].find('`').ok_or_else(|| parse_error("unterminated raw string"))?;
            Ok((Token::Literal(Value::String(source[1..=end].to_string())), end + 2))
        }
        '.' => {
            let (fields, length) = lex_fields(source)?;
            Ok((Token::Path { from_root: false, fields }, length))
        }
        '$' => {
            let name_length = source[1..].find(|c| !is_ident_char(c)).unwrap_or(source.len() - 1);
            if name_length > 0 {
                return Err(parse_error(format!("undefined variable \"{}\"", &source[..=name_length])));
            }
            let (fields, length) = if source[1..].starts_with('.') { lex_fields(&source[1..])? } else { (vec![], 0) };
            Ok((Token::Path { from_root: true, fields }, length + 1))
        }
        c if c.is_ascii_digit() || (c == '-' && source[1..].starts_with(|d: char| d.is_ascii_digit())) => {
            let length = 1 + source[1..].find(|d: char| !d.is_ascii_digit() && d != '.').unwrap_or(source.len() - 1);
            let number: Value = serde_json::from_str(&source[..length])
                .map_err(|_| parse_error(format!("bad number syntax: {:?}", &source[..length])))?;
            Ok((Token::Literal(number), length))
        }
        c if is_ident_char(c) => {
            let length = source.find(|c| !is_ident_char(c)).unwrap_or(source.len());
            let token = match &source[..length] {
                "true" => Token::Literal(Value::Bool(true)),
                "false" => Token::Literal(Value::Bool(false)),
                "nil" => Token::Literal(Value::Null),
                word => Token::Ident(word.to_string()),
            };
            Ok((token, length))
        }
        other => Err(parse_error(format!("unexpected {other:?} in command"))),
    }
}

/// `.A.B` as ["A", "B"]; `.` alone as no fields.
fn lex_fields(source: &str) -> Result<(Vec<String>, usize), TemplateError> {
    let mut fields = Vec::new();
    let mut position = 0;
    while source[position..].starts_with('.') {
        let name = &source[position + 1..];
        let length = name.find(|c| !is_ident_char(c)).unwrap_or(name.len());
        if length == 0 {
            if fields.is_empty() && position == 0 {
                return Ok((fields, 1));
            }
            return Err(parse_error(format!("bad field name in {source:?}")));
        }
        fields.push(name[..length].to_string());
        position += 1 + length;
    }
    Ok((fields, position))
}

/// A double-quoted string with Go's escapes.
fn lex_string(source: &str) -> Result<(Token, usize), TemplateError> {
    let mut out = String::new();
    let mut chars = source.char_indices().skip(1);
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Ok((Token::Literal(Value::String(out)), index + 1)),
            '\\' => {
                let (_, escaped) = chars.next().ok_or_else(|| parse_error("unterminated quoted string"))?;
                out.push(match escaped {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    other => other,
                });
            }
            c => out.push(c),
        }
    }
    Err(parse_error("unterminated quoted string"))
}

// ---- parsing ------------------------------------------------------------

enum Terminator {
    Eof,
    End,
    /// `{{else}}`, or `{{else if PIPELINE}}`.
    Else(Option<Pipeline>),
}

fn parse_nodes(pieces: &[Piece], position: &mut usize) -> Result<(Vec<Node>, Terminator), TemplateError> {
    let mut nodes = Vec::new();
    while let Some(piece) = pieces.get(*position) {
        *position += 1;
        let tokens = match piece {
            Piece::Text(text) => {
                nodes.push(Node::Text(text.clone()));
                continue;
            }
            Piece::Action(tokens) => tokens,
        };
        match tokens.first() {
            Some(Token::Ident(word)) if word == "end" => return Ok((nodes, Terminator::End)),
            Some(Token::Ident(word)) if word == "else" => {
                let rest = &tokens[1..];
                let condition = match rest.first() {
                    None => None,
                    Some(Token::Ident(word)) if word == "if" => Some(parse_action_pipeline(&rest[1..])?),
                    Some(_) => return Err(parse_error("unexpected tokens after else")),
                };
                return Ok((nodes, Terminator::Else(condition)));
            }
            Some(Token::Ident(word)) if word == "if" => nodes.push(parse_if(&tokens[1..], pieces, position)?),
            Some(Token::Ident(word)) if word == "range" || word == "with" => {
                let pipeline = parse_action_pipeline(&tokens[1..])?;
                let (body, otherwise) = parse_block(word, pieces, position)?;
                nodes.push(if word == "range" {
                    Node::Range { pipeline, body, otherwise }
                } else {
                    Node::With { pipeline, body, otherwise }
                });
            }
            Some(Token::Ident(word)) if matches!(word.as_str(), "define" | "template" | "block") => {
                return Err(parse_error(format!("{{{{{word}}}}} is not supported")));
            }
            _ => nodes.push(Node::Output(parse_action_pipeline(tokens)?)),
        }
    }
    Ok((nodes, Terminator::Eof))
}

fn parse_if(condition: &[Token], pieces: &[Piece], position: &mut usize) -> Result<Node, TemplateError> {
    let mut branches = Vec::new();
    let mut condition = parse_action_pipeline(condition)?;
    loop {
        let (body, end) = parse_nodes(pieces, position)?;
        branches.push((condition, body));
        match end {
            Terminator::End => return Ok(Node::If { branches, otherwise: Vec::new() }),
            Terminator::Else(Some(next)) => condition = next,
            Terminator::Else(None) => {
                let (otherwise, end) = parse_nodes(pieces, position)?;
                expect_end("if", end)?;
                return Ok(Node::If { branches, otherwise });
            }
            Terminator::Eof => return Err(parse_error("unexpected EOF: {{if}} without {{end}}")),
        }
    }
}

/// The body of a range or with, and its else part.
fn parse_block(word: &str, pieces: &[Piece], position: &mut usize) -> Result<(Vec<Node>, Vec<Node>), TemplateError> {
    let (body, end) = parse_nodes(pieces, position)?;
    match end {
        Terminator::End => Ok((body, Vec::new())),
        Terminator::Else(None) => {
            let (otherwise, end) = parse_nodes(pieces, position)?;
            expect_end(word, end)?;
            Ok((body, otherwise))
        }
        Terminator::Else(Some(_)) => Err(parse_error(format!("{{{{else if}}}} inside {{{{{word}}}}}"))),
        Terminator::Eof => Err(parse_error(format!("unexpected EOF: {{{{{word}}}}} without {{{{end}}}}"))),
    }
}

fn expect_end(word: &str, end: Terminator) -> Result<(), TemplateError> {
    match end {
        Terminator::End => Ok(()),
        _ => Err(parse_error(format!("{{{{{word}}}}} without {{{{end}}}}"))),
    }
}

fn parse_action_pipeline(tokens: &[Token]) -> Result<Pipeline, TemplateError> {
    if tokens.is_empty() {
        return Err(parse_error("missing value for command"));
    }
    let mut position = 0;
    let pipeline = parse_pipeline(tokens, &mut position)?;
    if position != tokens.len() {
        return Err(parse_error("unexpected \")\" in command"));
    }
    Ok(pipeline)
}

fn parse_pipeline(tokens: &[Token], position: &mut usize) -> Result<Pipeline, TemplateError> {
    let mut commands = vec![parse_command(tokens, position)?];
    while tokens.get(*position) == Some(&Token::Pipe) {
        *position += 1;
        commands.push(parse_command(tokens, position)?);
    }
    Ok(Pipeline { commands })
}

fn parse_command(tokens: &[Token], position: &mut usize) -> Result<Vec<Operand>, TemplateError> {
    let mut operands = Vec::new();
    while let Some(token) = tokens.get(*position) {
        let operand = match token {
            Token::Pipe | Token::Close => break,
            Token::Open => {
                *position += 1;
                let nested = parse_pipeline(tokens, position)?;
                if tokens.get(*position) != Some(&Token::Close) {
                    return Err(parse_error("unclosed left paren"));
                }
                match tokens.get(*position + 1) {
                    Some(Token::Chain(fields)) => {
                        *position += 1;
                        Operand::Chained(nested, fields.clone())
                    }
                    _ => Operand::Nested(nested),
                }
            }
            Token::Chain(_) => return Err(parse_error("unexpected field chain")),
            Token::Path { from_root, fields } => Operand::Path { from_root: *from_root, fields: fields.clone() },
            Token::Literal(value) => Operand::Literal(value.clone()),
            Token::Ident(name) if is_function(name) => Operand::Function(name.clone()),
            Token::Ident(name) => return Err(parse_error(format!("function {name:?} not defined"))),
        };
        operands.push(operand);
        *position += 1;
    }
    if operands.is_empty() {
        return Err(parse_error("missing value for command"));
    }
    Ok(operands)
}

const FUNCTIONS: [&str; 17] = [
    "json", "index", "join", "split", "upper", "lower", "title", "len", "print", "println", "eq", "ne", "not", "and",
    "or", "pad", "truncate",
];

fn is_function(name: &str) -> bool {
    FUNCTIONS.contains(&name)
}

// ---- evaluation ---------------------------------------------------------

/// The top-level data and its methods while a template runs.
struct Scope<'a> {
    root: &'a Value,
    methods: &'a dyn Methods,
}

/// A value, or None for a missing map key (printed as Go's `<no value>`).
type Val = Option<Value>;

impl Scope<'_> {
    fn run(&self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), TemplateError> {
        for node in nodes {
            match node {
                Node::Text(text) => out.push_str(text),
                Node::Output(pipeline) => out.push_str(&display(&self.pipeline(pipeline, dot)?)),
                Node::If { branches, otherwise } => {
                    let mut chosen = otherwise;
                    for (condition, body) in branches {
                        if truthy(&self.pipeline(condition, dot)?) {
                            chosen = body;
                            break;
                        }
                    }
                    self.run(chosen, dot, out)?;
                }
                Node::With { pipeline, body, otherwise } => match self.pipeline(pipeline, dot)? {
                    Some(value) if truthy(&Some(value.clone())) => self.run(body, &value, out)?,
                    _ => self.run(otherwise, dot, out)?,
                },
                Node::Range { pipeline, body, otherwise } => {
                    let items = match self.pipeline(pipeline, dot)? {
                        Some(Value::Array(items)) => items,
                        Some(Value::Object(map)) => sorted(&map).into_iter().map(|(_, v)| v.clone()).collect(),
                        None | Some(Value::Null) => Vec::new(),
                        Some(other) => {
                            return Err(exec_error(format!("range can't iterate over {}", display(&Some(other)))));
                        }
                    };
                    if items.is_empty() {
                        self.run(otherwise, dot, out)?;
                    }
                    for item in &items {
                        self.run(body, item, out)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn pipeline(&self, pipeline: &Pipeline, dot: &Value) -> Result<Val, TemplateError> {
        let mut piped: Option<Val> = None;
        for command in &pipeline.commands {
            piped = Some(self.command(command, dot, piped)?);
        }
        Ok(piped.flatten())
    }

    fn command(&self, operands: &[Operand], dot: &Value, piped: Option<Val>) -> Result<Val, TemplateError> {
        let (first, rest) = operands.split_first().ok_or_else(|| exec_error("empty command"))?;
        let mut args = rest.iter().map(|operand| self.operand(operand, dot)).collect::<Result<Vec<_>, _>>()?;
        args.extend(piped);
        match first {
            Operand::Function(name) => call_function(name, &args),
            Operand::Path { from_root: false, fields } if fields.len() == 1 && !args.is_empty() => {
                let args: Vec<Value> = args.into_iter().map(Option::unwrap_or_default).collect();
                match self.methods.call(&fields[0], &args) {
                    Some(value) => Ok(Some(value)),
                    None => Err(exec_error(format!("can't call method/function {:?}", fields[0]))),
                }
            }
            _ if !args.is_empty() => Err(exec_error("can't give argument to non-function")),
            operand => self.operand(operand, dot),
        }
    }

    fn operand(&self, operand: &Operand, dot: &Value) -> Result<Val, TemplateError> {
        match operand {
            Operand::Literal(value) => Ok(Some(value.clone())),
            Operand::Nested(pipeline) => self.pipeline(pipeline, dot),
            Operand::Chained(pipeline, fields) => match self.pipeline(pipeline, dot)? {
                Some(value) => walk(&value, fields),
                None => Ok(None),
            },
            Operand::Function(name) => call_function(name, &[]),
            Operand::Path { from_root, fields } => {
                let start = if *from_root { self.root } else { dot };
                if fields.len() == 1
                    && let Some(value) = self.methods.call(&fields[0], &[])
                {
                    return Ok(Some(value));
                }
                walk(start, fields)
            }
        }
    }
}

/// Follows `.A.B` through objects; a missing key is `<no value>`.
fn walk(start: &Value, fields: &[String]) -> Result<Val, TemplateError> {
    let mut current = start;
    for field in fields {
        match current {
            Value::Object(map) => match map.get(field) {
                Some(next) => current = next,
                None => return Ok(None),
            },
            Value::Null => return Ok(None),
            other => {
                return Err(exec_error(format!("can't evaluate field {field} in type {}", type_name(other))));
            }
        }
    }
    Ok(Some(current.clone()))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "map",
    }
}

fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Go's `%v` of a JSON value.
pub fn display(value: &Val) -> String {
    match value {
        None => "<no value>".to_string(),
        Some(Value::Null) => "<nil>".to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Bool(flag)) => flag.to_string(),
        Some(Value::Number(number)) => number.to_string(),
        Some(Value::Array(items)) => {
            let items: Vec<String> = items.iter().map(|item| display(&Some(item.clone()))).collect();
            format!("[{}]", items.join(" "))
        }
        Some(Value::Object(map)) => {
            let entries: Vec<String> =
                sorted(map).into_iter().map(|(k, v)| format!("{k}:{}", display(&Some(v.clone())))).collect();
            format!("map[{}]", entries.join(" "))
        }
    }
}

fn truthy(value: &Val) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(Value::Number(number)) => number.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(text)) => !text.is_empty(),
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Object(map)) => !map.is_empty(),
    }
}

fn arity(name: &str, args: &[Val], expected: usize) -> Result<(), TemplateError> {
    if args.len() == expected {
        Ok(())
    } else {
        Err(exec_error(format!("wrong number of args for {name}: want {expected} got {}", args.len())))
    }
}

fn text_arg(args: &[Val], index: usize) -> String {
    match args.get(index) {
        Some(value) => display(value),
        None => String::new(),
    }
}

fn int_arg(name: &str, args: &[Val], index: usize) -> Result<usize, TemplateError> {
    args.get(index)
        .and_then(|v| v.as_ref())
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| exec_error(format!("{name}: argument {} must be a non-negative integer", index + 1)))
}

fn call_function(name: &str, args: &[Val]) -> Result<Val, TemplateError> {
    let text = |value: String| Ok(Some(Value::String(value)));
    match name {
        "json" => {
            arity(name, args, 1)?;
            let value = args[0].clone().unwrap_or_default();
            text(serde_json::to_string(&value).map_err(|e| exec_error(e.to_string()))?)
        }
        "index" => index(args),
        "join" => {
            arity(name, args, 2)?;
            let items = match &args[0] {
                Some(Value::Array(items)) => items.iter().map(|item| display(&Some(item.clone()))).collect(),
                other => vec![display(other)],
            };
            text(items.join(&text_arg(args, 1)))
        }
        "split" => {
            arity(name, args, 2)?;
            let parts = text_arg(args, 0).split(&text_arg(args, 1)).map(|p| Value::String(p.to_string())).collect();
            Ok(Some(Value::Array(parts)))
        }
        "upper" => text(text_arg(args, 0).to_uppercase()),
        "lower" => text(text_arg(args, 0).to_lowercase()),
        "title" => text(title_case(&text_arg(args, 0))),
        "len" => {
            arity(name, args, 1)?;
            let length = match &args[0] {
                Some(Value::Array(items)) => items.len(),
                Some(Value::Object(map)) => map.len(),
                Some(Value::String(s)) => s.len(),
                other => return Err(exec_error(format!("len of {}", display(other)))),
            };
            Ok(Some(Value::from(length)))
        }
        "print" => text(args.iter().map(display).collect::<Vec<_>>().concat()),
        "println" => text(format!("{}\n", args.iter().map(display).collect::<Vec<_>>().join(" "))),
        "eq" | "ne" => {
            if args.len() < 2 {
                return Err(exec_error(format!("wrong number of args for {name}: want at least 2")));
            }
            let equal = args[1..].iter().any(|other| *other == args[0]);
            Ok(Some(Value::Bool(equal == (name == "eq"))))
        }
        "not" => {
            arity(name, args, 1)?;
            Ok(Some(Value::Bool(!truthy(&args[0]))))
        }
        "and" => Ok(args.iter().find(|a| !truthy(a)).or(args.last()).cloned().flatten()),
        "or" => Ok(args.iter().find(|a| truthy(a)).or(args.last()).cloned().flatten()),
        "pad" => {
            arity(name, args, 3)?;
            let (left, right) = (int_arg(name, args, 1)?, int_arg(name, args, 2)?);
            text(format!("{}{}{}", " ".repeat(left), text_arg(args, 0), " ".repeat(right)))
        }
        "truncate" => {
            arity(name, args, 2)?;
            text(text_arg(args, 0).chars().take(int_arg(name, args, 1)?).collect())
        }
        _ => Err(exec_error(format!("function {name:?} is not supported"))),
    }
}

/// `index COLLECTION KEY...`: a map by string key ("" when missing, as for
/// docker's string maps) or an array by position.
fn index(args: &[Val]) -> Result<Val, TemplateError> {
    let (collection, keys) = args.split_first().ok_or_else(|| exec_error("wrong number of args for index"))?;
    let mut current = collection.clone();
    for key in keys {
        current = match (current, key) {
            (Some(Value::Object(map)), Some(Value::String(k))) => {
                Some(map.get(k).cloned().unwrap_or(Value::String(String::new())))
            }
            (Some(Value::Array(items)), Some(Value::Number(n))) => {
                let position = n.as_u64().and_then(|p| usize::try_from(p).ok());
                let item = position.and_then(|p| items.get(p));
                Some(item.cloned().ok_or_else(|| exec_error(format!("index out of range: {n}")))?)
            }
            (None | Some(Value::Null), _) => Some(Value::String(String::new())),
            (other, key) => {
                return Err(exec_error(format!("can't index item of type {} with {}", kind(&other), display(key))));
            }
        };
    }
    Ok(current)
}

fn kind(value: &Val) -> &'static str {
    value.as_ref().map_or("nil", type_name)
}

fn title_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at_word_start = true;
    for c in text.chars() {
        if at_word_start {
            out.extend(c.to_uppercase())
        } else {
            out.push(c)
        }
        at_word_start = !c.is_alphanumeric();
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(source: &str, data: &Value) -> String {
        Template::parse(source).unwrap().render(data).unwrap()
    }

    fn data() -> Value {
        json!({
            "Id": "abc",
            "State": {"Status": "running", "Pid": 42, "Running": true, "Health": null},
            "Config": {"Labels": {"tier": "web", "a.b": "c"}, "Env": ["A=1", "B=2"], "Tty": false},
            "Mounts": [{"Source": "/srv", "Destination": "/data"}, {"Source": "/x", "Destination": "/y"}],
        })
    }

    #[test]
    fn fields_and_text() {
        assert_eq!(render("{{.State.Status}}", &data()), "running");
        assert_eq!(render("pid={{.State.Pid}} tty={{.Config.Tty}}", &data()), "pid=42 tty=false");
        assert_eq!(render("{{.Missing}}|{{.State.Missing.Deeper}}", &data()), "<no value>|<no value>");
        assert_eq!(render("{{.State.Health}}", &data()), "<nil>");
        assert_eq!(render("{{.Config.Env}}", &data()), "[A=1 B=2]");
        assert_eq!(render("{{.Config.Labels}}", &data()), "map[a.b:c tier:web]");
        assert_eq!(render("{{$.Id}} {{.}}", &json!({"Id": "x"})), "x map[Id:x]");
    }

    #[test]
    fn json_and_index() {
        assert_eq!(render("{{json .Config.Labels}}", &data()), r#"{"a.b":"c","tier":"web"}"#);
        assert_eq!(render("{{json .State.Pid}}", &data()), "42");
        assert_eq!(render(r#"{{index .Config.Labels "a.b"}}"#, &data()), "c");
        assert_eq!(render(r#"{{index .Config.Labels "nope"}}"#, &data()), "");
        assert_eq!(render("{{index .Config.Env 1}}", &data()), "B=2");
        assert_eq!(render("{{(index .Mounts 0).Source}}", &data()).as_str(), "/srv");
        assert!(Template::parse("{{index .Config.Env 5}}").unwrap().render(&data()).is_err());
    }

    #[test]
    fn pipes_and_functions() {
        assert_eq!(render("{{.State.Status | upper}}", &data()), "RUNNING");
        assert_eq!(render(r#"{{join .Config.Env ","}}"#, &data()), "A=1,B=2");
        assert_eq!(render(r#"{{split "a:b" ":"}}"#, &data()), "[a b]");
        assert_eq!(render("{{len .Mounts}}", &data()), "2");
        assert_eq!(render(r#"{{title "hello world"}}"#, &data()), "Hello World");
        assert_eq!(render("{{truncate .Id 2}}", &data()), "ab");
        assert_eq!(render(r#"{{pad "x" 1 2}}|"#, &data()), " x  |");
        assert_eq!(render(r#"{{println "a" "b"}}"#, &data()), "a b\n");
        assert_eq!(render(r#"{{eq .State.Status "running"}}"#, &data()), "true");
    }

    #[test]
    fn control_flow() {
        assert_eq!(render("{{range .Mounts}}{{.Source}}->{{.Destination}} {{end}}", &data()), "/srv->/data /x->/y ");
        assert_eq!(render("{{range .Nothing}}x{{else}}empty{{end}}", &data()), "empty");
        assert_eq!(render("{{if .State.Running}}up{{else}}down{{end}}", &data()), "up");
        assert_eq!(render("{{if .Config.Tty}}tty{{else if .State.Running}}run{{else}}no{{end}}", &data()), "run");
        assert_eq!(render("{{with .State}}{{.Status}}{{end}}", &data()), "running");
        assert_eq!(render("{{range $.Config.Env}}[{{.}}]{{end}}", &data()), "[A=1][B=2]");
    }

    #[test]
    fn trimming_and_comments() {
        assert_eq!(render("a  {{- .Id -}}  b", &data()), "aabcb");
        assert_eq!(render("a{{/* note */}}b", &data()), "ab");
        assert_eq!(render("{{ .Id }}", &data()), "abc");
        assert_eq!(render("{{.Id}}}", &data()), "abc}");
    }

    #[test]
    fn methods_take_arguments() {
        struct Labels;
        impl Methods for Labels {
            fn call(&self, name: &str, args: &[Value]) -> Option<Value> {
                (name == "Label").then(|| Value::String(format!("label:{}", args[0].as_str().unwrap_or(""))))
            }
        }
        let template = Template::parse(r#"{{.Label "tier"}}"#).unwrap();
        assert_eq!(template.render_with(&json!({}), &Labels).unwrap(), "label:tier");
        assert!(template.render(&json!({})).is_err());
    }

    #[test]
    fn errors_are_reported() {
        for bad in ["{{.Id", "{{if .Id}}x", "{{end}}", "{{nosuch .Id}}", "{{\"open}}", "{{(.Id}}", "{{}}"] {
            assert!(matches!(Template::parse(bad), Err(TemplateError::Parse(_))), "{bad}");
        }
        let err = Template::parse("{{.Id.Sub}}").unwrap().render(&data()).unwrap_err();
        assert_eq!(err.to_string(), "template: can't evaluate field Sub in type string");
    }
}
