//! Resident memory, from `/proc/self/status` (Linux; `None` elsewhere).
//!
//! `VmRSS` is what the process holds now and `VmHWM` its peak, both in
//! kB. Bytes per pending timer are estimated as the RSS growth between the
//! engine's start and the moment of peak pending, divided by that peak: the
//! simulation's own tables are allocated and touched before the baseline is
//! taken, so the growth is the engine's (wheel, index, channels).

/// Resident set size now and at its peak, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Rss {
    pub(crate) now_bytes: u64,
    pub(crate) peak_bytes: u64,
}

/// Reads the process's resident memory.
pub(crate) fn rss() -> Option<Rss> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    Some(Rss {
        now_bytes: field("VmRSS:")?,
        peak_bytes: field("VmHWM:")?,
    })
}
