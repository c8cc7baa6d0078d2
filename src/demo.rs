//! `obmguard demo`: a self-contained tour on loopback (being written).

/// Run the demo; returns the process exit code.
pub fn run(_keep_running: bool) -> i32 {
    eprintln!("obmguard demo is not available in this build yet");
    2
}

/// Run the sample legacy receiver; returns the process exit code.
pub fn sample_receiver(_listen: std::net::SocketAddr) -> i32 {
    eprintln!("obmguard sample-receiver is not available in this build yet");
    2
}
