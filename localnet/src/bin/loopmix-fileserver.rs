//! `loopmix-fileserver`: serves the files of one directory over plain
//! HTTP/1.1 (GET only). The container testnet (`deploy/docker/`) fetches
//! through the mixnet from it; the test images have no other web server.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;

/// Serve the files under --root over HTTP (GET only, no listings).
#[derive(Debug, Parser)]
#[command(name = "loopmix-fileserver", version)]
struct Options {
    /// Directory whose files are served (`/a/b` is ROOT/a/b).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
}

/// `root` joined with the request path, if the path names a file below it
/// (no `..`, no absolute components).
fn resolve(root: &Path, uri_path: &str) -> Option<PathBuf> {
    let rel = Path::new(uri_path.trim_start_matches('/'));
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

async fn serve(State(root): State<PathBuf>, uri: Uri) -> Response {
    let Some(path) = resolve(&root, uri.path()) else {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            tracing::info!(path = %uri.path(), bytes = bytes.len(), "200");
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Err(e) => {
            tracing::info!(path = %uri.path(), error = %e, "404");
            (StatusCode::NOT_FOUND, "not found\n").into_response()
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    loopmix_net::process::init_logging("info", false);
    let opts = Options::parse();
    let app = Router::new().fallback(serve).with_state(opts.root.clone());
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, root = %opts.root.display(), "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(loopmix_net::process::shutdown_signal())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_stays_below_root() {
        let root = Path::new("/srv");
        assert_eq!(
            resolve(root, "/a/b.bin"),
            Some(PathBuf::from("/srv/a/b.bin"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/a/../../x"), None);
    }
}
