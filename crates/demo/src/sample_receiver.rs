//! `obmguard-demo sample-receiver`: the test kit's receiver on a given address, answering Ack to
//! every request and logging one line per message (docker-compose's "legacy receiver"). It
//! never logs a session id, only its length.

use std::net::SocketAddr;

use obmguard_testkit::receiver::{Behaviour, Receiver};

/// Run until Ctrl-C or SIGTERM; returns the process exit code.
pub(crate) fn run(listen: SocketAddr) -> i32 {
    let Some(rt) = crate::runtime("sample-receiver") else {
        return 2;
    };
    rt.block_on(async {
        let receiver = match Receiver::start_on(listen, Behaviour::Ack).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("obmguard-demo sample-receiver: cannot listen on {listen}: {e}");
                return 2;
            }
        };
        receiver.set_logging(true);
        tracing::info!(listen = %receiver.addr(), "sample legacy receiver: answering Ack to every request");
        crate::stop_signal().await;
        0
    })
}
