//! The in-memory schedule of queued jobs: per guest, in queue order; guests with work and no
//! running job wait in a ready list, so taking the next job is O(1). The database stays the
//! truth: the schedule is filled from it (at start and by polling, which also brings jobs
//! another version of the plugin queued), and a job only runs once the database marked it
//! Running (see [`crate::store::Store::start`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Queued job sequence numbers per guest, oldest first.
    queued: HashMap<String, VecDeque<i64>>,
    /// Guests with queued jobs and nothing running, in the order they became ready.
    ready: VecDeque<String>,
    /// Guests whose job runs (here) or whose next job waits for another version's.
    busy: HashSet<String>,
    /// Guests whose next job found another version's job running: ready again at the next
    /// poll.
    blocked: Vec<String>,
    /// Jobs queued or running here.
    known: HashSet<i64>,
    /// The highest sequence number a poll returned.
    polled: i64,
}

/// The schedule.
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

impl Queue {
    /// The highest sequence number a poll returned (the next poll asks for newer ones).
    pub fn polled(&self) -> i64 {
        self.state.lock().unwrap().polled
    }

    /// Adds what a poll found (queued jobs newer than [`Queue::polled`], in order).
    pub fn add_polled(&self, jobs: Vec<(i64, String)>) {
        if let Some(&(last, _)) = jobs.last() {
            let mut state = self.state.lock().unwrap();
            state.polled = state.polled.max(last);
        }
        self.add(jobs);
    }

    /// Adds queued jobs (`(seq, guest)`); ones queued or running here are ignored.
    pub fn add(&self, jobs: impl IntoIterator<Item = (i64, String)>) {
        let mut state = self.state.lock().unwrap();
        let mut added = 0;
        for (seq, guest) in jobs {
            if !state.known.insert(seq) {
                continue;
            }
            let queue = state.queued.entry(guest.clone()).or_default();
            // Jobs arrive from enqueues and polls; keep each guest's queue in sequence order.
            let at = queue.partition_point(|&s| s < seq);
            queue.insert(at, seq);
            if !state.busy.contains(&guest) && !state.ready.contains(&guest) {
                state.ready.push_back(guest);
            }
            added += 1;
        }
        drop(state);
        for _ in 0..added {
            self.ready.notify_one();
        }
    }

    /// Makes guests blocked by another version's job ready again (after a poll).
    pub fn unblock(&self) {
        let mut state = self.state.lock().unwrap();
        let blocked = std::mem::take(&mut state.blocked);
        let mut woke = 0;
        for guest in blocked {
            state.busy.remove(&guest);
            if state.queued.get(&guest).is_some_and(|q| !q.is_empty()) {
                state.ready.push_back(guest);
                woke += 1;
            }
        }
        drop(state);
        for _ in 0..woke {
            self.ready.notify_one();
        }
    }

    /// The next job to run: its guest becomes busy. `None` after `timeout` without work.
    pub fn next(&self, timeout: Duration) -> Option<(String, i64)> {
        let mut state = self.state.lock().unwrap();
        loop {
            while let Some(guest) = state.ready.pop_front() {
                let Some(seq) = state.queued.get_mut(&guest).and_then(VecDeque::pop_front) else {
                    continue;
                };
                state.busy.insert(guest.clone());
                return Some((guest, seq));
            }
            let (next, waited) = self.ready.wait_timeout(state, timeout).unwrap();
            state = next;
            if waited.timed_out() && state.ready.is_empty() {
                return None;
            }
        }
    }

    /// The guest's job `seq` ended (or vanished): its next job, if any, is ready.
    pub fn done(&self, guest: &str, seq: i64) {
        let mut state = self.state.lock().unwrap();
        state.known.remove(&seq);
        state.busy.remove(guest);
        let more = state.queued.get(guest).is_some_and(|q| !q.is_empty());
        if more {
            state.ready.push_back(guest.to_owned());
        } else {
            state.queued.remove(guest);
        }
        drop(state);
        if more {
            self.ready.notify_one();
        }
    }

    /// The guest's job `seq` could not start (another version runs one of the guest's jobs):
    /// it goes back to the front, and the guest waits for the next poll.
    pub fn blocked(&self, guest: &str, seq: i64) {
        let mut state = self.state.lock().unwrap();
        state
            .queued
            .entry(guest.to_owned())
            .or_default()
            .push_front(seq);
        state.blocked.push(guest.to_owned());
    }

    /// Wakes every waiting worker (to see a stop).
    pub fn wake_all(&self) {
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_per_guest_at_a_time_in_order() {
        let queue = Queue::default();
        queue.add([(1, "a".into()), (2, "a".into()), (3, "b".into())]);
        let short = Duration::from_millis(1);
        assert_eq!(queue.next(short), Some(("a".into(), 1)));
        assert_eq!(queue.next(short), Some(("b".into(), 3)));
        assert_eq!(queue.next(short), None, "a is busy");
        queue.done("a", 1);
        assert_eq!(queue.next(short), Some(("a".into(), 2)));
        queue.add_polled(vec![(2, "a".into())]);
        assert_eq!(queue.next(short), None, "a running job is not added twice");
        queue.done("a", 2);
        queue.blocked("b", 3);
        assert_eq!(queue.next(short), None);
        queue.unblock();
        assert_eq!(queue.next(short), Some(("b".into(), 3)));
        assert_eq!(queue.polled(), 2);
    }
}
