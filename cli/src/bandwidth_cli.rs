//! `hyperexport bandwidth show` and `hyperexport bandwidth set`: the coordinator's bandwidth
//! budgets (caps, timetables, QoS classes) and the allocation in force.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use hyperexport_proto::v1::bandwidth_service_client::BandwidthServiceClient;
use hyperexport_proto::v1::{BandwidthConfig, BandwidthTree, GetBandwidthConfigRequest, ShowBandwidthRequest};
use hyperexport_shared::timetable::Timetable;
use hyperexport_shared::units::{format_bytes, parse_size};
use serde_json::json;

use crate::Output;
use crate::progress::print_json;
use crate::remote::{CoordinatorUrl, channel, refused, runtime};

/// `hyperexport bandwidth ...`
#[derive(Debug, Subcommand)]
pub enum BandwidthCommand {
    /// The allocation tree: caps, demand, allocation and achieved rate of every region, site,
    /// class, job and agent, and the configuration in force.
    Show {
        #[command(flatten)]
        url: CoordinatorUrl,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Change the configuration: only what is named changes (persisted; in force at once).
    Set(SetArgs),
}

/// What counts against the buckets.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Counts {
    Reads,
    Uploads,
    Both,
}

/// On or off.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Options of `bandwidth set`. Caps are a rate (`60M` = 60 MiB/s), `off`, or a timetable in
/// rclone's form (`"Mon-Fri-08:00,50M 18:00,off"`, times in UTC).
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The cap over all agents.
    #[arg(long, value_name = "CAP")]
    pub global: Option<String>,
    /// A region's cap, REGION=CAP (repeat; CAP `off` removes it).
    #[arg(long = "region", value_name = "REGION=CAP")]
    pub regions: Vec<String>,
    /// A site's cap, REGION/SITE=CAP (repeat; CAP `off` removes it).
    #[arg(long = "site", value_name = "REGION/SITE=CAP")]
    pub sites: Vec<String>,
    /// A QoS class and its weight, NAME=WEIGHT (repeat; weight 0 removes the class).
    #[arg(long = "class", value_name = "NAME=WEIGHT")]
    pub classes: Vec<String>,
    /// What agents' buckets count.
    #[arg(long, value_enum)]
    pub counts: Option<Counts>,
    /// Lower an agent's rate when its QUIC paths show congestion (AIMD).
    #[arg(long, value_enum)]
    pub adaptive: Option<Switch>,
    /// How often the allocation runs (e.g. 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Start from the defaults (no caps; classes critical 8, standard 4, bulk 1).
    #[arg(long)]
    pub reset: bool,
    #[command(flatten)]
    pub url: CoordinatorUrl,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Checks a cap locally, so that a typo is named before anything is sent.
fn cap(what: &str, text: &str) -> Result<String> {
    Timetable::parse(text).map_err(|e| anyhow!("{what}: {e}"))?;
    Ok(text.trim().to_string())
}

fn pair<'a>(text: &'a str, form: &str) -> Result<(&'a str, &'a str)> {
    text.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| anyhow!("{text:?} is not {form}"))
}

/// Sets (or with `off`, removes) the caps `items` name, each `KEY=CAP` as `form` says.
fn set_caps(caps: &mut std::collections::HashMap<String, String>, items: &[String], flag: &str, form: &str) -> Result<()> {
    for item in items {
        let (key, text) = pair(item, form)?;
        if text.trim().eq_ignore_ascii_case("off") {
            caps.remove(key);
        } else {
            caps.insert(key.to_string(), cap(&format!("{flag} {key}"), text)?);
        }
    }
    Ok(())
}

/// Applies the changes `a` names to `config`.
fn change(mut config: BandwidthConfig, a: &SetArgs) -> Result<BandwidthConfig> {
    if a.reset {
        config = BandwidthConfig::default();
    }
    if let Some(g) = &a.global {
        config.global = cap("--global", g)?;
    }
    set_caps(&mut config.regions, &a.regions, "--region", "REGION=CAP")?;
    set_caps(&mut config.sites, &a.sites, "--site", "REGION/SITE=CAP")?;
    for c in &a.classes {
        let (class, weight) = pair(c, "NAME=WEIGHT")?;
        let weight: u32 = weight.parse().map_err(|_| anyhow!("--class {class}: weight {weight:?} is not a whole number"))?;
        if weight == 0 {
            config.classes.remove(class);
        } else {
            config.classes.insert(class.to_string(), weight);
        }
    }
    if let Some(c) = a.counts {
        config.counts = format!("{c:?}").to_lowercase();
    }
    if let Some(s) = a.adaptive {
        config.adaptive = matches!(s, Switch::On);
    }
    if let Some(i) = a.interval {
        config.interval_ms = u32::try_from(i.as_millis()).map_err(|_| anyhow!("--interval {i:?} is too long"))?;
    }
    Ok(config)
}

fn config_json(c: &BandwidthConfig) -> serde_json::Value {
    json!({"global": c.global, "regions": c.regions, "sites": c.sites, "classes": c.classes,
           "counts": c.counts, "adaptive": c.adaptive, "interval_ms": c.interval_ms})
}

fn print_config(c: &BandwidthConfig) {
    let or_off = |s: &str| if s.is_empty() { "off".to_string() } else { s.to_string() };
    println!("global: {}", or_off(&c.global));
    let mut regions: Vec<_> = c.regions.iter().collect();
    regions.sort();
    for (r, t) in regions {
        println!("region {r}: {t}");
    }
    let mut sites: Vec<_> = c.sites.iter().collect();
    sites.sort();
    for (s, t) in sites {
        println!("site {s}: {t}");
    }
    let mut classes: Vec<_> = c.classes.iter().collect();
    classes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let classes: Vec<String> = classes.iter().map(|(n, w)| format!("{n} {w}")).collect();
    println!("classes: {}", classes.join(", "));
    let interval = if c.interval_ms == 0 { 2000 } else { c.interval_ms };
    println!("counts: {}; adaptive: {}; interval: {interval} ms", c.counts, if c.adaptive { "on" } else { "off" });
}

/// Runs `hyperexport bandwidth ...`.
pub fn run(command: BandwidthCommand) -> Result<ExitCode> {
    match command {
        BandwidthCommand::Show { url, output } => {
            let (config, tree) = runtime()?.block_on(async {
                let mut client = BandwidthServiceClient::new(channel(&url).await?);
                let config = client.get_config(GetBandwidthConfigRequest {}).await.map_err(refused)?.into_inner();
                let tree = client.show(ShowBandwidthRequest {}).await.map_err(refused)?.into_inner();
                Ok::<_, anyhow::Error>((config, tree))
            })?;
            match output {
                Output::Json => print_json(&json!({"event": "result", "operation": "bandwidth-show", "result": {
                    "config": config_json(&config), "unix_ms": tree.unix_ms,
                    "nodes": tree.nodes.iter().map(|n| json!({"level": n.level, "name": n.name, "depth": n.depth,
                        "cap_bps": finite(n.cap_bps), "weight": n.weight, "demand_bps": finite(n.demand_bps),
                        "allocated_bps": finite(n.allocated_bps), "achieved_bps": n.achieved_bps})).collect::<Vec<_>>()}})),
                Output::Text => {
                    print_config(&config);
                    print_tree(&tree);
                }
            }
        }
        BandwidthCommand::Set(a) => {
            let stored = runtime()?.block_on(async {
                let mut client = BandwidthServiceClient::new(channel(&a.url).await?);
                let config = client.get_config(GetBandwidthConfigRequest {}).await.map_err(refused)?.into_inner();
                let config = change(config, &a)?;
                Ok::<_, anyhow::Error>(client.set_config(config).await.map_err(refused)?.into_inner())
            })?;
            match a.output {
                Output::Json => print_json(&json!({"event": "result", "operation": "bandwidth-set", "result": config_json(&stored)})),
                Output::Text => print_config(&stored),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A rate for JSON: `null` for infinity (no cap, backlogged, unlimited).
fn finite(rate: f64) -> Option<f64> {
    rate.is_finite().then_some(rate)
}

fn rate(r: f64, infinite: &str) -> String {
    if r.is_finite() { format!("{}/s", format_bytes(r as u64)) } else { infinite.to_string() }
}

fn print_tree(tree: &BandwidthTree) {
    if tree.nodes.is_empty() {
        println!("no transfers running");
        return;
    }
    println!("{:<44} {:>14} {:>6} {:>14} {:>14} {:>14}", "NODE", "CAP", "WEIGHT", "DEMAND", "ALLOCATED", "ACHIEVED");
    for n in &tree.nodes {
        let name = format!("{}{} {}", "  ".repeat(n.depth as usize), n.level, n.name);
        println!(
            "{name:<44} {:>14} {:>6} {:>14} {:>14} {:>14}",
            rate(n.cap_bps, "-"),
            n.weight,
            rate(n.demand_bps, "backlogged"),
            rate(n.allocated_bps, "unlimited"),
            rate(n.achieved_bps, "-")
        );
    }
}

/// Parses `RATE[:BURST]` (bytes per second and bytes, e.g. `5M:8M`).
pub fn parse_bwlimit(text: &str) -> Result<(u64, u64)> {
    let (rate, burst) = text.split_once(':').unwrap_or((text, ""));
    let rate = parse_size(rate).map_err(|e| anyhow!("--bwlimit {text:?}: {e}"))?;
    let burst = if burst.is_empty() { 0 } else { parse_size(burst).map_err(|e| anyhow!("--bwlimit {text:?}: {e}"))? };
    if rate == 0 {
        return Err(anyhow!("--bwlimit {text:?}: the rate is zero"));
    }
    Ok((rate, burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> SetArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: SetArgs,
        }
        T::parse_from(std::iter::once("t").chain(extra.iter().copied())).a
    }

    #[test]
    fn set_changes_only_what_it_names() {
        let base = BandwidthConfig {
            global: "10M".into(),
            regions: [("a".into(), "1M".into()), ("b".into(), "2M".into())].into(),
            ..Default::default()
        };
        let c = change(
            base.clone(),
            &args(&["--region", "b=off", "--region", "c=08:00,5M 18:00,off", "--class", "gold=9", "--adaptive", "on"]),
        )
        .unwrap();
        assert_eq!(c.global, "10M");
        assert_eq!(c.regions.len(), 2);
        assert_eq!(c.regions["c"], "08:00,5M 18:00,off");
        assert_eq!(c.classes["gold"], 9);
        assert!(c.adaptive);
        let err = change(base.clone(), &args(&["--global", "60X"])).unwrap_err().to_string();
        assert!(err.contains("--global"), "{err}");
        assert!(change(base, &args(&["--region", "noequals"])).is_err());
        assert_eq!(parse_bwlimit("5M:8M").unwrap(), (5 << 20, 8 << 20));
        assert!(parse_bwlimit("0").is_err());
    }
}
