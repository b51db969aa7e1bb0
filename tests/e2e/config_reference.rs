//! `docs/CONFIGURATION.md` names every key of every config file, with the
//! default the binaries really use.
//!
//! The keys come from the config structs themselves, not from a list kept
//! by hand: each binary's `init` writes a config (a fixed-topology node, a
//! directory-mode node, a provider, an authority, a client), the binary's
//! own loader reads it, and the loaded struct is serialized to JSON, where
//! every field appears — optional ones as `null` — so a key added to a
//! struct fails this test until the table documents it. A key the table
//! names that no struct has fails too.
//!
//! The defaults: where the table's default cell is a TOML value
//! (`"10s"`, `8`, `true`), it must equal what `init` writes for that key
//! (compared as parsed TOML values, so `1e-6` and `0.000001` agree). Cells
//! in words ("set by `init`", "unset") are for keys whose value depends on
//! the installation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use loopmix_tests::workspace_bin;

/// One config file's table: key → default cell.
type Table = BTreeMap<String, String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The tables of `docs/CONFIGURATION.md`: under each `## \`FILE\`` heading,
/// the rows `| \`key\` | default | ... |`.
fn doc_tables(text: &str) -> BTreeMap<String, Table> {
    let mut out: BTreeMap<String, Table> = BTreeMap::new();
    let mut file: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            file = h
                .trim()
                .strip_prefix('`')
                .and_then(|h| h.strip_suffix('`'))
                .map(str::to_string);
            continue;
        }
        let (Some(f), Some(row)) = (&file, line.strip_prefix("| `")) else {
            continue;
        };
        let Some((key, rest)) = row.split_once("` |") else {
            continue;
        };
        let default = rest.split(" | ").next().unwrap_or("").trim().to_string();
        let prev = out
            .entry(f.clone())
            .or_default()
            .insert(key.to_string(), default);
        assert!(prev.is_none(), "{f}: `{key}` is in the table twice");
    }
    out
}

/// Every leaf of `v` by its dotted key (`mixing.peer_rate`). Arrays (of
/// authorities, of peers) are one key each: their entries are documented in
/// the key's row.
fn leaves(v: &serde_json::Value, prefix: &str, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(x, &key, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The keys of a loaded config, and those whose value is null (an
/// optional field or section left out).
fn keys_of(cfg: serde_json::Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeMap::new();
    leaves(&cfg, "", &mut all);
    let null = all
        .iter()
        .filter(|(_, v)| v.is_null())
        .map(|(k, _)| k.clone())
        .collect();
    (all.into_keys().collect(), null)
}

/// A TOML value as JSON, the form both sides are compared in.
fn json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// What `init` wrote for each key.
fn written(path: &Path) -> BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeMap::new();
    leaves(&json(&toml::from_str(&text).unwrap()), "", &mut out);
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The config files `init` writes, each with its keys and written values.
struct Inited {
    file: &'static str,
    keys: BTreeSet<String>,
    /// Keys whose value is null (an optional field or section left out).
    null: BTreeSet<String>,
    written: BTreeMap<String, serde_json::Value>,
}

impl Inited {
    /// `file` as `init` wrote it at `path`, and `loaded`, what the binary's
    /// loader made of it (serialized).
    fn new(file: &'static str, path: &Path, loaded: serde_json::Value) -> Self {
        let (keys, null) = keys_of(loaded);
        Self {
            file,
            keys,
            null,
            written: written(path),
        }
    }
}

fn init_all(root: &Path) -> Vec<Inited> {
    let node = workspace_bin("loopmix-node").unwrap();
    let directory = workspace_bin("loopmix-directory").unwrap();
    let client = workspace_bin("loopmix-client").unwrap();
    let authority = "11111111111111111111111111111111=http://127.0.0.1:8700";
    let mut out = Vec::new();

    let node_cfg = |dir: &Path| {
        let path = dir.join("node.toml");
        let cfg = loopmix_node::config::NodeConfig::load(&path).unwrap();
        Inited::new("node.toml", &path, serde_json::to_value(&cfg).unwrap())
    };
    // A fixed-topology mix, a directory-mode mix and a directory-mode
    // provider: between them every section a node config can have.
    let fixed = root.join("fixed");
    let printed = run(Command::new(&node).arg("init").arg("--dir").arg(&fixed));
    let provider_id = serde_json::from_str::<serde_json::Value>(&printed).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    out.push(node_cfg(&fixed));
    for (name, role) in [("mix", "mix"), ("provider", "provider")] {
        let d = root.join(name);
        run(Command::new(&node)
            .args(["init", "--role", role, "--authority", authority, "--dir"])
            .arg(&d));
        out.push(node_cfg(&d));
    }

    let a = root.join("authority");
    run(Command::new(&directory).arg("init").arg("--dir").arg(&a));
    let path = a.join(loopmix_directory::config::CONFIG_FILE);
    let cfg = loopmix_directory::config::DirectoryConfig::load(&path).unwrap();
    out.push(Inited::new(
        "directory.toml",
        &path,
        serde_json::to_value(&cfg).unwrap(),
    ));

    let c = root.join("client");
    run(Command::new(&client)
        .args([
            "init",
            "--provider",
            &provider_id,
            "--authority",
            authority,
            "--dir",
        ])
        .arg(&c));
    let path = c.join("client.toml");
    let cfg = loopmix_client::config::ClientConfig::load(&path).unwrap();
    out.push(Inited::new(
        "client.toml",
        &path,
        serde_json::to_value(&cfg).unwrap(),
    ));
    out
}

#[test]
fn the_configuration_reference_names_every_key_with_its_default() {
    let doc = std::fs::read_to_string(workspace().join("docs/CONFIGURATION.md")).unwrap();
    let tables = doc_tables(&doc);
    let tmp = tempfile::tempdir().unwrap();
    let inited = init_all(tmp.path());

    let mut problems = BTreeSet::new();
    let mut struct_keys_by_file: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut checked_defaults = 0;
    for i in &inited {
        let table = tables.get(i.file).cloned().unwrap_or_default();
        struct_keys_by_file
            .entry(i.file)
            .or_default()
            .extend(i.keys.iter().cloned());
        for k in &i.keys {
            // A section this mode of the file does not have (`topology` in
            // directory mode) is null; its keys come from the other mode.
            if i.null.contains(k) && table.keys().any(|t| t.starts_with(&format!("{k}."))) {
                continue;
            }
            let Some(cell) = table.get(k) else {
                problems.insert(format!("{}: `{k}` is missing from the table", i.file));
                continue;
            };
            // Arrays of tables are compared entry by entry nowhere: their
            // values are per installation.
            let (Some(w), Ok(doc_value)) = (
                i.written.get(k),
                toml::from_str::<toml::Table>(&format!("v = {}", cell.trim_matches('`'))),
            ) else {
                continue;
            };
            checked_defaults += 1;
            if doc_value.get("v").map(json).as_ref() != Some(w) {
                problems.insert(format!(
                    "{}: `{k}`: the table says {cell}, init writes {w}",
                    i.file
                ));
            }
        }
    }
    for (file, table) in &tables {
        let keys = struct_keys_by_file.get(file.as_str());
        for k in table.keys() {
            if !keys.is_some_and(|s| s.contains(k)) {
                problems.insert(format!(
                    "{file}: the table names `{k}`, which no config has"
                ));
            }
        }
    }
    // So the test cannot pass by reading nothing.
    let n: usize = struct_keys_by_file.values().map(BTreeSet::len).sum();
    assert!(n >= 80, "only {n} config keys found");
    assert!(
        checked_defaults >= 60,
        "only {checked_defaults} defaults compared"
    );
    assert!(
        problems.is_empty(),
        "docs/CONFIGURATION.md is out of date:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
    println!("{n} keys documented, {checked_defaults} defaults checked against init's files");
}

#[test]
fn the_table_parser_reads_rows_under_their_file() {
    let t = doc_tables(
        "# x\n## `a.toml`\n| key | default | trade-off |\n|---|---|---|\n| `s.k` | `\"1s\"` | why |\n| `v` | set by `init` | x |\n## Other\n| `no` | 1 | - |\n",
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t["a.toml"]["s.k"], "`\"1s\"`");
    assert_eq!(t["a.toml"]["v"], "set by `init`");
}
