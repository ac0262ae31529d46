//! Versions of FlareDB binaries as they travel in `Store.version` and
//! `StoreHeartbeatResponse.cluster_version`: `major.minor.patch`.

/// A version, ordered as released.
pub type Version = (u64, u64, u64);

/// The first release (what a store that registered without a version runs).
pub const FIRST: Version = (0, 1, 0);

/// Parses `major.minor.patch` (a pre-release or build suffix is ignored);
/// `None` for anything else.
pub fn parse(v: &str) -> Option<Version> {
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

/// Formats a version as `major.minor.patch`.
pub fn format((major, minor, patch): Version) -> String {
    format!("{major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_as_released() {
        assert_eq!(parse("0.2.0"), Some((0, 2, 0)));
        assert_eq!(parse("1.10.3-rc.1+abc"), Some((1, 10, 3)));
        for bad in ["", "1", "1.2", "1.2.3.4", "a.b.c", "1.2.x"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(parse("0.10.0") > parse("0.9.9"));
        assert_eq!(format((0, 2, 0)), "0.2.0");
    }
}
