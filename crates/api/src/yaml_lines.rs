//! Finds the line of a field path (`spec.selector.matchExpressions[0].values`) in the text of
//! one YAML document, so errors found after parsing can still point at a line.
//!
//! Block style only, which is how manifests are written; for a path into flow style
//! (`{a: b}`) it returns the line of the deepest key it could find.

/// One piece of a field path.
#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[2].c` into segments. Keys containing dots cannot be told apart and are split.
fn parse_path(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(close) = stripped.find(']') else {
                break;
            };
            if let Ok(n) = stripped[..close].parse() {
                out.push(Segment::Index(n));
            }
            rest = &stripped[close + 1..];
        }
    }
    out
}

/// A significant line: its number, where its first character is, where its content starts
/// once sequence dashes are skipped, and that content.
struct Line<'a> {
    number: usize,
    raw_indent: usize,
    content_indent: usize,
    content: &'a str,
}

fn significant_lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let raw_indent = line.len() - trimmed.len();
        let mut content = trimmed;
        let mut content_indent = raw_indent;
        while let Some(after) = content
            .strip_prefix("- ")
            .or_else(|| if content == "-" { Some("") } else { None })
        {
            let after_trim = after.trim_start();
            content_indent += content.len() - after_trim.len();
            content = after_trim;
            if content.is_empty() {
                break;
            }
        }
        out.push(Line {
            number: i + 1,
            raw_indent,
            content_indent,
            content,
        });
    }
    out
}

fn is_key_line(content: &str, key: &str) -> bool {
    for quoted in [key.to_owned(), format!("\"{key}\""), format!("'{key}'")] {
        if let Some(rest) = content.strip_prefix(quoted.as_str())
            && rest.trim_start().starts_with(':')
        {
            return true;
        }
    }
    false
}

/// The 1-based line in `text` where `path` is written, or of its deepest ancestor found.
pub(crate) fn locate(text: &str, path: &str) -> Option<usize> {
    let lines = significant_lines(text);
    let (mut start, mut end) = (0, lines.len());
    let mut found = None;
    for segment in parse_path(path) {
        let range = &lines[start..end];
        if range.is_empty() {
            break;
        }
        match segment {
            Segment::Key(key) => {
                let indent = range.iter().map(|l| l.content_indent).min()?;
                let Some(offset) = range
                    .iter()
                    .position(|l| l.content_indent == indent && is_key_line(l.content, key))
                else {
                    break;
                };
                let at = start + offset;
                found = Some(lines[at].number);
                let value_end = lines[at + 1..end]
                    .iter()
                    // A dedent or a sibling key ends the value; a `- ` item at the key's own
                    // indent is still its value (the usual Kubernetes layout).
                    .position(|l| {
                        l.raw_indent < indent
                            || (l.raw_indent == indent && l.content_indent == l.raw_indent)
                    })
                    .map_or(end, |p| at + 1 + p);
                start = at + 1;
                end = value_end;
            }
            Segment::Index(n) => {
                let indent = range.first()?.raw_indent;
                let items: Vec<usize> = range
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.raw_indent == indent && l.content_indent > l.raw_indent)
                    .map(|(i, _)| start + i)
                    .collect();
                let Some(&at) = items.get(n) else { break };
                found = Some(lines[at].number);
                // The item's first line holds its first key, after the dash.
                end = items.get(n + 1).copied().unwrap_or(end);
                start = at;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: podsnap.dev/v1alpha1
kind: PodSnapshotPolicy
metadata:
  name: p
spec:
  selector:
    matchExpressions:
    - key: app
      operator: In
    - key: tier
      operator: Exists
      values: [a]
  triggerConfig:
    type: auto
  containers:
    - name: a
      image: x
    - name: b
      image: y
";

    #[test]
    fn finds_nested_keys_and_items() {
        assert_eq!(locate(DOC, "kind"), Some(2));
        assert_eq!(locate(DOC, "spec.triggerConfig.type"), Some(14));
        assert_eq!(
            locate(DOC, "spec.selector.matchExpressions[0].operator"),
            Some(9)
        );
        assert_eq!(locate(DOC, "spec.selector.matchExpressions[1]"), Some(10));
        assert_eq!(
            locate(DOC, "spec.selector.matchExpressions[1].values"),
            Some(12)
        );
        assert_eq!(locate(DOC, "spec.containers[1].image"), Some(19));
        assert_eq!(locate(DOC, "spec.containers[0].name"), Some(16));
    }

    #[test]
    fn falls_back_to_the_deepest_ancestor() {
        assert_eq!(locate(DOC, "spec.triggerConfig.postCheckpoint"), Some(13));
        assert_eq!(
            locate(DOC, "spec.selector.matchExpressions[7].key"),
            Some(7)
        );
        assert_eq!(locate(DOC, "nothing"), None);
    }

    #[test]
    fn a_key_does_not_match_a_longer_key() {
        let doc = "typeName: a\ntype: b\n";
        assert_eq!(locate(doc, "type"), Some(2));
    }
}
