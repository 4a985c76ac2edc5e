//! Ports for child processes to listen on.

/// A port for a child process to listen on, free when chosen. Chosen below the kernel's
/// ephemeral range (32768-60999), from one counter per test binary: a port the kernel hands
/// out for `bind(0)` or for an outgoing connection (every gRPC, Redis and SQL client makes
/// them) could be handed out again before the child binds it, and one such collision failed
/// a CI run with "zones did not register".
fn free_port(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Start where another test binary (run before or after this one) is unlikely to.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    (0..SPAN)
        .map(|_| (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16)
        .find(|&p| free(p))
        .expect("a free port below the ephemeral range")
}

/// A TCP port, free when chosen.
pub fn free_tcp_port() -> u16 {
    free_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A UDP port, free when chosen.
pub fn free_udp_port() -> u16 {
    free_port(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
}
