//! The README's two-person messaging quick start, run word for word.
//!
//! The test takes the fenced `sh` block between the README's
//! `<!-- quickstart:messaging:begin -->` and `<!-- quickstart:messaging:end -->`
//! markers and runs it with bash (`set -euo pipefail`, so any failing line
//! fails it) as real processes: a real `loopmix-localnet` in the fastest
//! preset, two client directories made by `loopmix-client init`, Bob's
//! `receive --reply` and Alice's `send --wait-reply`. Only places are
//! substituted: `$PWD/target/release` becomes the directory of the binaries
//! this test built (same profile as the test), and `/tmp/` a fresh
//! temporary directory. Each substituted text must occur in the block, so
//! a README edit that drops one fails here instead of silently running
//! elsewhere. It then checks what the README says the reader sees (Bob
//! prints Alice's message, Alice prints "delivered" and Bob's answer), and
//! that `kill $LOCALNET` stopped every process of the network.
//!
//! Needs `jq` (the README says so; `.ci/run` installs it, elsewhere the
//! test skips with a message); bash and the binaries otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loopmix_tests::workspace_bin;

const BEGIN: &str = "<!-- quickstart:messaging:begin -->";
const END: &str = "<!-- quickstart:messaging:end -->";
/// The whole run normally takes well under a minute and a half; this is
/// only the point at which a hung run is stopped and reported.
const TIMEOUT: Duration = Duration::from_secs(240);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The commands of the README's quick start: the one ```sh block between
/// the markers.
fn quickstart_block(readme: &str) -> String {
    let (_, after) = readme
        .split_once(BEGIN)
        .unwrap_or_else(|| panic!("README.md has no {BEGIN} marker"));
    let (between, _) = after
        .split_once(END)
        .unwrap_or_else(|| panic!("README.md has no {END} marker after {BEGIN}"));
    assert!(!between.contains(BEGIN), "nested quick start markers");
    let (_, fenced) = between
        .split_once("```sh\n")
        .expect("no ```sh block between the quick start markers");
    let (block, rest) = fenced
        .split_once("\n```")
        .expect("the ```sh block between the markers is not closed");
    assert!(
        !rest.contains("```sh"),
        "more than one sh block between the quick start markers"
    );
    block.to_string()
}

/// The script as the test runs it: `block` with only its places replaced.
fn substituted(block: &str, bin_dir: &Path, tmp: &Path) -> String {
    for needed in [
        "$PWD/target/release",
        "/tmp/lm",
        "/tmp/alice",
        "/tmp/bob",
        "loopmix-localnet",
        "loopmix-client init",
        "loopmix-client receive",
        "loopmix-client send",
        "localnet.json",
    ] {
        assert!(
            block.contains(needed),
            "the README's quick start no longer contains {needed:?}: update this test with it"
        );
    }
    // `/tmp/` first: the binaries' directory may itself be under /tmp
    // (CARGO_TARGET_DIR=/tmp/...), and must not be rewritten.
    block
        .replace("/tmp/", &format!("{}/", tmp.display()))
        .replace("$PWD/target/release", &bin_dir.display().to_string())
}

/// bash running the script in its own process group; on drop (a failed
/// or hung test) the group gets SIGTERM (the localnet then stops what it
/// started), and SIGKILL if anything is left after 20 s.
struct Script {
    child: Child,
}

impl Script {
    fn pgid(&self) -> String {
        format!("-{}", self.child.id())
    }

    fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, "--", &self.pgid()])
            .stderr(Stdio::null())
            .status();
    }

    fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal_group("TERM");
            if self.wait(Duration::from_secs(20)).is_none() {
                self.signal_group("KILL");
                let _ = self.child.wait();
            }
        }
    }
}

/// A live (not zombie) process with this pid.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .and_then(|(_, r)| r.chars().next())
                .map(|state| state != 'Z')
        })
        .unwrap_or(false)
}

#[test]
fn readme_two_person_quickstart_works_word_for_word() {
    let started = Instant::now();
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let block = quickstart_block(&readme);
    let ok = Command::new("jq")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        // .ci/run installs jq; elsewhere say what is missing rather than fail.
        eprintln!(
            "SKIP: the README's quick start needs jq (Debian: apt-get install jq), not found on PATH"
        );
        return;
    }

    let localnet = workspace_bin("loopmix-localnet").unwrap();
    for b in ["loopmix-client", "loopmix-node", "loopmix-directory"] {
        workspace_bin(b).unwrap();
    }
    let bin_dir = localnet.parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    let script = substituted(&block, &bin_dir, tmp.path());
    let out_path = tmp.path().join("script.out");
    let err_path = tmp.path().join("script.err");
    let built = started.elapsed();

    let ran = Instant::now();
    let mut run = Script {
        child: Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(workspace())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
    };
    let status = run.wait(TIMEOUT);
    let took = ran.elapsed();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let log = std::fs::read_to_string(tmp.path().join("lm.log")).unwrap_or_default();
    let report = format!(
        "---- script ----\n{script}\n---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}\n\
         ---- localnet output (last 40 lines) ----\n{}",
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let Some(status) = status else {
        panic!("the quick start did not finish within {TIMEOUT:?}\n{report}");
    };
    assert!(
        status.success(),
        "the quick start failed: {status}\n{report}"
    );

    // What the README says the reader sees.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&"hi Bob, Alice here"),
        "Bob did not print Alice's message\n{report}"
    );
    assert!(
        lines.contains(&"hi Alice, Bob here"),
        "Alice did not print Bob's answer\n{report}"
    );
    assert!(
        stderr.contains("delivered to ") && stderr.contains("'s provider"),
        "Alice's send did not report the delivery\n{report}"
    );
    // Alice's init printed her address (identity.encryption@provider).
    assert!(
        lines
            .iter()
            .any(|l| l.contains('@') && l.split_once('@').is_some_and(|(a, _)| a.contains('.'))),
        "loopmix-client init printed no address\n{report}"
    );

    // `kill $LOCALNET` stopped the network: the localnet and every process
    // it started exit (it stops them on SIGTERM).
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("lm").join("localnet.json")).unwrap(),
    )
    .unwrap();
    let mut pids: Vec<u64> = json["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    assert!(pids.len() >= 10, "localnet.json lists {pids:?}");
    pids.push(json["pid"].as_u64().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<u64> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for p in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    assert!(
        left.is_empty(),
        "processes of the localnet still running 30 s after `kill $LOCALNET`: {left:?}"
    );
    eprintln!(
        "quick start: binaries ready in {:.1} s, the README's commands took {:.1} s",
        built.as_secs_f64(),
        took.as_secs_f64()
    );
}

#[test]
fn the_block_is_found_and_only_places_change() {
    let block = "export PATH=\"$PWD/target/release:$PATH\"\n\
                 loopmix-localnet --dir /tmp/lm &\n\
                 jq . /tmp/lm/localnet.json\n\
                 loopmix-client init --dir /tmp/alice\n\
                 loopmix-client init --dir /tmp/bob\n\
                 loopmix-client receive --config /tmp/bob/client.toml\n\
                 loopmix-client send --config /tmp/alice/client.toml";
    let readme =
        format!("intro\n{BEGIN}\n```sh\n{block}\n```\n{END}\nmore\n```sh\nnot this\n```\n");
    assert_eq!(quickstart_block(&readme), block);
    let s = substituted(block, Path::new("/b/debug"), Path::new("/t/x"));
    assert!(s.starts_with("export PATH=\"/b/debug:$PATH\"\n"));
    assert!(s.contains("--dir /t/x/lm &") && s.contains("/t/x/bob/client.toml"));
    assert!(!s.contains("/tmp/"));
    assert_eq!(
        s.replace("/b/debug", "$PWD/target/release")
            .replace("/t/x/", "/tmp/"),
        block
    );
    // A target directory under /tmp (CI) is left as it is.
    let s = substituted(block, Path::new("/tmp/ci-target/debug"), Path::new("/t/x"));
    assert!(
        s.starts_with("export PATH=\"/tmp/ci-target/debug:$PATH\"\n"),
        "{s}"
    );
    assert!(s.contains("--dir /t/x/lm &"), "{s}");
}
