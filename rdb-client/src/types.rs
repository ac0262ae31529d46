//! The values calls take and return.

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The value bytes.
    pub value: Vec<u8>,
    /// The version the store gave this value (rises with every write of the key).
    pub version: u64,
}

/// What a compare-and-swap expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasExpect {
    /// The key does not exist.
    Absent,
    /// The key exists with this version.
    Version(u64),
    /// The key exists with this value.
    Value(Vec<u8>),
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasResult {
    /// Whether the expectation held and the write was applied.
    pub succeeded: bool,
    /// The key's value and version at the time of the comparison (`None` if absent).
    pub current: Option<Value>,
    /// The version of the new value, if one was written.
    pub new_version: Option<u64>,
}

/// Options of [`Client::scan_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Most pairs to return (0 = no limit).
    pub limit: usize,
    /// Return pairs from the end of the range backwards.
    pub reverse: bool,
    /// Leave values empty.
    pub keys_only: bool,
}
