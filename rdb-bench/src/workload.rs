//! What a worker does next: the operation (from the workload or the mix) and
//! the key (from the key space and its distribution).

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Write one key per operation.
    Put,
    /// Read one key per operation.
    Get,
    /// Read a key, then compare-and-swap it on the version read.
    Cas,
    /// Read up to --scan-limit keys from a random start key.
    Scan,
    /// A mix of get, put, cas and scan by the ratios of --mix.
    Mixed,
    /// Take one timestamp per operation from the TSO (FlareDB only).
    Tso,
}

impl Workload {
    /// Whether the keys should exist before measuring.
    pub fn wants_preload(self) -> bool {
        !matches!(self, Workload::Put | Workload::Tso)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Cas => "cas",
            Workload::Scan => "scan",
            Workload::Mixed => "mixed",
            Workload::Tso => "tso",
        };
        f.write_str(s)
    }
}

/// One operation kind; each has its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Get,
    Put,
    Cas,
    Scan,
    Tso,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Get, Op::Put, Op::Cas, Op::Scan, Op::Tso];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Cas => "cas",
            Op::Scan => "scan",
            Op::Tso => "tso",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Ratios of the `mixed` workload, e.g. `get=80,put=15,cas=5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// (operation, weight), weights > 0.
    parts: Vec<(Op, u32)>,
    total: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            parts: vec![(Op::Get, 80), (Op::Put, 15), (Op::Cas, 5)],
            total: 100,
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut parts = Vec::new();
        for item in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = item
                .split_once('=')
                .ok_or_else(|| format!("mix entry {item:?} is not OP=WEIGHT"))?;
            let op = match name.trim() {
                "get" => Op::Get,
                "put" => Op::Put,
                "cas" => Op::Cas,
                "scan" => Op::Scan,
                other => {
                    return Err(format!(
                        "mix operation {other:?} is not one of get, put, cas, scan"
                    ))
                }
            };
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("mix weight {weight:?} of {name} is not a whole number"))?;
            if parts.iter().any(|(o, _)| *o == op) {
                return Err(format!("mix names {name} twice"));
            }
            if weight > 0 {
                parts.push((op, weight));
            }
        }
        let total: u32 = parts.iter().map(|(_, w)| *w).sum();
        if total == 0 {
            return Err("mix has no operation with a weight above 0".into());
        }
        Ok(Mix { parts, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self
            .parts
            .iter()
            .map(|(op, w)| format!("{}={w}", op.name()))
            .collect();
        f.write_str(&s.join(","))
    }
}

impl Mix {
    fn pick(&self, rng: &mut SmallRng) -> Op {
        let mut x = rng.random_range(0..self.total);
        for (op, w) in &self.parts {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        self.parts[0].0
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Zipfian (YCSB-like, exponent --zipf-exponent): key 0 hottest.
    Zipfian,
}

/// The key space: `count` keys of `size` bytes, `<prefix><zero-padded index>`,
/// so key order is index order.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: Vec<u8>,
    count: u64,
    width: usize,
}

/// Prefix of every benchmark key (so a scan stays inside the benchmark's keys).
pub const KEY_PREFIX: &[u8] = b"bench/";

impl KeySpace {
    /// `size` must leave room for the prefix and the digits of `count - 1`.
    pub fn new(count: u64, size: usize) -> Result<KeySpace, String> {
        if count == 0 {
            return Err("--keys must be at least 1".into());
        }
        let digits = (count - 1).to_string().len();
        if size < KEY_PREFIX.len() + digits {
            return Err(format!(
                "--key-size {size} is too small for {count} keys: needs at least {} bytes \
                 (prefix {:?} + {digits} digits)",
                KEY_PREFIX.len() + digits,
                String::from_utf8_lossy(KEY_PREFIX)
            ));
        }
        Ok(KeySpace {
            prefix: KEY_PREFIX.to_vec(),
            count,
            width: size - KEY_PREFIX.len(),
        })
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The key with this index.
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(format!("{index:0w$}", w = self.width).as_bytes());
        k
    }

    /// First key past every benchmark key (end of a scan).
    pub fn end(&self) -> Vec<u8> {
        let mut end = self.prefix.clone();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        end
    }
}

/// Draws key indexes.
pub enum KeyPicker {
    Uniform(u64),
    Zipfian(Zipf<f64>),
}

impl KeyPicker {
    pub fn new(dist: KeyDistribution, count: u64, exponent: f64) -> Result<KeyPicker, String> {
        Ok(match dist {
            KeyDistribution::Uniform => KeyPicker::Uniform(count),
            KeyDistribution::Zipfian => KeyPicker::Zipfian(
                Zipf::new(count as f64, exponent)
                    .map_err(|e| format!("zipfian with exponent {exponent}: {e}"))?,
            ),
        })
    }

    pub fn pick(&self, rng: &mut SmallRng) -> u64 {
        match self {
            KeyPicker::Uniform(n) => rng.random_range(0..*n),
            // Zipf samples 1..=n as a float; rank 1 is the hottest.
            KeyPicker::Zipfian(z) => (z.sample(rng) as u64).saturating_sub(1),
        }
    }
}

/// A workload's op chooser.
pub enum OpPicker {
    Fixed(Op),
    Mixed(Mix),
}

impl OpPicker {
    pub fn new(workload: Workload, mix: &Mix) -> OpPicker {
        match workload {
            Workload::Put => OpPicker::Fixed(Op::Put),
            Workload::Get => OpPicker::Fixed(Op::Get),
            Workload::Cas => OpPicker::Fixed(Op::Cas),
            Workload::Scan => OpPicker::Fixed(Op::Scan),
            Workload::Tso => OpPicker::Fixed(Op::Tso),
            Workload::Mixed => OpPicker::Mixed(mix.clone()),
        }
    }

    pub fn pick(&self, rng: &mut SmallRng) -> Op {
        match self {
            OpPicker::Fixed(op) => *op,
            OpPicker::Mixed(m) => m.pick(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keys_are_fixed_size_and_ordered() {
        let ks = KeySpace::new(10_000, 16).unwrap();
        let a = ks.key(9);
        let b = ks.key(10);
        let c = ks.key(9_999);
        assert_eq!(a.len(), 16);
        assert_eq!(c.len(), 16);
        assert!(a < b && b < c);
        assert!(c < ks.end());
        assert!(KeySpace::new(10_000, 9).is_err());
        assert!(KeySpace::new(0, 16).is_err());
    }

    #[test]
    fn mix_parses_and_rejects() {
        let m: Mix = "get=50, put=50".parse().unwrap();
        assert_eq!(m.to_string(), "get=50,put=50");
        assert!("get=0".parse::<Mix>().is_err());
        assert!("get".parse::<Mix>().is_err());
        assert!("delete=5".parse::<Mix>().is_err());
        assert!("get=1,get=2".parse::<Mix>().is_err());
        let mut rng = SmallRng::seed_from_u64(1);
        let only_put: Mix = "put=3,get=0".parse().unwrap();
        assert!((0..100).all(|_| only_put.pick(&mut rng) == Op::Put));
    }

    #[test]
    fn zipfian_prefers_low_keys() {
        let mut rng = SmallRng::seed_from_u64(7);
        let z = KeyPicker::new(KeyDistribution::Zipfian, 1000, 0.99).unwrap();
        let draws: Vec<u64> = (0..10_000).map(|_| z.pick(&mut rng)).collect();
        assert!(draws.iter().all(|&i| i < 1000));
        let hot = draws.iter().filter(|&&i| i < 10).count();
        assert!(hot > 2_000, "10 hottest of 1000 keys drew {hot} of 10000");
        let u = KeyPicker::new(KeyDistribution::Uniform, 1000, 0.99).unwrap();
        let hot_u = (0..10_000).filter(|_| u.pick(&mut rng) < 10).count();
        assert!(hot_u < 300, "uniform drew {hot_u}");
    }
}
