//! One-input function for the cluster-object parser of `identityd`: a multi-document YAML file
//! as the FileSource reads it ([`decode_all`]).

use identityd::source::decode::{DocError, decode_all};

/// YAML text (lossy UTF-8) through [`decode_all`]. Accepted when every document decodes (or is
/// empty) and at least one holds an object.
///
/// # Errors
/// The first document's error, or a note that there was no object.
///
/// # Panics
/// When documents are numbered out of order, a line is before its document, or an error has
/// no message.
pub fn cluster_yaml(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count().max(1);
    let mut first_error = None;
    let mut objects = 0usize;
    for (i, (doc, result)) in decode_all(&text).iter().enumerate() {
        assert_eq!(doc.index, i, "documents are numbered in file order");
        assert!(
            doc.start >= 1 && doc.line >= doc.start && doc.line <= lines + 1,
            "document {i}: line {} outside start {} ..= {}",
            doc.line,
            doc.start,
            lines + 1
        );
        match result {
            Ok(Some(object)) => {
                objects += 1;
                assert!(
                    object.validate().is_ok(),
                    "a decoded object fails validation"
                );
            }
            Ok(None) => {}
            Err(e) => {
                let message = e.to_string();
                assert!(
                    !message.trim().is_empty(),
                    "document {i}: an error without a message: {e:?}"
                );
                if let DocError::Syntax { line: Some(l), .. } = e {
                    assert!(*l >= doc.start, "a syntax error before its document");
                }
                first_error.get_or_insert_with(|| format!("document {i}: {message}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if objects == 0 => Err("no object in the input".to_owned()),
        None => Ok(()),
    }
}
