//! The adaptive batch size: a statement timeout halves it, clean batches double it back.

/// After this many clean batches a batch size halved by a timeout doubles again.
const BATCHES_BEFORE_GROWING: u32 = 8;

/// Candidates per batch, between 1 and `pass.batch_size`: a batch too large to finish
/// within statement_timeout is retried smaller rather than failing the pass, and the
/// configured size comes back once the database keeps up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSize {
    configured: u32,
    current: u32,
    /// Batches committed since the size last changed down.
    clean_batches: u32,
}

impl BatchSize {
    pub(crate) fn new(configured: u32) -> Self {
        Self {
            configured,
            current: configured,
            clean_batches: 0,
        }
    }

    /// The size of the next batch.
    pub(crate) fn get(&self) -> u32 {
        self.current
    }

    /// A batch committed (or, in a dry run, was evaluated).
    pub(crate) fn after_clean_batch(&mut self) {
        self.clean_batches += 1;
        if self.current < self.configured && self.clean_batches >= BATCHES_BEFORE_GROWING {
            self.current = (self.current * 2).min(self.configured);
            self.clean_batches = 0;
        }
    }

    /// A statement timeout rolled a batch back.
    pub(crate) fn halve(&mut self) {
        self.current = (self.current / 2).max(1);
        self.clean_batches = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(size: &mut BatchSize, batches: u32) {
        for _ in 0..batches {
            size.after_clean_batch();
        }
    }

    #[test]
    fn starts_at_the_configured_size_and_stays_there() {
        let mut size = BatchSize::new(1000);
        clean(&mut size, 100);
        assert_eq!(size.get(), 1000);
    }

    #[test]
    fn each_timeout_halves_down_to_one() {
        let mut size = BatchSize::new(1000);
        let mut seen = Vec::new();
        for _ in 0..11 {
            size.halve();
            seen.push(size.get());
        }
        assert_eq!(seen, [500, 250, 125, 62, 31, 15, 7, 3, 1, 1, 1]);
    }

    #[test]
    fn doubles_back_after_eight_clean_batches_up_to_the_configured_size() {
        let mut size = BatchSize::new(300);
        size.halve();
        size.halve();
        assert_eq!(size.get(), 75);
        clean(&mut size, BATCHES_BEFORE_GROWING - 1);
        assert_eq!(size.get(), 75, "not before the eighth clean batch");
        clean(&mut size, 1);
        assert_eq!(size.get(), 150);
        clean(&mut size, BATCHES_BEFORE_GROWING);
        assert_eq!(size.get(), 300);
        clean(&mut size, BATCHES_BEFORE_GROWING);
        assert_eq!(size.get(), 300, "never above the configured size");
    }

    #[test]
    fn doubling_stops_at_an_odd_configured_size() {
        let mut size = BatchSize::new(5);
        size.halve();
        assert_eq!(size.get(), 2);
        clean(&mut size, BATCHES_BEFORE_GROWING);
        assert_eq!(size.get(), 4);
        clean(&mut size, BATCHES_BEFORE_GROWING);
        assert_eq!(size.get(), 5);
    }

    #[test]
    fn a_timeout_starts_the_clean_count_over() {
        let mut size = BatchSize::new(1000);
        clean(&mut size, 20);
        size.halve();
        clean(&mut size, BATCHES_BEFORE_GROWING - 1);
        size.halve();
        clean(&mut size, BATCHES_BEFORE_GROWING - 1);
        assert_eq!(
            size.get(),
            250,
            "clean batches before a timeout do not count"
        );
        clean(&mut size, 1);
        assert_eq!(size.get(), 500);
    }
}
