//! The SOCKS5 server's handshake over arbitrary client bytes.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    rt().block_on(async {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let _ = a.write_all(data).await;
        let _ = a.shutdown().await;
        let _ = loopmix_client::socks5::handshake(&mut b).await;
    });
});
