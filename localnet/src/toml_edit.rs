//! Setting keys in the commented configs the `init` commands write, keeping
//! their comments (the files stay the documentation a user reads).

use anyhow::{Context, bail};

/// Sets `key = value` (`value` already TOML-encoded) in `[section]`:
/// replaces the key's line, or uncomments a `# key = ...` line, or adds the
/// key right after the section header. The result must parse and hold the
/// value, so a changed template fails loudly instead of being ignored.
pub fn set_key(text: &str, section: &str, key: &str, value: &str) -> anyhow::Result<String> {
    let header = format!("[{section}]");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let Some(start) = lines.iter().position(|l| l.trim() == header) else {
        bail!("no [{section}] section");
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |p| start + 1 + p);
    let is_key = |l: &str, commented: bool| {
        let l = l.trim_start();
        let l = if commented {
            match l.strip_prefix('#') {
                Some(rest) => rest.trim_start(),
                None => return false,
            }
        } else {
            l
        };
        l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let new_line = format!("{key} = {value}");
    if let Some(i) = (start + 1..end).find(|&i| is_key(&lines[i], false)) {
        lines[i] = new_line.clone();
    } else if let Some(i) = (start + 1..end).find(|&i| is_key(&lines[i], true)) {
        lines[i] = new_line.clone();
    } else {
        lines.insert(start + 1, new_line.clone());
    }
    let mut out = lines.join("\n");
    out.push('\n');
    let parsed: toml::Table = toml::from_str(&out).context("edited config does not parse")?;
    let got = parsed
        .get(section)
        .and_then(|s| s.get(key))
        .map(ToString::to_string);
    let want: toml::Table = toml::from_str(&new_line).context("bad value")?;
    if got != want.get(key).map(ToString::to_string) {
        bail!("setting [{section}] {key} did not take effect");
    }
    Ok(out)
}

/// Applies [`set_key`] to the file at `path` for every `(section, key, value)`.
pub fn edit_file(path: &std::path::Path, edits: &[(&str, &str, String)]) -> anyhow::Result<()> {
    let mut text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for (section, key, value) in edits {
        text = set_key(&text, section, key, value)
            .with_context(|| format!("editing {}", path.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: &str = "version = 1\n\n[a]\n# x = 1\ny = 2\n\n[b]\n# comment\nz = \"q\"\n";

    #[test]
    fn replaces_uncomments_and_adds() {
        let t = set_key(T, "a", "y", "5").unwrap();
        assert!(t.contains("y = 5") && !t.contains("y = 2"));
        let t = set_key(&t, "a", "x", "7").unwrap();
        assert!(t.contains("\nx = 7\n") && !t.contains("# x"));
        let t = set_key(&t, "b", "w", "0.5").unwrap();
        assert!(t.contains("[b]\nw = 0.5\n# comment"));
        let t = set_key(&t, "b", "z", &toml_str("r")).unwrap();
        assert!(t.contains("z = \"r\""));
        assert!(t.contains("# comment"));
        assert!(set_key(&t, "c", "k", "1").is_err());
    }

    #[test]
    fn key_prefixes_do_not_match() {
        let t = "[m]\nlisten_more = 1\nlisten = 2\n";
        let t = set_key(t, "m", "listen", "3").unwrap();
        assert_eq!(t, "[m]\nlisten_more = 1\nlisten = 3\n");
    }
}
