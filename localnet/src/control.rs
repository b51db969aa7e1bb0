//! `loopmix-localnet ctl`: injecting failures into a running localnet.
//!
//! The running localnet owns its children (only a parent can reap them and
//! know how they ended), so `ctl` does not signal processes itself: it asks
//! the localnet over a Unix socket in the network's directory,
//! `DIR/localnet.sock`, and the localnet acts on its own child, updates
//! `localnet.json` and the status line, and answers.
//!
//! The protocol is one request line and one answer per connection:
//!
//! ```text
//! request:  VERB [NAME]\n            VERB = kill | stop | cont | restart | status
//!                                    at most MAX_LINE bytes, ASCII
//! answer:   ok MESSAGE               done (`status`: a table follows, one
//!                                    member a line)
//!           unknown MESSAGE          no such verb or member (the message
//!                                    lists the valid ones); ctl exits 2
//!           error MESSAGE            it could not be done; ctl exits 1
//! ```
//!
//! then the localnet closes the connection. The socket is served by a
//! thread that reads the request (with a timeout, so a silent client cannot
//! block the next one for long) and hands it to the localnet's main loop,
//! which does everything else: it is the only place children are touched.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

/// The socket's name in the network's directory.
pub const SOCKET: &str = "localnet.sock";

/// Longest request line accepted, newline included (a verb and a member
/// name need a few dozen bytes).
pub const MAX_LINE: usize = 256;

/// Longest answer `ctl` reads (a status table of a few dozen members).
const MAX_ANSWER: u64 = 1 << 20;

/// How long the server waits for a client to send its request or take its
/// answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server waits for the main loop to act: a restart waits up
/// to [`super::process::STOP_GRACE`] for the old process and then up to
/// [`RESTART_TIMEOUT`] for the new one to listen.
const ACT_TIMEOUT: Duration = Duration::from_secs(150);

/// How long a restarted member may take to listen again.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

/// What `ctl` can do to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// SIGKILL: the member dies as in a crash.
    Kill,
    /// SIGSTOP: the member hangs, with its sockets still open.
    Stop,
    /// SIGCONT: a stopped member goes on.
    Cont,
    /// Start the member again with the same config, keys, data and
    /// addresses (stopping it first if it runs); it registers and rejoins.
    Restart,
    /// Print every member, its state and pid.
    Status,
}

impl Action {
    pub fn verb(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Stop => "stop",
            Action::Cont => "cont",
            Action::Restart => "restart",
            Action::Status => "status",
        }
    }

    const ALL: [Action; 5] = [
        Action::Kill,
        Action::Stop,
        Action::Cont,
        Action::Restart,
        Action::Status,
    ];
}

/// `loopmix-localnet ctl`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: Action,

    /// The member (as in `ctl status` and localnet.json: auth0, mix0,
    /// provider0, exit, socks5, ...). Not for `status`.
    pub name: Option<String>,

    /// The running localnet's directory (its --dir, or the temporary
    /// directory its banner names).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// A request from `ctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    /// Always set, except for `status`.
    pub name: Option<String>,
}

/// The localnet's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    /// An unknown verb or member.
    Unknown(String),
    Error(String),
}

impl Reply {
    fn to_wire(&self) -> String {
        let (word, msg) = match self {
            Reply::Ok(m) => ("ok", m),
            Reply::Unknown(m) => ("unknown", m),
            Reply::Error(m) => ("error", m),
        };
        format!("{word} {}\n", msg.trim_end())
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &str) -> Result<Request, Reply> {
    let verbs = Action::ALL.map(Action::verb).join(", ");
    let mut words = line.split_ascii_whitespace();
    let Some(verb) = words.next() else {
        return Err(Reply::Unknown(format!("empty request; commands: {verbs}")));
    };
    let Some(action) = Action::ALL.into_iter().find(|a| a.verb() == verb) else {
        return Err(Reply::Unknown(format!(
            "unknown command {verb:?}; commands: {verbs}"
        )));
    };
    let name = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(Reply::Unknown(format!(
            "too many words in {line:?}: VERB [NAME]"
        )));
    }
    match (action, &name) {
        (Action::Status, Some(_)) => Err(Reply::Unknown("status takes no name".into())),
        (Action::Status, None) => Ok(Request { action, name }),
        (_, None) => Err(Reply::Unknown(format!("{verb} needs a member name"))),
        (_, Some(_)) => Ok(Request { action, name }),
    }
}

/// A request waiting for the main loop, and where its answer goes.
pub struct Pending {
    pub request: Request,
    answer: mpsc::Sender<Reply>,
}

impl Pending {
    pub fn answer(self, reply: Reply) {
        // The client may have given up: nobody to tell then.
        let _ = self.answer.send(reply);
    }
}

/// The socket of a running localnet. Dropping it stops serving and removes
/// the socket file.
pub struct ControlServer {
    path: PathBuf,
    requests: mpsc::Receiver<Pending>,
    closing: Arc<AtomicBool>,
}

impl ControlServer {
    /// Serves `dir/localnet.sock` (replacing a file left there by a
    /// localnet that died without removing it).
    pub fn bind(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(SOCKET);
        if UnixStream::connect(&path).is_ok() {
            anyhow::bail!("another localnet serves {}", path.display());
        }
        let _ = std::fs::remove_file(&path);
        let listener =
            UnixListener::bind(&path).with_context(|| format!("serving {}", path.display()))?;
        let (tx, requests) = mpsc::channel();
        let closing = Arc::new(AtomicBool::new(false));
        let flag = closing.clone();
        std::thread::Builder::new()
            .name("localnet-ctl".into())
            .spawn(move || serve(listener, tx, flag))
            .context("starting the control thread")?;
        Ok(Self {
            path,
            requests,
            closing,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next request, if one is waiting.
    pub fn try_next(&self) -> Option<Pending> {
        self.requests.try_recv().ok()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wakes the thread blocked in accept, so it sees `closing`.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, requests: mpsc::Sender<Pending>, closing: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        // One client at a time: requests are acted on one at a time anyway,
        // and every step below is bounded by a timeout.
        if let Ok(conn) = conn {
            let reply = match read_request(&conn) {
                Ok(request) => {
                    let (answer, rx) = mpsc::channel();
                    if requests.send(Pending { request, answer }).is_err() {
                        return;
                    }
                    rx.recv_timeout(ACT_TIMEOUT).unwrap_or_else(|e| {
                        Reply::Error(match e {
                            mpsc::RecvTimeoutError::Timeout => {
                                format!("localnet did not act within {} s", ACT_TIMEOUT.as_secs())
                            }
                            mpsc::RecvTimeoutError::Disconnected => {
                                "localnet is stopping".to_string()
                            }
                        })
                    })
                }
                Err(r) => {
                    // Unread bytes would make closing reset the connection
                    // before the client reads why: discard a bounded amount.
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
                    let _ = std::io::copy(&mut (&conn).take(64 * 1024), &mut std::io::sink());
                    r
                }
            };
            let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
            let _ = (&conn).write_all(reply.to_wire().as_bytes());
        }
    }
}

/// Reads one bounded request line within [`IO_TIMEOUT`].
fn read_request(conn: &UnixStream) -> Result<Request, Reply> {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX);
    let read = BufReader::new(conn.take(limit)).read_until(b'\n', &mut line);
    if let Err(e) = read {
        return Err(Reply::Error(format!("reading the request: {e}")));
    }
    if line.last() != Some(&b'\n') {
        return Err(Reply::Error(format!(
            "the request must be one line of at most {MAX_LINE} bytes, ending in a newline"
        )));
    }
    let Ok(text) = std::str::from_utf8(&line) else {
        return Err(Reply::Error("the request is not UTF-8".into()));
    };
    parse_request(text.trim_end())
}

/// Sends `request` to the localnet serving `dir`; its answer.
pub fn send(dir: &Path, request: &Request) -> anyhow::Result<Reply> {
    let path = dir.join(SOCKET);
    let mut conn = match UnixStream::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound if !dir.is_dir() => {
                    format!("{} is not a directory", dir.display())
                }
                std::io::ErrorKind::NotFound
                    if dir.join(super::network::LOCALNET_JSON).exists() =>
                {
                    format!(
                        "the localnet of {} is not running any more (its {} is left)",
                        dir.display(),
                        super::network::LOCALNET_JSON
                    )
                }
                std::io::ErrorKind::NotFound => format!(
                    "no {SOCKET} in {}: no localnet runs there, or it is still starting \
                     (the socket appears when the network is ready)",
                    dir.display()
                ),
                std::io::ErrorKind::ConnectionRefused => format!(
                    "no localnet runs in {} ({} is left from one that stopped)",
                    dir.display(),
                    path.display()
                ),
                _ => format!("connecting to {}: {e}", path.display()),
            };
            anyhow::bail!("{why}");
        }
    };
    let timeout = match request.action {
        // A restart stops the old process and waits for the new one.
        Action::Restart => ACT_TIMEOUT + Duration::from_secs(10),
        _ => Duration::from_secs(30),
    };
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = request.action.verb().to_string();
    if let Some(n) = &request.name {
        line.push(' ');
        line.push_str(n);
    }
    line.push('\n');
    conn.write_all(line.as_bytes())
        .with_context(|| format!("writing to {}", path.display()))?;
    let mut answer = String::new();
    conn.take(MAX_ANSWER)
        .read_to_string(&mut answer)
        .with_context(|| format!("reading the answer from {}", path.display()))?;
    let (word, msg) = answer.split_once(' ').unwrap_or((answer.trim(), ""));
    let msg = msg.trim_end().to_string();
    Ok(match word {
        "ok" => Reply::Ok(msg),
        "unknown" => Reply::Unknown(msg),
        "error" => Reply::Error(msg),
        _ => anyhow::bail!("unexpected answer from {}: {answer:?}", path.display()),
    })
}

/// `loopmix-localnet ctl`: exit code 0 done, 1 failed (or no localnet
/// running), 2 unknown member or bad usage.
pub fn main(args: CtlArgs) -> ExitCode {
    let request = match (args.action, args.name) {
        (Action::Status, None) => Request {
            action: Action::Status,
            name: None,
        },
        (Action::Status, Some(_)) => {
            eprintln!("loopmix-localnet ctl: error: status takes no member name");
            return ExitCode::from(2);
        }
        (action, Some(name)) => Request {
            action,
            name: Some(name),
        },
        (action, None) => {
            eprintln!(
                "loopmix-localnet ctl: error: {} needs a member name (see `loopmix-localnet ctl status --dir DIR`)",
                action.verb()
            );
            return ExitCode::from(2);
        }
    };
    match send(&args.dir, &request) {
        Ok(Reply::Ok(msg)) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Ok(Reply::Unknown(msg)) => {
            eprintln!("loopmix-localnet ctl: error: {msg}");
            ExitCode::from(2)
        }
        Ok(Reply::Error(msg)) => {
            eprintln!("loopmix-localnet ctl: error: {msg}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loopmix-localnet ctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request("kill mix2"),
            Ok(Request {
                action: Action::Kill,
                name: Some("mix2".into())
            })
        );
        assert_eq!(
            parse_request("status").map(|r| r.action),
            Ok(Action::Status)
        );
        for bad in ["", "explode mix2", "kill", "status mix2", "stop a b"] {
            assert!(
                matches!(parse_request(bad), Err(Reply::Unknown(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serves_and_bounds_requests() {
        let dir = tempfile::tempdir().unwrap();
        let server = ControlServer::bind(dir.path()).unwrap();
        let path = dir.path().to_path_buf();
        let client = std::thread::spawn(move || {
            send(
                &path,
                &Request {
                    action: Action::Stop,
                    name: Some("mix1".into()),
                },
            )
        });
        let pending = loop {
            if let Some(p) = server.try_next() {
                break p;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(pending.request.name.as_deref(), Some("mix1"));
        pending.answer(Reply::Ok("stopped".into()));
        assert_eq!(client.join().unwrap().unwrap(), Reply::Ok("stopped".into()));

        // An overlong line is refused without reaching the main loop.
        let mut c = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
        c.write_all(&[b'a'; MAX_LINE + 10]).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("error "), "{answer}");
        assert!(server.try_next().is_none());

        drop(server);
        assert!(!dir.path().join(SOCKET).exists());
        let err = send(
            dir.path(),
            &Request {
                action: Action::Status,
                name: None,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("no localnet"), "{err}");
    }
}
