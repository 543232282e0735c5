//! Adaptive mode: additive increase, multiplicative decrease of a factor on the agent's rate,
//! driven by what QUIC reports about the paths of its replication connections.
//!
//! A sample is congested when the path's smoothed round trip is above 1.5 × the lowest seen on
//! that connection plus 10 ms, or when it lost packets since the previous sample. A congested
//! sample multiplies the factor by 0.7 (down to 0.05); a clear one adds 0.02 (up to 1). Sampled
//! every 500 ms, a halving takes two congested samples and the way back from 0.5 to 1 takes
//! about 13 s.

use std::time::Duration;

/// How often connections are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// A round trip this many times the lowest seen (plus [`RTT_SLACK`]) is congestion.
pub const RTT_RISE: f64 = 1.5;
/// Slack over the RTT threshold, so that jitter on a fast link is not taken for congestion.
pub const RTT_SLACK: Duration = Duration::from_millis(10);
/// The factor's multiplier on congestion.
pub const DECREASE: f64 = 0.7;
/// What a clear sample adds to the factor.
pub const INCREASE: f64 = 0.02;
/// The lowest factor.
pub const FLOOR: f64 = 0.05;

/// The state of one connection's path, and the factor it asks for.
#[derive(Debug, Clone)]
pub struct Aimd {
    lowest_rtt: Option<Duration>,
    lost: u64,
    factor: f64,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd { lowest_rtt: None, lost: 0, factor: 1.0 }
    }
}

impl Aimd {
    /// Takes a sample of the path (its smoothed RTT, and packets lost since the connection
    /// opened); returns the new factor.
    pub fn observe(&mut self, rtt: Duration, lost_packets: u64) -> f64 {
        let lowest = *self.lowest_rtt.get_or_insert(rtt);
        self.lowest_rtt = Some(lowest.min(rtt));
        let threshold = lowest.mul_f64(RTT_RISE) + RTT_SLACK;
        let congested = rtt > threshold || lost_packets > self.lost;
        self.lost = self.lost.max(lost_packets);
        self.factor = if congested { (self.factor * DECREASE).max(FLOOR) } else { (self.factor + INCREASE).min(1.0) };
        self.factor
    }

    /// The factor now.
    pub fn factor(&self) -> f64 {
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_rising_round_trip_or_loss_cuts_the_rate_and_it_recovers_slowly() {
        let mut a = Aimd::default();
        assert_eq!(a.observe(MS * 20, 0), 1.0);
        assert_eq!(a.observe(MS * 35, 0), 1.0, "within 1.5 x 20 ms + 10 ms");
        assert!((a.observe(MS * 60, 0) - 0.7).abs() < 1e-9);
        assert!((a.observe(MS * 20, 3) - 0.49).abs() < 1e-9, "loss");
        assert!((a.observe(MS * 20, 3) - 0.51).abs() < 1e-9, "the same loss count is not new loss");
        for _ in 0..100 {
            a.observe(MS * 20, 3);
        }
        assert_eq!(a.factor(), 1.0);
        for _ in 0..100 {
            a.observe(MS * 500, 3);
        }
        assert_eq!(a.factor(), FLOOR);
    }
}
