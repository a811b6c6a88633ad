//! The read-ahead window of one partition: the messages a worker read from it most recently, so that
//! Kafka is read about once however the worker's tasks and routes split the partition into ranges.
//!
//! Owns: [`Window`], a contiguous run of offsets `[start, end)` of one partition with every message
//! Kafka holds in it (gaps in the offsets are gaps in the log: compaction, transaction markers), bounded
//! in bytes by dropping the oldest messages first.
//!
//! Why: tasks lease ranges of one partition out of order (task 3 may ask for `[200, 300)` before task 1
//! asks for `[0, 100)`), and several routes read the same topic. Reading each range on its own would
//! re-assign a consumer per range and throw away what it prefetched; instead the partition's consumer
//! reads on from where it stands, through the gap, and the window hands the gap's messages to whoever
//! asks for them next.

use std::collections::VecDeque;

use courier_core::{Message, Offset, OffsetRange};

/// The average message size assumed before a window has seen any message.
const ASSUMED_MESSAGE_BYTES: usize = 1024;

/// Recently read messages of one partition, `[start, end)`, at most `capacity` bytes of payload and key.
#[derive(Debug)]
pub(crate) struct Window {
    messages: VecDeque<Message>,
    start: Offset,
    end: Offset,
    bytes: usize,
    capacity: usize,
    /// Bytes and messages ever appended: the average message size decides how far ahead a read may go.
    seen_bytes: usize,
    seen_messages: usize,
}

fn size_of(message: &Message) -> usize {
    // Offsets, timestamps and the allocation itself: a small fixed cost per message.
    64 + message.payload.as_ref().map_or(0, Vec::len) + message.key.as_ref().map_or(0, Vec::len)
}

impl Window {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            messages: VecDeque::new(),
            start: 0,
            end: 0,
            bytes: 0,
            capacity,
            seen_bytes: 0,
            seen_messages: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether the window holds `offset` (a message there, or a gap in the log).
    pub(crate) fn holds(&self, offset: Offset) -> bool {
        self.start <= offset && offset < self.end
    }

    /// How many offsets ahead of a reader's position a read may start reading, so that what it reads
    /// for others still fits in the window: the window's capacity over the average message size.
    pub(crate) fn reach(&self) -> i64 {
        let average = self
            .seen_bytes
            .checked_div(self.seen_messages)
            .unwrap_or(ASSUMED_MESSAGE_BYTES)
            .max(1);
        i64::try_from(self.capacity / average).unwrap_or(i64::MAX)
    }

    /// Copies the messages of `range` the window holds into `into`, from `range.start()` on, and returns
    /// where the covered part ends: `range.end()` when the window held all of it, less when the rest is
    /// still to be read (from that offset). `None` when the window does not hold `range.start()`.
    pub(crate) fn serve(&self, range: OffsetRange, into: &mut Vec<Message>) -> Option<Offset> {
        if self.is_empty() || range.start() < self.start || range.start() >= self.end {
            return None;
        }
        let covered = range.end().min(self.end);
        let first = self.messages.partition_point(|m| m.offset < range.start());
        into.extend(
            self.messages
                .range(first..)
                .take_while(|m| m.offset < covered)
                .cloned(),
        );
        Some(covered)
    }

    /// Records that `read` was read from Kafka and held `messages` (in offset order, all inside
    /// `read`). Continues the window when `read` starts where it ends; otherwise the window starts
    /// afresh at `read`, unless `read` lies wholly before the window (a lagging reader: what is ahead
    /// is worth more than what is behind).
    pub(crate) fn append(&mut self, read: OffsetRange, messages: &[Message]) {
        if !self.is_empty() && read.start() != self.end {
            if read.end() <= self.start {
                return;
            }
            self.messages.clear();
            self.bytes = 0;
        }
        if self.is_empty() || read.start() != self.end {
            self.start = read.start();
        }
        self.end = read.end();
        for message in messages {
            let size = size_of(message);
            self.bytes += size;
            self.seen_bytes = self.seen_bytes.saturating_add(size);
            self.seen_messages = self.seen_messages.saturating_add(1);
            self.messages.push_back(message.clone());
        }
        while self.bytes > self.capacity {
            let Some(oldest) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= size_of(&oldest);
            // Everything below the next message held is gone from the window (gaps included).
            self.start = self.messages.front().map_or(self.end, |m| m.offset);
        }
        if self.messages.is_empty() {
            // Nothing held: offsets of a gap alone are not worth remembering across a reset.
            self.start = self.end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: Offset) -> Message {
        Message {
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            headers: Vec::new(),
            payload: Some(vec![b'x'; 36]),
        }
    }

    fn messages(offsets: impl IntoIterator<Item = Offset>) -> Vec<Message> {
        offsets.into_iter().map(message).collect()
    }

    fn range(start: Offset, end: Offset) -> OffsetRange {
        OffsetRange::new(start, end).expect("a valid range in the test")
    }

    fn offsets(messages: &[Message]) -> Vec<Offset> {
        messages.iter().map(|m| m.offset).collect()
    }

    #[test]
    fn serves_what_it_holds_and_says_where_reading_must_go_on() {
        let mut window = Window::new(1 << 20);
        // Offsets 3 and 4 are a gap in the log (compaction): still covered.
        window.append(range(0, 10), &messages([0, 1, 2, 5, 6, 7, 8, 9]));
        let mut got = Vec::new();
        assert_eq!(window.serve(range(2, 7), &mut got), Some(7));
        assert_eq!(offsets(&got), vec![2, 5, 6]);
        let mut got = Vec::new();
        assert_eq!(window.serve(range(8, 20), &mut got), Some(10));
        assert_eq!(offsets(&got), vec![8, 9]);
        assert_eq!(window.serve(range(10, 20), &mut Vec::new()), None);
    }

    #[test]
    fn a_read_that_continues_extends_and_one_that_jumps_restarts() {
        let mut window = Window::new(1 << 20);
        window.append(range(0, 5), &messages(0..5));
        window.append(range(5, 8), &messages(5..8));
        let mut got = Vec::new();
        assert_eq!(window.serve(range(0, 8), &mut got), Some(8));
        assert_eq!(offsets(&got), (0..8).collect::<Vec<_>>());
        // A jump ahead: the window starts afresh there.
        window.append(range(20, 25), &messages(20..25));
        assert_eq!(window.serve(range(0, 8), &mut Vec::new()), None);
        assert_eq!(window.serve(range(20, 25), &mut Vec::new()), Some(25));
        // A lagging reader behind the window does not displace it.
        window.append(range(2, 4), &messages(2..4));
        assert_eq!(window.serve(range(20, 25), &mut Vec::new()), Some(25));
        assert_eq!(window.serve(range(2, 4), &mut Vec::new()), None);
    }

    #[test]
    fn stays_within_its_capacity_dropping_the_oldest() {
        // Each test message counts 64 + 36 = 100 bytes: room for 10.
        let mut window = Window::new(1_000);
        window.append(range(0, 25), &messages(0..25));
        assert!(window.bytes <= 1_000);
        assert_eq!(window.serve(range(14, 15), &mut Vec::new()), None);
        let mut got = Vec::new();
        assert_eq!(window.serve(range(15, 25), &mut got), Some(25));
        assert_eq!(offsets(&got), (15..25).collect::<Vec<_>>());
        assert_eq!(window.reach(), 10);
    }
}
