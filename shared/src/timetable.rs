//! Bandwidth caps that follow a weekly timetable, in rclone's `--bwlimit` form.
//!
//! A timetable is either one rate (`50M`, or `off` for no limit), or switch points separated by
//! spaces: `[DAYS-]HH:MM,RATE`, where `DAYS` is a day (`Mon`) or a range of days (`Mon-Fri`,
//! which may wrap: `Sat-Mon`), and an entry without days applies every day. Example:
//! `Mon-Fri-08:00,50M 18:00,off`. At any moment the rate is the one of the latest switch point
//! at or before it, going back across the week (so before Monday's first switch point, Sunday's
//! last one holds). Where two entries switch at the same minute, the later one in the text wins.
//! Rates are bytes per second with binary units like rclone's (`50M` = 50 MiB/s). Times are UTC.

use std::fmt;

use crate::units::parse_size;

/// Entries a timetable may have at most.
pub const MAX_ENTRIES: usize = 64;
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MINUTES_PER_DAY: u32 = 24 * 60;

/// A rate: bytes per second, or `None` for no limit (`off`).
pub type Limit = Option<u64>;

/// One switch point: from `minute` of the days in `days` on, the rate is `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// First and last day (0 = Monday), inclusive and possibly wrapping; `None`: every day.
    pub days: Option<(u8, u8)>,
    /// Minute of the day, 0-1439.
    pub minute: u16,
    /// The rate from then on.
    pub limit: Limit,
}

/// A cap: one rate at all times, or a weekly timetable of switch points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timetable {
    /// The same rate at all times.
    Constant(Limit),
    /// Switch points in the order written.
    Weekly(Vec<Entry>),
}

impl Timetable {
    /// Parses `text` (see the module's documentation); the error names the entry at fault.
    pub fn parse(text: &str) -> Result<Timetable, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            [] => Err("an empty bandwidth limit (use a rate such as 50M, or off)".into()),
            [one] if !one.contains([',', ':']) => Ok(Timetable::Constant(parse_limit(one)?)),
            _ if words.len() > MAX_ENTRIES => Err(format!("{} timetable entries; at most {MAX_ENTRIES}", words.len())),
            _ => words.iter().map(|w| parse_entry(w)).collect::<Result<Vec<_>, _>>().map(Timetable::Weekly),
        }
    }

    /// The rate at `unix_ms` (milliseconds since the Unix epoch, UTC).
    pub fn limit_at(&self, unix_ms: i64) -> Limit {
        let entries = match self {
            Timetable::Constant(limit) => return *limit,
            Timetable::Weekly(entries) => entries,
        };
        let minutes = unix_ms.div_euclid(60_000);
        // 1970-01-01 was a Thursday (day 3 when Monday is 0).
        let now = ((minutes + 3 * MINUTES_PER_DAY as i64).rem_euclid(7 * MINUTES_PER_DAY as i64)) as u32;
        // The latest switch point at or before `now`, counting back across the week; ties go to
        // the entry written last.
        let mut best: Option<(u32, Limit)> = None;
        for entry in entries {
            for day in 0..7u8 {
                if !entry.applies_on(day) {
                    continue;
                }
                let at = day as u32 * MINUTES_PER_DAY + entry.minute as u32;
                let back = (now + 7 * MINUTES_PER_DAY - at) % (7 * MINUTES_PER_DAY);
                if best.is_none_or(|(b, _)| back <= b) {
                    best = Some((back, entry.limit));
                }
            }
        }
        best.and_then(|(_, limit)| limit)
    }
}

impl Entry {
    /// Whether the entry switches on `day` (0 = Monday).
    fn applies_on(&self, day: u8) -> bool {
        match self.days {
            None => true,
            Some((first, last)) if first <= last => (first..=last).contains(&day),
            Some((first, last)) => day >= first || day <= last,
        }
    }
}

fn parse_limit(text: &str) -> Result<Limit, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    match parse_size(text) {
        Ok(0) => Err(format!("rate {text:?} is zero (use off for no limit)")),
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) => Err(format!("rate {text:?}: {e}")),
    }
}

fn parse_day(text: &str) -> Option<u8> {
    DAYS.iter().position(|d| d.eq_ignore_ascii_case(text)).map(|i| i as u8)
}

fn parse_entry(word: &str) -> Result<Entry, String> {
    let bad = |why: &str| format!("timetable entry {word:?}: {why} (expected [Day[-Day]-]HH:MM,RATE)");
    let (when, rate) = word.split_once(',').ok_or_else(|| bad("no comma"))?;
    let parts: Vec<&str> = when.split('-').collect();
    let (days, time) = match parts.as_slice() {
        [time] => (None, *time),
        [day, time] => {
            let d = parse_day(day).ok_or_else(|| bad(&format!("{day:?} is not a day (Mon..Sun)")))?;
            (Some((d, d)), *time)
        }
        [first, last, time] => {
            let f = parse_day(first).ok_or_else(|| bad(&format!("{first:?} is not a day (Mon..Sun)")))?;
            let l = parse_day(last).ok_or_else(|| bad(&format!("{last:?} is not a day (Mon..Sun)")))?;
            (Some((f, l)), *time)
        }
        _ => return Err(bad("too many dashes")),
    };
    let (h, m) = time.split_once(':').ok_or_else(|| bad("the time is not HH:MM"))?;
    let valid = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !valid(h) || !valid(m) {
        return Err(bad("the time is not HH:MM"));
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad("bad hour"))?, m.parse().map_err(|_| bad("bad minute"))?);
    if h > 23 || m > 59 {
        return Err(bad("the time is not between 00:00 and 23:59"));
    }
    let limit = parse_limit(rate).map_err(|e| bad(&e))?;
    Ok(Entry { days, minute: h * 60 + m, limit })
}

/// Formats a rate the way it parses back: `off`, or bytes with the largest exact binary unit.
pub fn format_limit(limit: Limit) -> String {
    match limit {
        None => "off".into(),
        Some(b) if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        Some(b) if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        Some(b) if b % (1 << 10) == 0 => format!("{}K", b >> 10),
        Some(b) => b.to_string(),
    }
}

impl fmt::Display for Timetable {
    /// The canonical text, which parses back to the same timetable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = match self {
            Timetable::Constant(limit) => return f.write_str(&format_limit(*limit)),
            Timetable::Weekly(entries) => entries,
        };
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match e.days {
                None => {}
                Some((a, b)) if a == b => write!(f, "{}-", DAYS[a as usize])?,
                Some((a, b)) => write!(f, "{}-{}-", DAYS[a as usize], DAYS[b as usize])?,
            }
            write!(f, "{:02}:{:02},{}", e.minute / 60, e.minute % 60, format_limit(e.limit))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Milliseconds of `day` (0 = Monday) `hh:mm` in the week of Monday 2026-11-23 (UTC).
    fn at(day: i64, hh: i64, mm: i64) -> i64 {
        const MONDAY: i64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z
        MONDAY + ((day * 24 + hh) * 60 + mm) * 60_000
    }

    #[test]
    fn the_week_starts_on_the_right_monday() {
        assert_eq!(
            humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(at(0, 0, 0) as u64)).to_string(),
            "2026-11-23T00:00:00Z"
        );
    }

    #[test]
    fn a_single_rate_holds_at_all_times() {
        let t = Timetable::parse("50M").unwrap();
        assert_eq!(t.limit_at(at(2, 3, 4)), Some(50 << 20));
        assert_eq!(Timetable::parse("off").unwrap().limit_at(0), None);
    }

    #[test]
    fn weekday_and_every_day_entries_combine() {
        let t = Timetable::parse("Mon-Fri-08:00,50M 18:00,off").unwrap();
        assert_eq!(t.limit_at(at(0, 7, 59)), None, "Monday before 08:00: Sunday's 18:00 off");
        assert_eq!(t.limit_at(at(0, 8, 0)), Some(50 << 20));
        assert_eq!(t.limit_at(at(4, 17, 59)), Some(50 << 20));
        assert_eq!(t.limit_at(at(4, 18, 0)), None);
        assert_eq!(t.limit_at(at(5, 12, 0)), None, "Saturday has no 08:00 switch");
    }

    #[test]
    fn rclone_examples_parse() {
        let t = Timetable::parse("08:00,512k 12:00,10M 13:00,512k 18:00,30M 23:00,off").unwrap();
        assert_eq!(t.limit_at(at(3, 12, 30)), Some(10 << 20));
        assert_eq!(t.limit_at(at(3, 2, 0)), None);
        let t = Timetable::parse("Mon-00:00,512 Fri-23:59,10M Sat-10:00,1M Sun-20:00,off").unwrap();
        assert_eq!(t.limit_at(at(2, 12, 0)), Some(512));
        assert_eq!(t.limit_at(at(5, 9, 0)), Some(10 << 20));
        assert_eq!(t.limit_at(at(6, 21, 0)), None);
    }

    #[test]
    fn a_wrapping_range_and_ties() {
        let t = Timetable::parse("Sat-Mon-00:00,1M Mon-00:00,2M").unwrap();
        assert_eq!(t.limit_at(at(0, 1, 0)), Some(2 << 20), "the later entry wins a tie");
        assert_eq!(t.limit_at(at(6, 1, 0)), Some(1 << 20));
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, needle) in [
            ("", "empty"),
            ("0", "zero"),
            ("fast", "rate"),
            ("08:00", "no comma"),
            ("25:00,1M", "between 00:00"),
            ("Xyz-08:00,1M", "not a day"),
            ("Mon-Tue-Wed-08:00,1M", "too many dashes"),
            ("8:00,1M", "HH:MM"),
            ("08:00,1M 50M", "\"50M\""),
        ] {
            let err = Timetable::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let days = prop_oneof![Just(None), (0u8..7, 0u8..7).prop_map(Some)];
        let limit = prop_oneof![Just(None), (1u64..1 << 40).prop_map(Some)];
        (days, 0u16..1440, limit).prop_map(|(days, minute, limit)| Entry { days, minute, limit })
    }

    proptest! {
        #[test]
        fn display_parses_back(entries in proptest::collection::vec(entry(), 1..8)) {
            let t = Timetable::Weekly(entries);
            prop_assert_eq!(Timetable::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn a_switch_point_takes_effect_at_its_minute(other in entry(), e in entry(), day in 0i64..7) {
            let t = Timetable::Weekly(vec![other, e.clone()]);
            if e.applies_on(day as u8) {
                let when = at(day, e.minute as i64 / 60, e.minute as i64 % 60);
                prop_assert_eq!(t.limit_at(when), e.limit);
                prop_assert_eq!(t.limit_at(when + 59_999), e.limit);
            }
        }

        #[test]
        fn the_rate_is_always_one_of_the_entries(entries in proptest::collection::vec(entry(), 1..8), ms in 0i64..1 << 45) {
            let t = Timetable::Weekly(entries.clone());
            prop_assert!(entries.iter().any(|e| e.limit == t.limit_at(ms)));
        }
    }
}
