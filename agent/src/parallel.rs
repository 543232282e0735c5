//! An ordered parallel pipeline with bounded memory: one producer, N workers, results consumed
//! in production order.
//!
//! At most `window` items are between the producer and the consumer at any time (the producer
//! takes a slot before producing, the consumer returns it after consuming), so memory is bounded
//! by `window` items whatever the input size. The first error from any stage stops the pipeline
//! and is returned; the other threads wind down without doing further work. A panic in any
//! stage also winds the others down, then propagates (it never leaves a thread waiting forever).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Sender, bounded, unbounded};

enum Msg<O, E> {
    Done(u64, O),
    Failed(E),
}

/// Held by every stage: if the stage unwinds, it stops the pipeline and wakes the producer.
struct PanicGuard<'a> {
    abort: &'a AtomicBool,
    slot: Sender<()>,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.abort.store(true, Ordering::SeqCst);
            let _ = self.slot.try_send(());
        }
    }
}

/// Runs `produce` on its own thread, `work` on `threads` worker threads and `consume` on the
/// calling thread, in production order. `produce` returns `Ok(None)` when it is done.
pub fn ordered_pipeline<I, O, E, P, W, C>(threads: usize, window: usize, produce: P, work: W, mut consume: C) -> Result<(), E>
where
    I: Send,
    O: Send,
    E: Send,
    P: FnMut() -> Result<Option<I>, E> + Send,
    W: Fn(I) -> Result<O, E> + Sync,
    C: FnMut(O) -> Result<(), E>,
{
    let threads = threads.max(1);
    let window = window.max(threads);
    let (slot_tx, slot_rx) = bounded::<()>(window);
    for _ in 0..window {
        slot_tx.send(()).expect("the slot channel has room for the window");
    }
    let (job_tx, job_rx) = bounded::<(u64, I)>(window);
    let (res_tx, res_rx) = unbounded::<Msg<O, E>>();
    let abort = AtomicBool::new(false);
    let mut produce = produce;
    std::thread::scope(|s| {
        let producer_res = res_tx.clone();
        let abort_ref = &abort;
        let produce = &mut produce;
        let guard_slot = slot_tx.clone();
        s.spawn(move || {
            let _guard = PanicGuard { abort: abort_ref, slot: guard_slot };
            let mut seq = 0u64;
            while slot_rx.recv().is_ok() && !abort_ref.load(Ordering::Relaxed) {
                match produce() {
                    Ok(Some(item)) => {
                        if job_tx.send((seq, item)).is_err() {
                            break;
                        }
                        seq += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = producer_res.send(Msg::Failed(e));
                        break;
                    }
                }
            }
        });
        for _ in 0..threads {
            let (job_rx, res_tx, work, abort) = (job_rx.clone(), res_tx.clone(), &work, &abort);
            let guard_slot = slot_tx.clone();
            s.spawn(move || {
                let _guard = PanicGuard { abort, slot: guard_slot };
                for (seq, item) in job_rx.iter() {
                    if abort.load(Ordering::Relaxed) {
                        continue;
                    }
                    let msg = match work(item) {
                        Ok(out) => Msg::Done(seq, out),
                        Err(e) => Msg::Failed(e),
                    };
                    let _ = res_tx.send(msg);
                }
            });
        }
        drop((res_tx, job_rx));
        let _guard = PanicGuard { abort: &abort, slot: slot_tx.clone() };
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut first_error = None;
        for msg in res_rx.iter() {
            if first_error.is_some() {
                continue;
            }
            match msg {
                Msg::Done(seq, out) => {
                    pending.insert(seq, out);
                    while let Some(out) = pending.remove(&next) {
                        next += 1;
                        if let Err(e) = consume(out) {
                            first_error = Some(e);
                            break;
                        }
                        let _ = slot_tx.send(());
                    }
                }
                Msg::Failed(e) => first_error = Some(e),
            }
            if first_error.is_some() {
                abort.store(true, Ordering::Relaxed);
                // Unblocks a producer waiting for a slot.
                let _ = slot_tx.try_send(());
            }
        }
        drop(slot_tx);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn preserves_order_and_bounds_in_flight_items() {
        let in_flight = AtomicUsize::new(0);
        let max_seen = AtomicUsize::new(0);
        let mut n = 0u32;
        let mut out = Vec::new();
        ordered_pipeline(
            4,
            6,
            || {
                n += 1;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                Ok::<_, String>((n <= 500).then_some(n))
            },
            |x| {
                if x % 7 == 0 {
                    std::thread::yield_now();
                }
                Ok(x * 2)
            },
            |x| {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                out.push(x);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(out, (1..=500).map(|x| x * 2).collect::<Vec<_>>());
        assert!(max_seen.load(Ordering::SeqCst) <= 7, "window exceeded: {}", max_seen.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_stage_propagates_instead_of_hanging() {
        for stage in 0..3 {
            let result = std::panic::catch_unwind(|| {
                let mut n = 0u64;
                let _ = ordered_pipeline(
                    2,
                    4,
                    || {
                        n += 1;
                        assert!(!(stage == 0 && n == 20), "producer fails");
                        Ok::<_, String>(Some(n))
                    },
                    |x| {
                        assert!(!(stage == 1 && x == 20), "worker fails");
                        Ok(x)
                    },
                    |x| {
                        assert!(!(stage == 2 && x == 20), "consumer fails");
                        Ok(())
                    },
                );
            });
            assert!(result.is_err(), "stage {stage}: the panic was swallowed");
        }
    }

    #[test]
    fn stops_on_the_first_error_of_any_stage() {
        let mut n = 0u64;
        let r = ordered_pipeline(
            2,
            4,
            || {
                n += 1;
                Ok(Some(n))
            },
            |x| if x == 50 { Err(format!("bad {x}")) } else { Ok(x) },
            |_| Ok(()),
        );
        assert_eq!(r.unwrap_err(), "bad 50");
        let mut m = 0u64;
        let r = ordered_pipeline(
            2,
            4,
            || {
                m += 1;
                if m == 30 { Err("read failed".to_string()) } else { Ok(Some(m)) }
            },
            Ok,
            |_| Ok(()),
        );
        assert_eq!(r.unwrap_err(), "read failed");
        let mut k = 0u64;
        let r = ordered_pipeline(
            2,
            4,
            || {
                k += 1;
                Ok(Some(k))
            },
            Ok,
            |x| if x == 10 { Err("sink".to_string()) } else { Ok(()) },
        );
        assert_eq!(r.unwrap_err(), "sink");
    }
}
