//! The engine thread's waiting room: jobs in arrival order, taken out in
//! batches. A batch starts with the oldest job and adds later jobs that can
//! share its model run (same recipe, same frame size), up to a budget; a job
//! that cannot share runs alone. Synchronous and free of engine types, so
//! the batching rules are tested on their own.

use std::collections::VecDeque;

/// A job that may share a batch with others of the same key.
pub trait Batchable {
    /// Jobs with equal keys can run together; `None` runs alone.
    type Key: PartialEq;

    /// This job's key.
    fn key(&self) -> Option<Self::Key>;
}

/// Jobs waiting for the engine, oldest first.
#[derive(Debug)]
pub struct Queue<T> {
    jobs: VecDeque<T>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            jobs: VecDeque::new(),
        }
    }
}

impl<T: Batchable> Queue<T> {
    /// Adds a job at the back.
    pub fn push(&mut self, job: T) {
        self.jobs.push_back(job);
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Takes the oldest job and up to `budget - 1` later jobs with the same
    /// key, in arrival order; the others keep their places. Empty when
    /// nothing waits.
    pub fn next_batch(&mut self, budget: usize) -> Vec<T> {
        let Some(first) = self.jobs.pop_front() else {
            return Vec::new();
        };
        let Some(key) = first.key() else {
            return vec![first];
        };
        let mut batch = vec![first];
        let mut index = 0;
        while batch.len() < budget.max(1) && index < self.jobs.len() {
            if self.jobs[index].key().as_ref() == Some(&key) {
                batch.extend(self.jobs.remove(index));
            } else {
                index += 1;
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (id, key)
    #[derive(Debug, PartialEq)]
    struct Job(u32, Option<char>);

    impl Batchable for Job {
        type Key = char;

        fn key(&self) -> Option<char> {
            self.1
        }
    }

    fn queue(jobs: &[(u32, Option<char>)]) -> Queue<Job> {
        let mut queue = Queue::default();
        for &(id, key) in jobs {
            queue.push(Job(id, key));
        }
        queue
    }

    fn ids(batch: &[Job]) -> Vec<u32> {
        batch.iter().map(|job| job.0).collect()
    }

    #[test]
    fn an_empty_queue_gives_an_empty_batch() {
        assert!(Queue::<Job>::default().next_batch(4).is_empty());
    }

    #[test]
    fn a_batch_takes_later_jobs_of_the_same_key_up_to_the_budget() {
        let mut queue = queue(&[
            (1, Some('a')),
            (2, Some('b')),
            (3, Some('a')),
            (4, Some('a')),
            (5, Some('a')),
        ]);
        assert_eq!(ids(&queue.next_batch(3)), [1, 3, 4]);
        // The others keep their order.
        assert_eq!(ids(&queue.next_batch(3)), [2]);
        assert_eq!(ids(&queue.next_batch(3)), [5]);
        assert!(queue.is_empty());
    }

    #[test]
    fn jobs_without_a_key_run_alone_and_are_not_overtaken_by_their_own_batch() {
        let mut queue = queue(&[(1, None), (2, Some('a')), (3, None), (4, Some('a'))]);
        assert_eq!(ids(&queue.next_batch(4)), [1]);
        // 4 joins 2 across the keyless job 3, which then comes next.
        assert_eq!(ids(&queue.next_batch(4)), [2, 4]);
        assert_eq!(ids(&queue.next_batch(4)), [3]);
    }

    #[test]
    fn a_budget_of_one_or_zero_means_no_batching() {
        let mut queue = queue(&[(1, Some('a')), (2, Some('a'))]);
        assert_eq!(ids(&queue.next_batch(1)), [1]);
        assert_eq!(ids(&queue.next_batch(0)), [2]);
        assert_eq!(queue.len(), 0);
    }
}
