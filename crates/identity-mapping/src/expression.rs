//! `expression_identity_mapping#1.0.0`: rules that rewrite an identity's fields into a
//! username with a reduced regular-expression language.
//!
//! Each rule interpolates `source` from the identity (`{username}`), matches it against
//! `match` as a whole, and on a match interpolates `output` from the identity and the
//! match groups (`{0}` is the first parenthesized group). Rules are tried in order, each
//! over every identity whose `status` is `used` or `private`; the first match wins.

use regex::{Captures, Regex};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Identity;
use crate::error::DocumentError;

/// The document type this module reads.
pub(crate) const DATA_TYPE: &str = "expression_identity_mapping#1.0.0";

/// The identity fields an expression may name: the string fields of
/// `gantry_protocol::command::IdentityInfo` as it serializes (a test keeps this true).
pub const IDENTITY_FIELDS: &[&str] = &[
    "id",
    "sub",
    "username",
    "email",
    "name",
    "organization",
    "identity_provider",
    "status",
];

/// A parsed, validated expression document.
#[derive(Debug, Clone)]
pub(crate) struct ExpressionDocument {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    source: Vec<Piece>,
    regex: Regex,
    output: Vec<Piece>,
}

/// One part of an interpolated string.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Field(String),
    /// `{N}`: the N-th parenthesized group, counting from 0.
    Group(usize),
}

#[derive(Deserialize)]
struct RawRule {
    source: String,
    #[serde(rename = "match")]
    pattern: String,
    output: String,
    #[serde(default)]
    ignore_case: Option<bool>,
    #[serde(default)]
    literal: Option<bool>,
}

impl ExpressionDocument {
    /// Reads and checks the document's `mappings`, so that a broken rule is found when
    /// the file is loaded rather than when a user first needs it.
    pub(crate) fn parse(doc: &Map<String, Value>) -> Result<ExpressionDocument, String> {
        let Some(mappings) = doc.get("mappings") else {
            return Err(format!(
                "{DATA_TYPE} needs \"mappings\": a list of {{\"source\", \"match\", \"output\"}} rules"
            ));
        };
        let Value::Array(list) = mappings else {
            return Err(
                "\"mappings\" must be a list of {\"source\", \"match\", \"output\"} rules".into(),
            );
        };
        let rules = list
            .iter()
            .enumerate()
            .map(|(n, raw)| Rule::parse(raw).map_err(|e| format!("mapping {n}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(ExpressionDocument { rules })
    }

    /// The first rule's output, in the official endpoint's order: rules in order, and for
    /// each rule the counting identities in order. A value missing for any rule and any
    /// counting identity fails the whole document, as it does there (its mapper computes
    /// every rule's results before any is used).
    pub(crate) fn map(&self, identities: &[Identity<'_>]) -> Result<Option<String>, DocumentError> {
        let mut first = None;
        for (n, rule) in self.rules.iter().enumerate() {
            for identity in identities.iter().filter(|i| i.counts()) {
                let source = interpolate(&rule.source, n, identity, None)?;
                if let Some(groups) = rule.regex.captures(&source) {
                    let output = interpolate(&rule.output, n, identity, Some(&groups))?;
                    first.get_or_insert(output);
                }
            }
        }
        Ok(first)
    }
}

impl Rule {
    fn parse(raw: &Value) -> Result<Rule, String> {
        let raw = RawRule::deserialize(raw).map_err(|e| e.to_string())?;
        let literal = raw.literal.unwrap_or(false);
        let regex = compile(&raw.pattern, raw.ignore_case.unwrap_or(false), literal)
            .map_err(|e| format!("match {:?}: {e}", raw.pattern))?;
        let groups = regex.captures_len() - 1;
        let source = parse_template(&raw.source, None).map_err(|e| format!("source: {e}"))?;
        let output =
            parse_template(&raw.output, Some(groups)).map_err(|e| format!("output: {e}"))?;
        Ok(Rule {
            source,
            regex,
            output,
        })
    }
}

/// Translates the official match language into an anchored Rust regex.
///
/// Not literal: `.` `?` `*` `|` `(` `)` are special, `\` escapes one of them or itself,
/// and every other character (including `^ $ + { } [ ]`) is literal. A leading `*`/`?`,
/// lazy `*?`/`??`, and other escapes are refused, as the official package refuses them;
/// so are backreferences (`\1`), which Rust's regex engine does not have.
///
/// The whole source must match: `\A(?:…)\z`. (The official package writes `^…$` without
/// a group, so there a top-level `a|b` only anchors the last branch's end; Gantry
/// anchors every branch, which is what the documentation promises.)
fn compile(pattern: &str, ignore_case: bool, literal: bool) -> Result<Regex, String> {
    let body = if literal {
        regex::escape(pattern)
    } else {
        translate(pattern)?
    };
    let flags = if ignore_case { "(?i)" } else { "" };
    Regex::new(&format!(r"{flags}\A(?:{body})\z")).map_err(|e| {
        // Report the error against the pattern as written, not the anchored wrapper.
        Regex::new(&body).err().unwrap_or(e).to_string()
    })
}

fn translate(pattern: &str) -> Result<String, String> {
    if pattern.starts_with(['*', '?']) {
        return Err("it starts with * or ?, which has nothing to repeat".into());
    }
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut chars = pattern.chars();
    // Whether the previous character was an unescaped `*` or `?` (to refuse `*?`, `??`).
    let mut after_repeat = false;
    while let Some(c) = chars.next() {
        let repeat = matches!(c, '*' | '?');
        match c {
            '\\' => match chars.next() {
                Some(e @ ('.' | '?' | '*' | '|' | '(' | ')' | '\\')) => {
                    out.push('\\');
                    out.push(e);
                }
                Some(d) if d.is_ascii_digit() => {
                    return Err(format!("backreferences such as \\{d} are not supported"));
                }
                Some(e) => {
                    return Err(format!(
                        "\\{e} is not a valid escape; only \\. \\? \\* \\| \\( \\) and \\\\ are"
                    ));
                }
                None => return Err("it ends with a lone \\".into()),
            },
            '?' if after_repeat => {
                return Err("lazy repetition (*? or ??) is not supported".into());
            }
            '.' | '?' | '*' | '|' | '(' | ')' => out.push(c),
            _ => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
        after_repeat = repeat;
    }
    Ok(out)
}

/// Splits `{name}` references out of a template. A `{` preceded by an odd number of
/// backslashes is text (the backslashes stay, as in the official package), and so is a
/// `{` with no closing `}`. `groups` is `None` for a source, which has no match groups.
fn parse_template(text: &str, groups: Option<usize>) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut backslashes = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => backslashes += 1,
            b'{' if backslashes % 2 == 0 => {
                if let Some(len) = text[i + 1..].find('}') {
                    if start < i {
                        pieces.push(Piece::Text(text[start..i].to_owned()));
                    }
                    pieces.push(reference(&text[i + 1..i + 1 + len], groups)?);
                    i += len + 2;
                    start = i;
                    backslashes = 0;
                    continue;
                }
                backslashes = 0;
            }
            _ => backslashes = 0,
        }
        i += 1;
    }
    if start < text.len() {
        pieces.push(Piece::Text(text[start..].to_owned()));
    }
    Ok(pieces)
}

fn reference(name: &str, groups: Option<usize>) -> Result<Piece, String> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        let Some(groups) = groups else {
            return Err(format!(
                "{{{name}}} refers to a match group, but groups exist only in output"
            ));
        };
        return match name.parse::<usize>() {
            Ok(n) if n < groups => Ok(Piece::Group(n)),
            _ => Err(format!(
                "{{{name}}} refers to a match group, but match has {groups} group(s) \
                 (numbered from {{0}}; a literal match has none)"
            )),
        };
    }
    if IDENTITY_FIELDS.contains(&name) {
        return Ok(Piece::Field(name.to_owned()));
    }
    Err(format!(
        "{{{name}}} is not an identity field; the fields are {}",
        IDENTITY_FIELDS.join(", ")
    ))
}

/// Fills a template in one pass: a value inserted is never itself scanned for `{…}`.
fn interpolate(
    pieces: &[Piece],
    rule: usize,
    identity: &Identity<'_>,
    groups: Option<&Captures<'_>>,
) -> Result<String, DocumentError> {
    let mut out = String::new();
    for piece in pieces {
        let value = match piece {
            Piece::Text(text) => Ok(text.as_str()),
            Piece::Field(field) => identity
                .field(field)
                .ok_or_else(|| format!("field {field:?}")),
            // `{0}` is the first parenthesized group, which is capture 1 (0 is the whole).
            Piece::Group(n) => groups
                .and_then(|g| g.get(n + 1))
                .map(|m| m.as_str())
                .ok_or_else(|| format!("match group {{{n}}}")),
        };
        let value = value.map_err(|what| DocumentError::MissingValue {
            rule,
            what,
            identity: identity.info.id,
        })?;
        out.push_str(value);
    }
    Ok(out)
}
