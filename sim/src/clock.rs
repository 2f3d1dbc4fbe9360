//! Per-node clocks: `local = sim * (1 + drift_ppm / 1e6) + offset`.
//!
//! A node only ever sees its local time; the deadlines it asks for
//! (`Output::Timeout(at)`) are local too and are translated back to the
//! earliest simulated time at which the local clock reaches them. Local time
//! never runs backwards, across restarts of the node included (the machine's
//! clock outlives the process), except when the clock is stepped backwards
//! ([`Clock::step`], an NTP-style correction): then the node sees its local
//! time go back.

use cairn_core::Time;

const MICRO: i128 = 1_000_000;

#[derive(Clone, Debug)]
pub struct Clock {
    drift_ppm: i64,
    offset_us: i64,
    last: Time,
    /// The last deadline translated by [`Clock::to_sim`] and its answer:
    /// nodes re-ask for the same deadline after most events.
    translated: std::cell::Cell<Option<(Time, Time)>>,
}

impl Clock {
    pub fn new(drift_ppm: i64, offset_us: u64) -> Clock {
        assert!(
            drift_ppm.abs() < 100_000,
            "drift of {drift_ppm} ppm is not a clock"
        );
        Clock {
            drift_ppm,
            offset_us: offset_us as i64,
            last: Time::ZERO,
            translated: std::cell::Cell::new(None),
        }
    }

    fn raw(&self, sim: Time) -> i128 {
        // 64-bit arithmetic whenever it cannot overflow (always, for runs
        // shorter than ~1000 simulated days): this runs on every event.
        if let Ok(s) = i64::try_from(sim.as_micros()) {
            if let Some(d) = s.checked_mul(self.drift_ppm) {
                return (self.offset_us + s + d / MICRO as i64) as i128;
            }
        }
        let s = sim.as_micros() as i128;
        self.offset_us as i128 + s + s * self.drift_ppm as i128 / MICRO
    }

    /// Steps the clock by `by_us` (either way) at simulated time `now`.
    pub fn step(&mut self, by_us: i64, now: Time) {
        self.offset_us += by_us;
        self.translated.set(None);
        self.last = Time(self.raw(now).max(0) as u64);
    }

    /// The node's local time at simulated time `sim`.
    pub fn local(&mut self, sim: Time) -> Time {
        let t = Time(self.raw(sim).max(0) as u64).max(self.last);
        self.last = t;
        t
    }

    /// The earliest simulated time, not before `now`, at which local time
    /// reaches `local`. `None` for a deadline that never comes.
    pub fn to_sim(&self, local: Time, now: Time) -> Option<Time> {
        if local == Time::MAX {
            return None;
        }
        // The earliest time reaching `local` was still in the future when
        // last asked: it is the answer again (the clock has not stepped).
        if let Some((l, at)) = self.translated.get() {
            if l == local && at > now {
                return Some(at);
            }
        }
        let at = self.translate(local, now);
        if let Some(at) = at {
            self.translated.set(Some((local, at)));
        }
        at
    }

    fn translate(&self, local: Time, now: Time) -> Option<Time> {
        let target = local.as_micros() as i128;
        if self.raw(now) >= target {
            return Some(now);
        }
        if self.drift_ppm == 0 {
            return u64::try_from(target - self.offset_us as i128)
                .ok()
                .map(Time);
        }
        let mut t = ((target - self.offset_us as i128) * MICRO / (MICRO + self.drift_ppm as i128))
            .max(now.as_micros() as i128);
        // The estimate is within a few microseconds; settle it exactly.
        while self.raw(Time(t as u64)) < target {
            t += 1;
        }
        while t > now.as_micros() as i128 && self.raw(Time((t - 1) as u64)) >= target {
            t -= 1;
        }
        u64::try_from(t).ok().map(Time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_and_offset_apply() {
        let mut fast = Clock::new(100, 5_000);
        assert_eq!(fast.local(Time(0)), Time(5_000));
        assert_eq!(fast.local(Time(1_000_000)), Time(1_005_100));
        let mut slow = Clock::new(-100, 0);
        assert_eq!(slow.local(Time(1_000_000)), Time(999_900));
    }

    #[test]
    fn repeated_deadlines_answer_like_a_fresh_translation() {
        // The cache of the last translation must never change an answer:
        // not as time advances towards and past the deadline, nor after a step.
        for drift in [-150i64, 0, 200] {
            let mut c = Clock::new(drift, 5_000);
            let deadline = Time(2_000_000);
            let mut now = Time(0);
            while now < Time(3_000_000) {
                assert_eq!(
                    c.to_sim(deadline, now),
                    c.translate(deadline, now),
                    "at {now}"
                );
                if now == Time(1_000_000) {
                    c.step(-300_000, now);
                }
                now = Time(now.as_micros() + 97_531);
            }
        }
    }

    #[test]
    fn deadlines_translate_to_the_earliest_sim_time() {
        for drift in [-150i64, -1, 0, 7, 200] {
            let mut c = Clock::new(drift, 1234);
            for at in [0u64, 1, 999, 1_000_000, 77_777_777] {
                let now = Time(10);
                let t = c.to_sim(Time(at), now).unwrap();
                assert!(t >= now);
                assert!(c.local(t) >= Time(at), "drift {drift} at {at}");
                if t > now {
                    let mut c2 = Clock::new(drift, 1234);
                    assert!(c2.local(Time(t.as_micros() - 1)) < Time(at), "not earliest");
                }
            }
            assert_eq!(c.to_sim(Time::MAX, Time(0)), None);
        }
    }

    #[test]
    fn steps_move_local_time_both_ways() {
        let mut c = Clock::new(0, 1_000_000);
        assert_eq!(c.local(Time(0)), Time(1_000_000));
        c.step(-600_000, Time(100));
        assert_eq!(c.local(Time(100)), Time(400_100));
        c.step(2_000_000, Time(200));
        assert_eq!(c.local(Time(200)), Time(2_400_200));
        let t = c.to_sim(Time(2_500_000), Time(200)).unwrap();
        assert_eq!(t, Time(100_000));
        // A step far back never yields a negative time.
        c.step(-10_000_000, Time(300));
        assert_eq!(c.local(Time(300)), Time(0));
    }

    #[test]
    fn local_time_never_runs_backwards() {
        let mut c = Clock::new(-50, 0);
        let a = c.local(Time(1_000_000));
        let b = c.local(Time(999_999));
        assert!(b >= a);
    }
}
