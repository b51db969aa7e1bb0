//! Config files as operators (or a broken editor) write them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("config.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = loopmix_node::config::NodeConfig::load(&path);
    let _ = loopmix_client::config::ClientConfig::load(&path);
});
