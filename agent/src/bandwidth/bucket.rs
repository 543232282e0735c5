//! A token bucket that lets a taker go into debt: a chunk larger than the bucket is taken at
//! once and the taker waits until the debt is paid, so large reads keep the average rate exact.
//! Each taker waits for its own place in the queue of debts (a ticket), and a new rate applies
//! to the debts already queued.

use std::time::{Duration, Instant};

/// Bytes per second; `f64::INFINITY`: no limit.
pub type Rate = f64;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    burst: f64,
    tokens: f64,
    /// Tokens ever added: tickets are positions on this scale.
    refilled: f64,
    last: Instant,
}

/// When a taker may go: once the bucket's refills reach this mark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ticket(f64);

impl TokenBucket {
    /// A full bucket of `rate` holding up to `burst` bytes.
    pub fn new(rate: Rate, burst: f64, now: Instant) -> Self {
        TokenBucket { rate, burst, tokens: burst, refilled: 0.0, last: now }
    }

    /// Its rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if self.rate.is_infinite() {
            self.tokens = self.burst;
            return;
        }
        let added = (self.rate * elapsed).min((self.burst - self.tokens).max(0.0));
        self.tokens += added;
        self.refilled += added;
    }

    /// Changes the rate and burst from `now` on (debts already queued are paid at the new rate).
    pub fn set(&mut self, rate: Rate, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst;
        self.tokens = self.tokens.min(burst);
    }

    /// Takes `bytes`; a ticket to wait for when that runs into debt.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Option<Ticket> {
        if self.rate.is_infinite() {
            return None;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
        (self.tokens < 0.0).then_some(Ticket(self.refilled - self.tokens))
    }

    /// How long the holder of `ticket` still has to wait (`None`: it may go).
    pub fn wait(&mut self, ticket: Ticket, now: Instant) -> Option<Duration> {
        self.refill(now);
        let missing = ticket.0 - self.refilled;
        if missing <= 0.0 || self.rate.is_infinite() {
            return None;
        }
        Some(Duration::from_secs_f64((missing / self.rate).min(3600.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_burst_nobody_waits_and_debt_is_paid_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 500.0, t0);
        assert_eq!(b.take(500, t0), None);
        let ticket = b.take(1000, t0).expect("in debt");
        assert_eq!(b.wait(ticket, t0), Some(Duration::from_secs(1)));
        assert_eq!(b.wait(ticket, t0 + Duration::from_millis(400)), Some(Duration::from_millis(600)));
        assert_eq!(b.wait(ticket, t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn takers_wait_in_turn() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 0.0, t0);
        let first = b.take(100, t0).unwrap();
        let second = b.take(100, t0).unwrap();
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.wait(first, t1), None);
        assert_eq!(b.wait(second, t1), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_new_rate_applies_to_queued_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 0.0, t0);
        let ticket = b.take(1000, t0).unwrap();
        let t1 = t0 + Duration::from_secs(1);
        b.set(900.0, 0.0, t1);
        assert_eq!(b.wait(ticket, t1), Some(Duration::from_secs(1)), "100 paid, 900 left at 900/s");
        b.set(f64::INFINITY, 0.0, t1);
        assert_eq!(b.wait(ticket, t1), None);
    }

    #[test]
    fn an_idle_bucket_fills_only_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 50.0, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(50, later), None);
        assert!(b.take(1, later).is_some());
    }
}
