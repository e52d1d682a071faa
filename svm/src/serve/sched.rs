//! The scan scheduler: priority classes (exec > open > close_write > page), and inside each
//! class one FIFO per VM served round-robin, so a noisy VM cannot starve the others. Scanner
//! threads block on [`Scheduler::pop`]; the async side only ever calls [`Scheduler::push`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, PoisonError};

/// Priority classes, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prio {
    /// A guest waits to execute.
    Exec = 0,
    /// A guest waits to open.
    Open = 1,
    /// Nobody waits: a file was written.
    CloseWrite = 2,
    /// Memory sweep.
    Page = 3,
}

const CLASSES: usize = 4;

#[derive(Debug)]
struct Class<J> {
    /// VMs with queued work, in service order.
    ring: VecDeque<u32>,
    queues: HashMap<u32, VecDeque<J>>,
}

impl<J> Default for Class<J> {
    fn default() -> Self {
        Class {
            ring: VecDeque::new(),
            queues: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct State<J> {
    classes: [Class<J>; CLASSES],
    depth: usize,
    /// Jobs queued per VM, over all classes.
    per_vm: HashMap<u32, usize>,
    closed: bool,
}

/// Why [`Scheduler::push`] gave a job back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The scheduler is closed (shutdown).
    Closed,
    /// The VM has its cap of jobs queued already.
    Full,
}

/// A fair priority queue of jobs `J`, shared by producers and scanner threads.
#[derive(Debug)]
pub struct Scheduler<J> {
    state: Mutex<State<J>>,
    ready: Condvar,
}

impl<J> Default for Scheduler<J> {
    fn default() -> Self {
        Scheduler {
            state: Mutex::new(State {
                classes: Default::default(),
                depth: 0,
                per_vm: HashMap::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<J> Scheduler<J> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue a job of `vm` in class `prio`, unless `vm` has `cap` jobs queued already.
    /// Returns the queue depth after, or gives the job back with the reason.
    pub fn push(&self, prio: Prio, vm: u32, job: J, cap: usize) -> Result<usize, (J, Refused)> {
        let mut s = self.lock();
        if s.closed {
            return Err((job, Refused::Closed));
        }
        let queued = s.per_vm.entry(vm).or_default();
        if *queued >= cap {
            return Err((job, Refused::Full));
        }
        *queued += 1;
        let Some(class) = s.classes.get_mut(prio as usize) else {
            return Err((job, Refused::Closed));
        };
        let q = class.queues.entry(vm).or_default();
        if q.is_empty() {
            class.ring.push_back(vm);
        }
        q.push_back(job);
        s.depth += 1;
        let depth = s.depth;
        drop(s);
        self.ready.notify_one();
        Ok(depth)
    }

    /// The next job: the most urgent class, the next VM in turn. Blocks; `None` once closed.
    pub fn pop(&self) -> Option<(J, usize)> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some((vm, job)) = Self::take(&mut s) {
                s.depth -= 1;
                if let Some(n) = s.per_vm.get_mut(&vm) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        s.per_vm.remove(&vm);
                    }
                }
                return Some((job, s.depth));
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn take(s: &mut State<J>) -> Option<(u32, J)> {
        for class in s.classes.iter_mut() {
            while let Some(vm) = class.ring.pop_front() {
                let Some(q) = class.queues.get_mut(&vm) else {
                    continue;
                };
                let job = q.pop_front();
                if q.is_empty() {
                    class.queues.remove(&vm);
                } else {
                    class.ring.push_back(vm);
                }
                if let Some(job) = job {
                    return Some((vm, job));
                }
            }
        }
        None
    }

    /// Jobs waiting.
    pub fn depth(&self) -> usize {
        self.lock().depth
    }

    /// Stop: waiting and later `pop`s return `None`; queued jobs are dropped (their waiters
    /// see the flight end without a result).
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        for c in s.classes.iter_mut() {
            c.ring.clear();
            c.queues.clear();
        }
        s.depth = 0;
        s.per_vm.clear();
        drop(s);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_round_robin_per_vm() {
        let s = Scheduler::default();
        // VM 1 floods open; VM 2 and 3 queue one each; an exec arrives last.
        for i in 0..5 {
            s.push(Prio::Open, 1, format!("vm1-{i}"), usize::MAX)
                .unwrap();
        }
        s.push(Prio::Open, 2, "vm2-0".to_string(), usize::MAX)
            .unwrap();
        s.push(Prio::CloseWrite, 3, "vm3-cw".to_string(), usize::MAX)
            .unwrap();
        s.push(Prio::Open, 3, "vm3-0".to_string(), usize::MAX)
            .unwrap();
        s.push(Prio::Exec, 1, "vm1-exec".to_string(), usize::MAX)
            .unwrap();
        let order: Vec<String> = (0..9).map(|_| s.pop().unwrap().0).collect();
        assert_eq!(
            order,
            ["vm1-exec", "vm1-0", "vm2-0", "vm3-0", "vm1-1", "vm1-2", "vm1-3", "vm1-4", "vm3-cw"]
        );
        assert_eq!(s.depth(), 0);
    }

    #[test]
    fn close_wakes_workers_and_refuses_jobs() {
        let s = std::sync::Arc::new(Scheduler::<u32>::default());
        let w = {
            let s = s.clone();
            std::thread::spawn(move || s.pop())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.close();
        assert!(w.join().unwrap().is_none());
        assert!(s.push(Prio::Open, 1, 7, usize::MAX).is_err());
    }

    #[test]
    fn a_vm_at_its_cap_is_refused_and_the_others_are_not() {
        let s: Scheduler<u32> = Scheduler::default();
        for i in 0..3 {
            s.push(Prio::Open, 1, i, 3).unwrap();
        }
        // Over all classes: an exec of the same VM is refused too.
        assert_eq!(
            s.push(Prio::Exec, 1, 9, 3).map_err(|e| e.1),
            Err(Refused::Full)
        );
        s.push(Prio::Open, 2, 20, 3).unwrap();
        // A job taken frees a place.
        assert!(s.pop().is_some());
        s.push(Prio::Exec, 1, 9, 3).unwrap();
        s.close();
        assert_eq!(
            s.push(Prio::Open, 2, 21, 3).map_err(|e| e.1),
            Err(Refused::Closed)
        );
    }
}
