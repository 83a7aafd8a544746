//! YAML documents → [`Object`]s, one document at a time, so one bad document never hides the
//! others. Pure (no I/O), shared by the FileSource and tests.
//!
//! A file is split at document markers (`---` at the start of a line; `...` ends a document).
//! Document indexes count from 0 in file order; a leading part before the first `---` that
//! holds only comments or blank lines is not a document, and empty documents are skipped
//! without a problem but keep their index.

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::model::{FieldError, Kind, Object};

/// One document of a multi-document YAML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// 0-based index in the file.
    pub index: usize,
    /// 1-based line of the file of the document's first content line (not blank, not a comment).
    pub line: usize,
    /// 1-based line of the file where `text` starts (error lines are relative to it).
    pub start: usize,
    /// The document text (without its `---` marker line).
    pub text: String,
}

/// Why a document was not turned into an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocError {
    /// Not YAML at all (the file's last good objects are kept by the FileSource).
    #[error("YAML syntax error: {reason}")]
    Syntax {
        /// 1-based line in the file, when known.
        line: Option<usize>,
        /// Parser message.
        reason: String,
    },
    /// YAML, but not an object of a known kind.
    #[error("{reason}")]
    UnknownKind {
        /// The document's `kind`, when it has one.
        kind: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A field has the wrong type or an unknown field is present.
    #[error("{kind}{}: {}{reason}", name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(), field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Schema {
        /// The kind being decoded.
        kind: Kind,
        /// `namespace/name` or `name`, when readable.
        name: Option<String>,
        /// Path of the field that failed (`spec.retries.attempts`), when known.
        field: Option<String>,
        /// 1-based line in the file, when known.
        line: Option<usize>,
        /// Deserializer message (with the position in the file).
        reason: String,
    },
    /// Decoded, but fields failed validation.
    #[error("{}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The decoded (invalid) object, for its kind and name.
        object: Box<Object>,
        /// Every failing field.
        errors: Vec<FieldError>,
    },
}

impl DocError {
    /// Whether this is a YAML syntax error (as opposed to a bad object).
    #[must_use]
    pub fn is_syntax(&self) -> bool {
        matches!(self, DocError::Syntax { .. })
    }
}

/// Splits a YAML stream into documents.
#[must_use]
pub fn split_documents(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut cur_line = 1usize;
    let mut explicit = false; // the current document started with `---`
    let mut lineno = 0usize;
    let flush = |docs: &mut Vec<Document>, cur: &mut String, line: usize, explicit: bool| {
        let has_content = cur.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        });
        if explicit || has_content {
            let first = cur
                .lines()
                .position(|l| {
                    let t = l.trim();
                    !t.is_empty() && !t.starts_with('#')
                })
                .unwrap_or(0);
            docs.push(Document {
                index: docs.len(),
                line: line + first,
                start: line,
                text: std::mem::take(cur),
            });
        } else {
            cur.clear();
        }
    };
    for raw in text.split_inclusive('\n') {
        lineno += 1;
        let l = raw.trim_end_matches(['\n', '\r']);
        let is_marker = |m: &str| {
            l == m
                || l.strip_prefix(m)
                    .is_some_and(|r| r.starts_with([' ', '\t']))
        };
        if is_marker("---") {
            flush(&mut docs, &mut cur, cur_line, explicit);
            explicit = true;
            cur_line = lineno + 1;
            // Content after the marker on the same line (`--- !tag` or `--- {a: 1}`) stays.
            let rest = l[3..].trim_start();
            if !rest.is_empty() {
                cur.push_str(rest);
                cur.push('\n');
                cur_line = lineno;
            }
        } else if is_marker("...") {
            flush(&mut docs, &mut cur, cur_line, explicit);
            explicit = false;
            cur_line = lineno + 1;
        } else {
            cur.push_str(raw);
        }
    }
    flush(&mut docs, &mut cur, cur_line, explicit);
    docs
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
    }
}

/// The error's line in the file (the parser counts from the document's first line).
fn line_of(e: &serde_saphyr::Error, doc: &Document) -> Option<usize> {
    let l = usize::try_from(e.location()?.line())
        .ok()
        .filter(|l| *l > 0)?;
    Some(doc.start + l - 1)
}

/// The parser's message without its document-relative position, plus the file position.
fn message(e: &serde_saphyr::Error, doc: &Document) -> String {
    let s = e.to_string();
    let first = s.lines().next().unwrap_or_default().trim();
    let msg = match first.rfind(" at line ") {
        Some(i) if first[i..].contains(", column ") => &first[..i],
        _ => first,
    };
    match (line_of(e, doc), e.location().map(|l| l.column())) {
        (Some(l), Some(c)) if c > 0 => format!("{msg} (line {l}, column {c})"),
        (Some(l), _) => format!("{msg} (line {l})"),
        _ => msg.to_owned(),
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct MetaHeader {
    #[serde(default)]
    metadata: Option<NameHeader>,
}

#[derive(Deserialize)]
struct NameHeader {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// `namespace/name` (or `name`) of a document whose object did not decode, when readable.
fn name_of(doc: &Document, kind: Kind) -> Option<String> {
    let h: MetaHeader = serde_saphyr::from_str_with_options(&doc.text, options()).ok()?;
    let m = h.metadata?;
    let name = m.name?;
    Some(if kind.namespaced() {
        format!(
            "{}/{name}",
            m.namespace
                .as_deref()
                .unwrap_or(crate::model::DEFAULT_NAMESPACE)
        )
    } else {
        name
    })
}

/// Whether a document holds nothing but comments and blank lines.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// Decodes and validates one document. `Ok(None)` for an empty document.
///
/// # Errors
/// [`DocError`]: syntax, unknown kind, schema or validation failures.
pub fn decode_document(doc: &Document) -> Result<Option<Object>, DocError> {
    if is_blank(&doc.text) {
        return Ok(None);
    }
    serde_saphyr::from_str_with_options::<IgnoredAny>(&doc.text, options()).map_err(|e| {
        DocError::Syntax {
            line: line_of(&e, doc),
            reason: message(&e, doc),
        }
    })?;
    let header: Header =
        serde_saphyr::from_str_with_options(&doc.text, options()).map_err(|e| {
            DocError::UnknownKind {
                kind: None,
                reason: format!(
                    "not a Kubernetes object (a mapping with apiVersion and kind): {}",
                    message(&e, doc)
                ),
            }
        })?;
    let (Some(api_version), Some(kind)) = (header.api_version, header.kind.clone()) else {
        return Err(DocError::UnknownKind {
            kind: header.kind,
            reason: "apiVersion and kind are required".to_owned(),
        });
    };
    let kind = Kind::from_api(&api_version, &kind).map_err(|e| DocError::UnknownKind {
        kind: Some(kind.clone()),
        reason: e.to_string(),
    })?;
    let mut track = serde_path_to_error::Track::new();
    let decoded =
        serde_saphyr::with_deserializer_from_str_with_options(&doc.text, options(), |d| {
            Object::deserialize_kind(kind, serde_path_to_error::Deserializer::new(d, &mut track))
        });
    let mut object = decoded.map_err(|e| {
        let path = track.path().to_string();
        DocError::Schema {
            kind,
            name: name_of(doc, kind),
            field: (path != ".").then_some(path),
            line: line_of(&e, doc),
            reason: message(&e, doc),
        }
    })?;
    object.normalize();
    object.validate().map_err(|errors| DocError::Invalid {
        object: Box::new(object.clone()),
        errors,
    })?;
    Ok(Some(object))
}

/// Decodes and validates one object of a known `kind` from JSON (what the API server returns),
/// through the same dispatch and validation as YAML documents. A missing or different
/// `apiVersion`/`kind` (list items carry none) is set from `kind`.
///
/// # Errors
/// [`DocError::Schema`] (wrong field type, unknown field in an identityd spec) or
/// [`DocError::Invalid`].
pub fn decode_value(kind: Kind, mut value: serde_json::Value) -> Result<Object, DocError> {
    let name = {
        let m = &value["metadata"];
        m["name"].as_str().map(|n| match m["namespace"].as_str() {
            Some(ns) if kind.namespaced() => format!("{ns}/{n}"),
            _ => n.to_owned(),
        })
    };
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), kind.api_versions()[0].into());
        map.insert("kind".into(), kind.as_str().into());
    }
    let mut track = serde_path_to_error::Track::new();
    let decoded = Object::deserialize_kind(
        kind,
        serde_path_to_error::Deserializer::new(value, &mut track),
    );
    let mut object = decoded.map_err(|e| {
        let path = track.path().to_string();
        DocError::Schema {
            kind,
            name,
            field: (path != ".").then_some(path),
            line: None,
            reason: e.to_string(),
        }
    })?;
    object.normalize();
    object.validate().map_err(|errors| DocError::Invalid {
        object: Box::new(object.clone()),
        errors,
    })?;
    Ok(object)
}

/// Decodes every document of a file's text.
#[must_use]
pub fn decode_all(text: &str) -> Vec<(Document, Result<Option<Object>, DocError>)> {
    split_documents(text)
        .into_iter()
        .map(|d| {
            let r = decode_document(&d);
            (d, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_with_indexes_and_lines() {
        let text = "# leading comment\n---\na: 1\n---\n---\nb: 2\n...\n--- {c: 3}\n";
        let docs = split_documents(text);
        let got: Vec<(usize, usize, &str)> = docs
            .iter()
            .map(|d| (d.index, d.line, d.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 3, "a: 1\n"),
                (1, 5, ""),
                (2, 6, "b: 2\n"),
                (3, 8, "{c: 3}\n")
            ]
        );
        let single = split_documents("a: 1\n");
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].line, 1);
        assert!(split_documents("").is_empty());
        assert!(split_documents("# only a comment\n\n").is_empty());
    }

    #[test]
    fn syntax_error_has_file_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: [unclosed\n";
        let out = decode_all(text);
        assert!(out[0].1.as_ref().unwrap().is_some());
        let err = out[1].1.as_ref().unwrap_err();
        assert!(err.is_syntax(), "{err:?}");
        match err {
            DocError::Syntax { line, .. } => assert!(line.is_some_and(|l| l >= 5), "{err}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_kind_and_schema_errors() {
        let e = decode_document(
            &split_documents("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")[0],
        )
        .unwrap_err();
        assert!(matches!(e, DocError::UnknownKind { .. }), "{e:?}");
        assert!(e.to_string().contains("ConfigMap"), "{e}");
        let e = decode_document(&split_documents("- 1\n- 2\n")[0]).unwrap_err();
        assert!(matches!(e, DocError::UnknownKind { .. }), "{e:?}");
        let e = decode_document(&split_documents(
            "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata: {name: r}\nspec: {target: ca, surprise: 1}\n",
        )[0])
        .unwrap_err();
        assert!(matches!(e, DocError::Schema { .. }), "{e:?}");
        assert!(e.to_string().contains("surprise"), "{e}");
    }
}
