//! The wall clock: the one place loopmix reads the time of day. Signed
//! documents carry these times; the pure protocol crate never reads a clock
//! and takes them from its caller.

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970), for
/// schedules finer than a second (an authority's vote and liveness rounds).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
