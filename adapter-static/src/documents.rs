//! Splitting a file into YAML documents with their first lines, and parsing
//! each to a value. JSON is YAML, so JSON files go the same way. A
//! `kind: List` (what `kubectl get -o yaml` prints) is expanded into items.

use std::path::Path;

use crate::problem::{Location, Problem};

/// One object found in a file, with where it starts.
pub struct RawObject {
    pub location: Location,
    pub value: serde_json::Value,
}

/// The objects of a file's text. A document that is not valid YAML is
/// reported and skipped; the others still count.
pub fn objects(file: &Path, text: &str) -> (Vec<RawObject>, Vec<Problem>) {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (index, (line, doc)) in split(text).into_iter().enumerate() {
        let location =
            Location { file: file.to_path_buf(), document: index, line: first_content_line(line, doc), item: None };
        if doc.trim().is_empty() || doc.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        let value: serde_json::Value = match serde_saphyr::from_str(doc) {
            Ok(v) => v,
            Err(e) => {
                problems
                    .push(Problem::error(Some(location), format!("not valid YAML: {}", first_line(&e.to_string()))));
                continue;
            }
        };
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::Object(ref o) if o.get("kind").and_then(|k| k.as_str()) == Some("List") => {
                let items = o.get("items").and_then(|i| i.as_array()).cloned().unwrap_or_default();
                for (i, item) in items.into_iter().enumerate() {
                    objects.push(RawObject { location: Location { item: Some(i), ..location.clone() }, value: item });
                }
            }
            value => objects.push(RawObject { location, value }),
        }
    }
    (objects, problems)
}

/// The 1-based line in the file's `text` of the field at `path` in its
/// `document` (0-based); for a field that is missing, the line of the
/// nearest enclosing one that is there.
pub fn field_line(text: &str, document: usize, path: &str) -> Option<usize> {
    let (start, doc) = *split(text).get(document)?;
    let mut path = path;
    loop {
        if let Some(line) = crate::field_lines::field_line(doc, path) {
            return Some(start + line - 1);
        }
        path = &path[..path.rfind(['.', '['])?];
    }
}

/// The line of a document's first content (past the `---` marker, blank
/// lines and comments): where people look for the resource.
fn first_content_line(start: usize, doc: &str) -> usize {
    doc.lines()
        .position(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#')
        })
        .map_or(start, |k| start + k)
}

fn first_line(s: &str) -> String {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

/// Documents of a YAML stream with the 1-based line each starts on. A line
/// `---` (optionally followed by a comment or content) at column 0 starts a
/// document and `...` ends one; block scalars are indented, so a column-0
/// marker is always a marker.
fn split(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    let mut open = true;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "...";
        if is_start || is_end {
            if open && offset > start_byte {
                docs.push((start_line, &text[start_byte..offset]));
            }
            if is_start {
                // Content after `--- ` on the same line belongs to the new
                // document.
                start_byte = offset + 3;
                start_line = i + 1;
                open = true;
            } else {
                start_byte = offset + line.len();
                start_line = i + 2;
                open = false;
            }
        } else if !open && !bare.trim().is_empty() && !bare.trim_start().starts_with('#') {
            open = true;
            start_byte = offset;
            start_line = i + 1;
        }
        offset += line.len();
    }
    if open && start_byte < text.len() {
        docs.push((start_line, &text[start_byte..]));
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_their_lines() {
        let text =
            "# comment\napiVersion: v1\nkind: A\n---\nkind: B\n--- # marker comment\n\nkind: C\n...\n---\nkind: D\n";
        let docs = split(text);
        let lines: Vec<usize> = docs.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 4, 6, 10]);
        assert!(docs[2].1.contains("kind: C"));
        let (objs, problems) = objects(Path::new("f.yaml"), text);
        assert!(problems.is_empty());
        let kinds: Vec<&str> = objs.iter().map(|o| o.value["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["A", "B", "C", "D"]);
        assert_eq!(objs.iter().map(|o| o.location.line).collect::<Vec<_>>(), [2, 5, 8, 11]);
    }

    #[test]
    fn a_bad_document_does_not_hide_the_others() {
        let text = "kind: A\n---\nkind: [unclosed\n---\nkind: C\n";
        let (objs, problems) = objects(Path::new("f.yaml"), text);
        assert_eq!(objs.len(), 2);
        assert_eq!(problems.len(), 1);
        let l = problems[0].location.as_ref().unwrap();
        assert_eq!((l.document, l.line), (1, 3));
        assert!(problems[0].message.starts_with("not valid YAML"), "{}", problems[0].message);
    }

    #[test]
    fn lists_are_expanded_and_json_reads() {
        let (objs, _) = objects(
            Path::new("l.json"),
            r#"{"apiVersion":"v1","kind":"List","items":[{"kind":"Service"},{"kind":"EndpointSlice"}]}"#,
        );
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].location.item, Some(1));
    }
}
