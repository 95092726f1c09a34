//! The line a field is on, so that a problem points at `weigth: 90` itself
//! and not at the first line of its document.

use granit_parser::{Event, Parser};

/// The 1-based line, within `doc` (one YAML document), of the node at
/// `path` (`spec.http[0].route[1].weigth`, the notation problems use): the
/// key's line for a mapping entry, the item's for a sequence item. `None`
/// when the path is not in the document or the document does not parse.
pub fn field_line(doc: &str, path: &str) -> Option<usize> {
    let mut stack: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(doc) {
        let (event, span) = event.ok()?;
        let line = span.start.line();
        let node = match event {
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                continue;
            }
            Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(_) => event,
            _ => continue,
        };
        let node_path = match stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path: parent, key }) => match key.take() {
                // A key: its entry's path is the parent's plus its name.
                None => {
                    let name = match &node {
                        Event::Scalar(value, ..) => value.to_string(),
                        _ => "?".to_string(),
                    };
                    let entry = join(parent, &name);
                    if entry == path {
                        return Some(line);
                    }
                    *key = Some(entry);
                    continue;
                }
                Some(entry) => entry,
            },
            Some(Frame::Seq { path: parent, next }) => {
                *next += 1;
                format!("{parent}[{}]", *next - 1)
            }
        };
        if node_path == path && !path.is_empty() {
            return Some(line);
        }
        match node {
            Event::MappingStart(..) => stack.push(Frame::Map { path: node_path, key: None }),
            Event::SequenceStart(..) => stack.push(Frame::Seq { path: node_path, next: 0 }),
            _ => {}
        }
    }
    None
}

enum Frame {
    /// `key`: the path of the entry whose key was read and whose value
    /// comes next.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::field_line;

    const DOC: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 10
    - destination:
        host: reviews
        subset: v2
      weigth: 90
";

    #[test]
    fn fields_are_found_on_their_own_lines_in_block_and_flow_style() {
        for (path, line) in [
            ("kind", 2),
            ("metadata.name", 4),
            ("spec.hosts", 6),
            ("spec.hosts[0]", 6),
            ("spec.http[0]", 8),
            ("spec.http[0].route[0].weight", 10),
            ("spec.http[0].route[0].destination.subset", 9),
            ("spec.http[0].route[1].destination.subset", 13),
            ("spec.http[0].route[1].weigth", 14),
        ] {
            assert_eq!(field_line(DOC, path), Some(line), "{path}");
        }
        assert_eq!(field_line(DOC, "spec.tcp"), None);
        assert_eq!(field_line("a: [unclosed", "a.b"), None);
    }
}
