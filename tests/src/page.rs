//! A fixed web page for page-load benchmarks, its server, and Debian's
//! headless `chromium` to load it.
//!
//! The page is always the same 26 resources and [`PAGE_BYTES`] bytes: an
//! `index.html` referencing 4 stylesheets, 6 scripts and 15 SVG images of
//! assorted sizes, all deterministic. An inline script counts the
//! resources whose `load` event fired and, at the window's load event,
//! writes one line into the DOM (`PAGE-RESULT loaded=25 errors=0
//! resources=25 load_ms=…`, [`PageResult`]) for `chromium --dump-dom`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

/// The subresources: (path, size in bytes); the type follows the extension.
const RESOURCES: [(&str, usize); 25] = [
    ("s0.css", 3000),
    ("s1.css", 6000),
    ("s2.css", 9000),
    ("s3.css", 4000),
    ("j0.js", 2000),
    ("j1.js", 5000),
    ("j2.js", 8000),
    ("j3.js", 12000),
    ("j4.js", 16000),
    ("j5.js", 20000),
    ("i0.svg", 500),
    ("i1.svg", 1000),
    ("i2.svg", 1500),
    ("i3.svg", 2000),
    ("i4.svg", 3000),
    ("i5.svg", 4000),
    ("i6.svg", 5000),
    ("i7.svg", 6000),
    ("i8.svg", 7000),
    ("i9.svg", 8000),
    ("i10.svg", 9000),
    ("i11.svg", 10000),
    ("i12.svg", 12000),
    ("i13.svg", 14000),
    ("i14.svg", 24000),
];

/// Size of `index.html`.
const INDEX_BYTES: usize = 8000;

/// Resources of the page, `index.html` included.
pub const PAGE_RESOURCES: usize = 26;

/// Bytes of the whole page.
pub const PAGE_BYTES: usize = 200_000;

/// What the page's script wrote at its load event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageResult {
    /// Subresources whose `load` event fired / whose `error` event fired.
    pub loaded: usize,
    pub errors: usize,
    /// Resource timing entries (the subresources fetched).
    pub resources: usize,
    /// Navigation start to the load event, ms.
    pub load_ms: f64,
}

impl PageResult {
    /// The result line in a DOM dump, if the load event ran.
    pub fn from_dom(dom: &str) -> Option<PageResult> {
        // The element, not the script that fills it (its source is in
        // the DOM too).
        let text = dom.split("id=\"result\">").nth(1)?.split('<').next()?;
        let line = text.strip_prefix("PAGE-RESULT ")?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
        };
        Some(PageResult {
            loaded: field("loaded")?.parse().ok()?,
            errors: field("errors")?.parse().ok()?,
            resources: field("resources")?.parse().ok()?,
            load_ms: field("load_ms")?.parse().ok()?,
        })
    }

    /// Every subresource arrived and loaded.
    pub fn complete(&self) -> bool {
        self.loaded == PAGE_RESOURCES - 1
            && self.errors == 0
            && self.resources >= PAGE_RESOURCES - 1
    }
}

/// Deterministic filler of `n` letters (no `--`, so it can sit in an
/// HTML or SVG comment, a CSS or JS comment).
fn filler(n: usize, seed: usize) -> String {
    let mut x = 0x9e37_79b9_u32 ^ (seed as u32).wrapping_mul(0x85eb_ca6b);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(b'a' + (x >> 24) as u8 % 26)
        })
        .collect()
}

/// `head` + a comment of filler + `tail`, exactly `size` bytes.
fn padded(head: &str, open: &str, close: &str, tail: &str, size: usize, seed: usize) -> String {
    let fixed = head.len() + open.len() + close.len() + tail.len();
    let pad = size.saturating_sub(fixed);
    format!("{head}{open}{}{close}{tail}", filler(pad, seed))
}

fn body_of(path: &str, size: usize, seed: usize) -> String {
    let colour = format!("#{:06x}", (seed * 0x2f_6b3d) & 0xff_ffff);
    match path.rsplit('.').next() {
        Some("css") => padded(
            &format!(".r{seed}{{color:{colour};margin:{seed}px}}\n"),
            "/*",
            "*/",
            "\n",
            size,
            seed,
        ),
        Some("js") => padded(
            "window.__scripts=(window.__scripts||0)+1;\n",
            "/*",
            "*/",
            "\n",
            size,
            seed,
        ),
        _ => padded(
            &format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"48\" height=\"32\">\
                 <rect width=\"48\" height=\"32\" fill=\"{colour}\"/>"
            ),
            "<!--",
            "-->",
            "</svg>\n",
            size,
            seed,
        ),
    }
}

fn index_html() -> String {
    let mut css = String::new();
    let mut imgs = String::new();
    let mut js = String::new();
    for (path, _) in RESOURCES {
        let on = "onload=\"ok()\" onerror=\"bad()\"";
        match path.rsplit('.').next() {
            Some("css") => css.push_str(&format!(
                "<link rel=\"stylesheet\" href=\"/{path}\" {on}>\n"
            )),
            Some("js") => js.push_str(&format!("<script src=\"/{path}\" {on}></script>\n")),
            _ => imgs.push_str(&format!("<img src=\"/{path}\" alt=\"\" {on}>\n")),
        }
    }
    // The counters exist before any element that reports to them.
    let head = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>loopmix page-load bench</title>\n\
         <script>var L={{ok:0,err:0}};function ok(){{L.ok++}}function bad(){{L.err++}}\n\
         addEventListener('load',function(){{var t=performance.now();\
         var n=performance.getEntriesByType('resource').length;\
         document.getElementById('result').textContent='PAGE-RESULT loaded='+L.ok+' errors='+L.err+\
         ' resources='+n+' load_ms='+t.toFixed(1);}});</script>\n{css}</head>\n<body>\
         <pre id=\"result\">no load event</pre>\n{imgs}{js}"
    );
    padded(&head, "<!--", "-->", "\n</body></html>\n", INDEX_BYTES, 0)
}

/// Every resource of the page: path → (content type, body).
pub fn page() -> BTreeMap<String, (&'static str, Vec<u8>)> {
    let mut out = BTreeMap::new();
    out.insert(
        "/index.html".to_string(),
        ("text/html; charset=utf-8", index_html().into_bytes()),
    );
    for (seed, (path, size)) in RESOURCES.iter().enumerate() {
        let kind = match path.rsplit('.').next() {
            Some("css") => "text/css",
            Some("js") => "text/javascript",
            _ => "image/svg+xml",
        };
        out.insert(
            format!("/{path}"),
            (kind, body_of(path, *size, seed + 1).into_bytes()),
        );
    }
    out
}

/// Serves [`page`] over HTTP/1.1 with keep-alive (as a web server does:
/// a browser reuses its few connections), stopped when dropped.
pub struct PageServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    pub fn start() -> anyhow::Result<PageServer> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let files = Arc::new(page());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let files = files.clone();
                std::thread::spawn(move || serve(conn, &files));
            }
        });
        Ok(PageServer { addr, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}/index.html", self.addr)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answers GETs on one connection until it closes or idles for a minute.
fn serve(conn: TcpStream, files: &BTreeMap<String, (&'static str, Vec<u8>)>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut r = BufReader::new(read_half);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, kind, body) = match files.get(path) {
            Some((kind, body)) => ("200 OK", *kind, body.as_slice()),
            None => ("404 Not Found", "text/plain", &b""[..]),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: keep-alive\r\n\r\n",
            body.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(body).is_err() {
            return;
        }
    }
}

/// Runs `cmd` for at most `limit`; its output (Err if it ran over).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// Debian's `chromium`: found, or installed with apt-get when running as
/// root; `Err` says why not (the caller skips the browser part).
pub fn chromium() -> Result<PathBuf, String> {
    if let Some(c) = on_path("chromium") {
        return Ok(c);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || on_path("apt-get").is_none() {
        return Err(
            "chromium is not installed and this is not root with apt-get \
                    (apt-get install chromium)"
                .into(),
        );
    }
    eprintln!("chromium missing: apt-get install -y --no-install-recommends chromium");
    let install = || {
        run_bounded(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(600),
        )
        .is_ok_and(|o| o.status.success())
    };
    if !install() {
        let _ = run_bounded(
            Command::new("apt-get").arg("update"),
            Duration::from_secs(300),
        );
        install();
    }
    on_path("chromium").ok_or_else(|| "apt-get install chromium failed".into())
}

/// One cold load of `url` in headless chromium with a fresh profile
/// under `dir`, through SOCKS5 proxy `socks` if given (loopback is
/// proxied too: Chromium bypasses it by default), at most `limit`. The
/// page's result and the process's wall time, seconds.
pub fn load(
    chromium: &Path,
    dir: &Path,
    socks: Option<SocketAddr>,
    url: &str,
    limit: Duration,
) -> anyhow::Result<(PageResult, f64)> {
    let profile = tempfile::tempdir_in(dir)?;
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    if let Some(s) = socks {
        cmd.arg(format!("--proxy-server=socks5://{s}"))
            .arg("--proxy-bypass-list=<-loopback>");
    }
    let t = Instant::now();
    let out = run_bounded(cmd.arg(url), limit)?;
    let wall = t.elapsed().as_secs_f64();
    let dom = String::from_utf8_lossy(&out.stdout);
    match PageResult::from_dom(&dom) {
        Some(r) => Ok((r, wall)),
        None => bail!(
            "no load event in the DOM chromium dumped after {wall:.1} s (exit {:?}): {}\n{}",
            out.status.code(),
            dom.chars().take(400).collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_its_fixed_shape() {
        let p = page();
        assert_eq!(p.len(), PAGE_RESOURCES);
        let total: usize = p.values().map(|(_, b)| b.len()).sum();
        assert_eq!(total, PAGE_BYTES);
        assert_eq!(p["/index.html"].1.len(), INDEX_BYTES);
        for (path, size) in RESOURCES {
            assert_eq!(p[&format!("/{path}")].1.len(), size, "{path}");
        }
        let index = String::from_utf8(p["/index.html"].1.clone()).unwrap();
        for path in p.keys().filter(|k| *k != "/index.html") {
            assert_eq!(
                index.matches(&format!("\"{path}\"")).count(),
                1,
                "{path} referenced once"
            );
        }
        assert_eq!(page(), p, "deterministic");
        let kinds: Vec<&str> = p.values().map(|(k, _)| *k).collect();
        assert_eq!(kinds.iter().filter(|k| **k == "text/css").count(), 4);
        assert_eq!(kinds.iter().filter(|k| **k == "text/javascript").count(), 6);
        assert_eq!(kinds.iter().filter(|k| **k == "image/svg+xml").count(), 15);
    }

    #[test]
    fn comments_stay_closed() {
        for (path, (_, body)) in page() {
            let text = String::from_utf8(body).unwrap();
            let inner = text
                .split("<!--")
                .nth(1)
                .and_then(|c| c.split("-->").next());
            if let Some(c) = inner {
                assert!(!c.contains("--"), "{path}");
            }
        }
    }

    #[test]
    fn results_are_read_from_the_dom() {
        let dom =
            "<pre id=\"result\">PAGE-RESULT loaded=25 errors=0 resources=25 load_ms=812.5</pre>";
        let r = PageResult::from_dom(dom).unwrap();
        assert_eq!(
            r,
            PageResult {
                loaded: 25,
                errors: 0,
                resources: 25,
                load_ms: 812.5
            }
        );
        assert!(r.complete());
        assert!(PageResult::from_dom("<pre>no load event</pre>").is_none());
    }

    /// The page in a real browser, without a proxy: every resource loads
    /// and the script reports it (skipped without chromium on PATH).
    #[test]
    fn chromium_loads_the_whole_page() {
        let Some(c) = on_path("chromium") else {
            eprintln!("SKIP: chromium not installed");
            return;
        };
        let s = PageServer::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (r, wall) = load(&c, dir.path(), None, &s.url(), Duration::from_secs(60)).unwrap();
        assert!(r.complete(), "{r:?}");
        assert!(r.load_ms > 0.0 && r.load_ms < wall * 1000.0, "{r:?} {wall}");
    }

    #[test]
    fn the_server_serves_the_page_with_keep_alive() {
        let s = PageServer::start().unwrap();
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let p = page();
        let mut r = BufReader::new(c.try_clone().unwrap());
        for path in ["/index.html", "/i14.svg"] {
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if let Some(v) = h.strip_prefix("Content-Length: ") {
                    len = v.trim().parse().unwrap();
                }
                if h == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            assert_eq!(body, p[path].1, "{path}");
        }
    }
}
