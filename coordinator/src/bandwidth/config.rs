//! The bandwidth configuration: validation, defaults, its place in the store, and the caps it
//! puts in force at a given time.

use std::time::Duration;

use foldhash::HashMap;
use hyperexport_proto::v1::BandwidthConfig;
use hyperexport_shared::timetable::Timetable;
use prost::Message;
use redb::ReadableDatabase;

use super::allocate::{Caps, Rate};
use crate::error::{CoordinatorError, Result};
use crate::store::{BANDWIDTH, JobStore, fail};

/// Allocation interval when the configuration names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// Shortest allocation interval accepted.
pub const MIN_INTERVAL_MS: u32 = 100;
/// The class of a job submitted without one.
pub const DEFAULT_CLASS: &str = "standard";
/// Classes (and weights) when the configuration names none.
pub const DEFAULT_CLASSES: [(&str, u32); 3] = [("critical", 8), ("standard", 4), ("bulk", 1)];
const COUNTS: [&str; 3] = ["reads", "uploads", "both"];
const MAX_ENTRIES: usize = 10_000;
const CONFIG_KEY: &str = "config";

/// A validated configuration, its timetables parsed.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// As stored (defaults filled in).
    pub config: BandwidthConfig,
    global: Timetable,
    regions: HashMap<String, Timetable>,
    sites: HashMap<String, Timetable>,
    /// The allocation interval.
    pub interval: Duration,
}

fn parse(field: &str, text: &str) -> Result<Timetable> {
    if text.trim().is_empty() {
        return Ok(Timetable::Constant(None));
    }
    Timetable::parse(text).map_err(|e| CoordinatorError::Invalid(format!("bandwidth {field}: {e}")))
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control)
}

/// Checks `config` and fills in its defaults; the error names the field at fault.
pub fn compile(mut config: BandwidthConfig) -> Result<Compiled> {
    let invalid = |m: String| Err(CoordinatorError::Invalid(m));
    if config.regions.len() + config.sites.len() + config.classes.len() > MAX_ENTRIES {
        return invalid(format!("bandwidth configuration has more than {MAX_ENTRIES} entries"));
    }
    let global = parse("global", &config.global)?;
    let mut regions = HashMap::default();
    for (region, text) in &config.regions {
        if !name_ok(region) {
            return invalid(format!("bandwidth region {region:?} is not a region name (1-128 printable characters)"));
        }
        regions.insert(region.clone(), parse(&format!("region {region}"), text)?);
    }
    let mut sites = HashMap::default();
    for (key, text) in &config.sites {
        match key.split_once('/') {
            Some((r, s)) if name_ok(r) && name_ok(s) && !s.contains('/') => {}
            _ => return invalid(format!("bandwidth site {key:?} is not REGION/SITE")),
        }
        sites.insert(key.clone(), parse(&format!("site {key}"), text)?);
    }
    if config.classes.is_empty() {
        config.classes = DEFAULT_CLASSES.iter().map(|(c, w)| (c.to_string(), *w)).collect();
    }
    for (class, weight) in &config.classes {
        if !name_ok(class) || !(1..=1000).contains(weight) {
            return invalid(format!("bandwidth class {class:?} weight {weight}: names 1-128 printable characters, weights 1-1000"));
        }
    }
    if config.counts.is_empty() {
        config.counts = "both".into();
    }
    if !COUNTS.contains(&config.counts.as_str()) {
        return invalid(format!("bandwidth counts {:?}: one of reads, uploads, both", config.counts));
    }
    let interval = match config.interval_ms {
        0 => DEFAULT_INTERVAL,
        ms if ms < MIN_INTERVAL_MS => return invalid(format!("bandwidth interval {ms} ms is under {MIN_INTERVAL_MS} ms")),
        ms => Duration::from_millis(ms as u64),
    };
    Ok(Compiled { config, global, regions, sites, interval })
}

fn rate(limit: Option<u64>) -> Rate {
    limit.map_or(f64::INFINITY, |b| b as Rate)
}

impl Compiled {
    /// The defaults: no caps, the default classes.
    pub fn default_config() -> Compiled {
        compile(BandwidthConfig::default()).expect("the default configuration is valid")
    }

    /// Whether `class` is one of the configured classes.
    pub fn has_class(&self, class: &str) -> bool {
        self.config.classes.contains_key(class)
    }

    /// The caps in force at `unix_ms`, with the class weights (job caps are added by the caller).
    pub fn caps_at(&self, unix_ms: i64) -> Caps {
        let at = |map: &HashMap<String, Timetable>| map.iter().map(|(k, t)| (k.clone(), rate(t.limit_at(unix_ms)))).collect();
        Caps {
            global: rate(self.global.limit_at(unix_ms)),
            regions: at(&self.regions),
            sites: at(&self.sites),
            weights: self.config.classes.iter().map(|(c, w)| (c.clone(), *w as f64)).collect(),
            jobs: HashMap::default(),
        }
    }

    /// The smallest cap in force above an agent of `region`/`site` (infinity: none).
    pub fn path_cap(&self, caps: &Caps, region: &str, site: &str) -> Rate {
        let r = caps.regions.get(region).copied().unwrap_or(f64::INFINITY);
        // Most configurations cap no site: no key to build then.
        let s = match caps.sites.is_empty() {
            true => f64::INFINITY,
            false => caps.sites.get(&format!("{region}/{site}")).copied().unwrap_or(f64::INFINITY),
        };
        caps.global.min(r).min(s)
    }
}

impl JobStore {
    /// The stored bandwidth configuration (the defaults when none was ever set).
    pub fn bandwidth(&self) -> Result<Compiled> {
        let txn = self.db.begin_read().map_err(fail("begin"))?;
        let table = txn.open_table(BANDWIDTH).map_err(fail("open table"))?;
        match table.get(CONFIG_KEY).map_err(fail("get"))? {
            Some(v) => compile(BandwidthConfig::decode(v.value()).map_err(fail("decode bandwidth configuration"))?),
            None => Ok(Compiled::default_config()),
        }
    }

    /// Replaces the bandwidth configuration; durable on return.
    pub fn put_bandwidth(&self, config: &BandwidthConfig) -> Result<()> {
        let txn = self.db.begin_write().map_err(fail("begin"))?;
        txn.open_table(BANDWIDTH)
            .map_err(fail("open table"))?
            .insert(CONFIG_KEY, config.encode_to_vec().as_slice())
            .map_err(fail("insert"))?;
        txn.commit().map_err(fail("commit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_field() {
        let c = Compiled::default_config();
        assert!(c.has_class("critical") && c.has_class("standard") && c.has_class("bulk"));
        assert_eq!(c.config.counts, "both");
        assert_eq!(c.interval, DEFAULT_INTERVAL);
        assert!(c.caps_at(0).global.is_infinite());
        for (config, needle) in [
            (BandwidthConfig { global: "60X".into(), ..Default::default() }, "bandwidth global"),
            (BandwidthConfig { regions: [("b".into(), "0".into())].into(), ..Default::default() }, "region b"),
            (BandwidthConfig { sites: [("nosite".into(), "1M".into())].into(), ..Default::default() }, "REGION/SITE"),
            (BandwidthConfig { classes: [("gold".into(), 0)].into(), ..Default::default() }, "weight 0"),
            (BandwidthConfig { counts: "writes".into(), ..Default::default() }, "counts"),
            (BandwidthConfig { interval_ms: 5, ..Default::default() }, "interval"),
        ] {
            let err = compile(config).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn caps_follow_the_timetable_and_the_store_keeps_them() {
        let config =
            BandwidthConfig { global: "08:00,50M 18:00,off".into(), regions: [("b".into(), "20M".into())].into(), ..Default::default() };
        let c = compile(config.clone()).unwrap();
        let noon = 12 * 3_600_000;
        assert_eq!(c.caps_at(noon).global, (50 << 20) as f64);
        assert!(c.caps_at(20 * 3_600_000).global.is_infinite());
        assert_eq!(c.path_cap(&c.caps_at(noon), "b", "any"), (20 << 20) as f64);
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        assert!(store.bandwidth().unwrap().config.global.is_empty());
        store.put_bandwidth(&c.config).unwrap();
        drop(store);
        let store = JobStore::open(dir.path()).unwrap();
        assert_eq!(store.bandwidth().unwrap().config, c.config);
    }
}
