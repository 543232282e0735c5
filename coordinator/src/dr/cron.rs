//! Cron schedules for replication policies: the classic five fields (minute, hour, day of month,
//! month, day of week; UTC), each `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a
//! comma-separated list of those. As in cron, when both day fields are restricted a day matching
//! either one is a match. Day of week 0 and 7 are Sunday. No names (`mon`, `jan`), no `@daily`.

use hyperexport_shared::dates::civil_from_days;

use crate::error::{CoordinatorError, Result};

/// A parsed schedule: for each field, which values match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    days_restricted: bool,
    weekdays_restricted: bool,
}

fn field(spec: &str, name: &str, min: u32, max: u32) -> Result<Vec<bool>> {
    let bad = |why: &str| CoordinatorError::Invalid(format!("cron {name} field {spec:?}: {why}"));
    let mut set = vec![false; max as usize + 1];
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0).ok_or_else(|| bad("the step is not a positive number"))?),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().map_err(|_| bad("not a number"))?, b.parse().map_err(|_| bad("not a number"))?)
        } else {
            let v: u32 = range.parse().map_err(|_| bad("not a number"))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(bad(&format!("values must be {min}-{max}")));
        }
        for v in (lo..=hi).step_by(step as usize) {
            set[v as usize] = true;
        }
    }
    Ok(set)
}

impl Cron {
    /// Parses a five-field expression.
    pub fn parse(spec: &str) -> Result<Cron> {
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CoordinatorError::Invalid(format!("cron {spec:?}: five fields are needed (minute hour day month weekday)")));
        };
        let mut weekdays = field(weekday, "day-of-week", 0, 7)?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        Ok(Cron {
            minutes: field(minute, "minute", 0, 59)?,
            hours: field(hour, "hour", 0, 23)?,
            days: field(day, "day-of-month", 1, 31)?,
            months: field(month, "month", 1, 12)?,
            weekdays,
            days_restricted: day != "*",
            weekdays_restricted: weekday != "*",
        })
    }

    /// Whether the minute starting at `minute` (minutes since the Unix epoch, UTC) matches.
    pub fn matches(&self, minute: i64) -> bool {
        let days = minute.div_euclid(1440);
        let in_day = minute.rem_euclid(1440);
        let (m, h) = ((in_day % 60) as usize, (in_day / 60) as usize);
        let (_, month, day) = civil_from_days(days);
        let (month, day) = (month as usize, day as usize);
        let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday; Sunday 0.
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => self.days[day] || self.weekdays[weekday],
            _ => self.days[day] && self.weekdays[weekday],
        };
        self.minutes[m] && self.hours[h] && self.months[month] && day_ok
    }

    /// Whether a run is due: a matching minute after the one of `last_ms` and up to that of
    /// `now_ms` (looking back at most a year).
    pub fn due(&self, last_ms: i64, now_ms: i64) -> bool {
        let (last, now) = (last_ms.div_euclid(60_000), now_ms.div_euclid(60_000));
        ((last + 1).max(now - 366 * 1440)..=now).any(|m| self.matches(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minutes since the epoch of 2026-11-27 (a Friday) at `h:m` UTC.
    fn friday(h: i64, m: i64) -> i64 {
        20_784 * 1440 + h * 60 + m
    }

    #[test]
    fn fields_steps_ranges_and_both_day_fields() {
        let every_15 = Cron::parse("*/15 * * * *").unwrap();
        assert!(every_15.matches(friday(3, 30)) && !every_15.matches(friday(3, 31)));
        let weekday_nights = Cron::parse("0 2 * * 1-5").unwrap();
        assert!(weekday_nights.matches(friday(2, 0)));
        assert!(!weekday_nights.matches(friday(2, 0) + 1440), "Saturday");
        let sunday = Cron::parse("30 4 * * 7").unwrap();
        assert!(sunday.matches(friday(4, 30) + 2 * 1440));
        // Day 1 of the month, or any Friday.
        let either = Cron::parse("0 0 1 * 5").unwrap();
        assert!(either.matches(friday(0, 0)));
        let list = Cron::parse("5,10-12 * * * *").unwrap();
        assert!([5, 10, 11, 12].iter().all(|m| list.matches(friday(1, *m))) && !list.matches(friday(1, 13)));
        for bad in ["* * * *", "60 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *", "* * 0 * *"] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn due_once_a_matching_minute_has_passed() {
        let hourly = Cron::parse("0 * * * *").unwrap();
        let ms = |minute: i64| minute * 60_000;
        assert!(!hourly.due(ms(friday(3, 0)), ms(friday(3, 59))), "ran at 3:00, nothing since");
        assert!(hourly.due(ms(friday(3, 0)), ms(friday(4, 0)) + 5_000));
        assert!(hourly.due(ms(friday(1, 30)), ms(friday(3, 10))), "a missed run is made up once");
    }
}
