//! Compose variable interpolation (the Compose Specification's
//! "Interpolation"): `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`, nested in
//! defaults, and `$$` for a literal `$`; plus reading a `.env` file.

use std::collections::BTreeMap;

/// Why a string could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR:?message}` / `${VAR?message}` with VAR unset (or empty).
    #[error("required variable {name} is missing a value: {message}")]
    Required { name: String, message: String },
    /// A `${` without its `}`, or a bad name.
    #[error("invalid interpolation format in {text:?}: {why}")]
    Syntax { text: String, why: &'static str },
}

/// Replaces every variable of `text` with its value in `vars` (unset →
/// empty string, as Compose does after warning; see `unset` for the names).
pub fn interpolate(
    text: &str,
    vars: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, InterpolateError> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let next = text[i..].find('$').map_or(text.len(), |n| i + n);
            out.push_str(&text[i..next]);
            i = next;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let end = closing_brace(text, i + 2).ok_or_else(|| InterpolateError::Syntax {
                    text: text.into(),
                    why: "`${` without a closing `}`",
                })?;
                out.push_str(&braced(&text[i + 2..end], text, vars, unset)?);
                i = end + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                out.push_str(&lookup(&text[start..j], vars, unset));
                i = j;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The index of the `}` closing a `${` whose body starts at `from`
/// (nested `${…}` in defaults are skipped).
fn closing_brace(text: &str, from: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 0;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn lookup(name: &str, vars: &BTreeMap<String, String>, unset: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            if !unset.iter().any(|u| u == name) {
                unset.push(name.to_string());
            }
            String::new()
        }
    }
}

/// The value of one `${…}` body.
fn braced(
    body: &str,
    whole: &str,
    vars: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, InterpolateError> {
    let name_end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let name = &body[..name_end];
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(InterpolateError::Syntax {
            text: whole.into(),
            why: "a variable name is letters, digits and `_`, not starting with a digit",
        });
    }
    let rest = &body[name_end..];
    let value = vars.get(name);
    let (op, arg) = if let Some(a) = rest.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = rest.strip_prefix(":+") {
        (":+", a)
    } else if rest.is_empty() {
        ("", "")
    } else {
        match rest.split_at(1) {
            ("-", a) => ("-", a),
            ("?", a) => ("?", a),
            ("+", a) => ("+", a),
            _ => {
                return Err(InterpolateError::Syntax {
                    text: whole.into(),
                    why: "expected one of :- - :? ? :+ + after the name",
                })
            }
        }
    };
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    Ok(match op {
        "" => lookup(name, vars, unset),
        ":-" if non_empty => value.cloned().unwrap_or_default(),
        "-" if set => value.cloned().unwrap_or_default(),
        ":-" | "-" => interpolate(arg, vars, unset)?,
        ":?" if non_empty => value.cloned().unwrap_or_default(),
        "?" if set => value.cloned().unwrap_or_default(),
        ":?" | "?" => {
            return Err(InterpolateError::Required {
                name: name.into(),
                message: interpolate(arg, vars, unset)?,
            })
        }
        ":+" if non_empty => interpolate(arg, vars, unset)?,
        "+" if set => interpolate(arg, vars, unset)?,
        _ => String::new(),
    })
}

/// Parses a `.env` file as Compose reads it: `KEY=VALUE` lines, `#`
/// comments and blank lines skipped, an optional `export ` prefix, values in
/// single quotes taken as is, in double quotes with `\n` `\"` `\\` escapes,
/// unquoted values trimmed and cut at ` #`. Lines without `=` are skipped.
pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim();
        let v = v.trim();
        let value = if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            inner.to_string()
        } else if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            let mut s = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(o) => s.push(o),
                        None => s.push('\\'),
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else {
            v.split(" #").next().unwrap_or("").trim_end().to_string()
        };
        if !k.is_empty() {
            out.insert(k.to_string(), value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        [
            ("TAG", "1.2"),
            ("EMPTY", ""),
            ("PORT", "8080"),
            ("HOST", "db"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn forms_as_the_compose_specification_defines_them() {
        let cases: &[(&str, &str)] = &[
            ("app:${TAG}", "app:1.2"),
            ("app:$TAG", "app:1.2"),
            ("$TAG-x", "1.2-x"),
            ("${UNSET:-3.0}", "3.0"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${UNSET-d}", "d"),
            ("${TAG:-d}", "1.2"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${TAG:+alt}", "alt"),
            ("${UNSET:+alt}", ""),
            ("$$HOME and $${TAG}", "$HOME and ${TAG}"),
            ("${UNSET:-${PORT}}", "8080"),
            ("${UNSET:-${ALSO_UNSET:-x}y}", "xy"),
            ("http://${HOST}:${PORT}/", "http://db:8080/"),
            ("cost: 5$", "cost: 5$"),
            ("${UNSET}", ""),
        ];
        for (input, want) in cases {
            let mut unset = vec![];
            assert_eq!(
                interpolate(input, &vars(), &mut unset).unwrap(),
                *want,
                "{input}"
            );
        }
    }

    #[test]
    fn unset_variables_are_named_and_required_ones_fail() {
        let mut unset = vec![];
        interpolate("${A} $B ${A}", &vars(), &mut unset).unwrap();
        assert_eq!(unset, vec!["A", "B"]);
        let e = interpolate("${DB_PASSWORD:?set it in .env}", &vars(), &mut vec![]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "required variable DB_PASSWORD is missing a value: set it in .env"
        );
        assert!(interpolate("${EMPTY?x}", &vars(), &mut vec![]).is_ok());
        assert!(interpolate("${EMPTY:?x}", &vars(), &mut vec![]).is_err());
        assert!(matches!(
            interpolate("${TAG", &vars(), &mut vec![]),
            Err(InterpolateError::Syntax { .. })
        ));
        assert!(matches!(
            interpolate("${1X}", &vars(), &mut vec![]),
            Err(InterpolateError::Syntax { .. })
        ));
    }

    #[test]
    fn dotenv_files_read_as_compose_reads_them() {
        let env = parse_dotenv(
            "# comment\nTAG=1.2\nexport PORT=8080\nQ='a b $X'\nD=\"line\\nnext\"\nU=plain # note\n\nNOEQUALS\n",
        );
        assert_eq!(env["TAG"], "1.2");
        assert_eq!(env["PORT"], "8080");
        assert_eq!(env["Q"], "a b $X");
        assert_eq!(env["D"], "line\nnext");
        assert_eq!(env["U"], "plain");
        assert!(!env.contains_key("NOEQUALS"));
    }
}
