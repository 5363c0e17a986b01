//! Hive-style partition folder names, `column=value`, as flow writes them (`partition_by`) and
//! reads them (files below such folders get their keys as columns; see `source::hive`). Values
//! are escaped as Hive and Spark escape them, and a null value has a name of its own.

/// The folder name hive layouts use for a null partition value.
pub const HIVE_NULL: &str = "__HIVE_DEFAULT_PARTITION__";

/// One `column=value` folder name, with the value escaped as Hive and Spark do (`/`, `=`, `%`, `:`,
/// control characters and the like as `%XX`); a null value is [`HIVE_NULL`].
pub fn segment(column: &str, value: Option<&str>) -> String {
    let Some(value) = value else {
        return format!("{column}={HIVE_NULL}");
    };
    let mut out = format!("{column}=");
    for c in value.chars() {
        // Hive's list (FileUtils.escapePathName).
        let escape = c.is_ascii_control() || "\"#%'*/:=?\\{[]^".contains(c);
        if escape {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The column and value of a `column=value` folder name (`None` for [`HIVE_NULL`]); `None` for a
/// name that is not one.
pub fn parse_segment(name: &str) -> Option<(String, Option<String>)> {
    let (k, v) = name.split_once('=')?;
    if k.is_empty() {
        return None;
    }
    Some((k.to_string(), (v != HIVE_NULL).then(|| unescape(v))))
}

/// `%2F` back to `/`, as Hive escapes folder names.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_back_as_written() {
        for value in [Some("x/y=z"), Some("100%"), Some("a:b c"), Some("é\u{1}"), Some(""), None] {
            assert_eq!(parse_segment(&segment("k", value)), Some(("k".into(), value.map(String::from))), "{value:?}");
        }
        assert_eq!(segment("k", Some("x/y")), "k=x%2Fy");
        assert_eq!(unescape("100%25"), "100%");
        assert_eq!(unescape("50%"), "50%");
        assert_eq!(parse_segment("plain"), None);
        assert_eq!(parse_segment("=v"), None);
    }
}
